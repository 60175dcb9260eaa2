"""A dataset's codec chain: built for a new dataset, or rebuilt from a manifest.

Owns the glue between the codec layer (:mod:`splitdataloader.codecs`, pure) and a
dataset's storage: resource files (such as a trained compression dictionary) are read and
written as immutable files under ``meta/``, and keys come from a key ring made of the keys
given at run time plus every registered key provider. It does not transform records; the
pipeline it returns does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import CodecConfigError, SplitDataError
from .format import MANIFEST_NAME, META_DIR

if TYPE_CHECKING:
    from .codecs import Codec, CodecEnvironment, CodecPipeline
    from .keys import KeyProvider, KeyRing
    from .storage import Storage


def key_ring(
    keys: Mapping[str, bytes] | None, key_providers: Sequence[KeyProvider] | None
) -> KeyRing:
    """Keys given at run time first, then the given providers (default: every registered)."""
    from .keys import KeyRing  # noqa: PLC0415 - the codec layer loads on first use
    from .plugins import key_provider_class, registered_key_providers  # noqa: PLC0415

    if key_providers is None:
        providers = []
        for provider_id in registered_key_providers():
            try:
                providers.append(key_provider_class(provider_id)())
            except ImportError:
                continue  # a provider whose dependency is missing cannot supply keys
        key_providers = providers
    return KeyRing(keys, key_providers)


def environment(
    storage: Storage,
    dataset_id: str,
    ring: KeyRing,
    resource_prefix: str | None = None,
    created: list[str] | None = None,
) -> CodecEnvironment:
    """The environment codecs see: this dataset's resources and keys.

    With ``resource_prefix`` (writers), codecs may store resources; their names are
    appended to ``created``.
    """
    from .codecs import CodecEnvironment  # noqa: PLC0415

    def read_resource(name: str) -> bytes:
        try:
            return storage.read_file(name)
        except FileNotFoundError as err:  # still a FileNotFoundError, naming the file
            raise storage.missing(name) from err

    def write_resource(hint: str, data: bytes) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in hint)[:64] or "data"
        name = f"{META_DIR}/{resource_prefix}-{safe}"
        storage.makedirs(META_DIR)
        writer = storage.open_writer(name, durable=True)
        try:
            writer.write(data)
            writer.close()
        except BaseException:
            writer.discard()
            raise
        if created is not None:
            created.append(name)
        return name

    return CodecEnvironment(
        dataset_id=dataset_id,
        read_resource=read_resource,
        write_resource=write_resource if resource_prefix is not None else None,
        keys=ring,
    )


def open_pipeline(
    configs: Sequence[Mapping[str, Any]],
    env: CodecEnvironment,
    storage: Storage | None = None,
) -> CodecPipeline:
    """Rebuild a dataset's pipeline from its manifest's codec configs.

    With ``storage`` (the configs come from that dataset's manifest), errors name files
    by their URL: an invalid config names the manifest, and an error about a resource
    names it under the dataset's URL instead of by its bare name.

    Raises
    ------
    MissingPluginError
        If a codec is unknown or its dependency is missing (with the install hint).
    """
    from .codecs import CodecPipeline  # noqa: PLC0415

    try:
        return CodecPipeline.from_configs(configs, env)
    except SplitDataError as err:
        located = _located(err, storage) if storage is not None else None
        if located is None:
            raise
        raise located from err


def _located(err: SplitDataError, storage: Storage) -> SplitDataError | None:
    """``err`` naming its file by URL, or None when it already does (or names none)."""
    if isinstance(err, CodecConfigError):
        name = MANIFEST_NAME
    elif err.path and not err.path.startswith(storage.spec.url):
        name = err.path
    else:
        return None
    where = storage.display(name)
    return type(err)(f"{where}: {err.message}", path=where, record=err.record, offset=err.offset)


def new_codecs(specs: Sequence[Any], env: CodecEnvironment) -> list[Codec]:
    """Resolve a writer's ``codecs=`` argument; invalid options fail here, before any write."""
    from .codecs import resolve_codecs  # noqa: PLC0415

    return list(resolve_codecs(specs, env))


#: Most bytes of raw records a writer holds back to train its codecs on.
SAMPLE_BYTES_LIMIT = 32 << 20


class WriterCodecs:
    """The codec side of a writer: the chain, its training sample and its resources.

    A new dataset gets the chain resolved from the writer's ``codecs=`` argument (invalid
    options fail in the constructor, before anything is written); an existing dataset keeps
    the chain its manifest records, and asking for different codecs is an error. Codecs
    that train (``sample_size > 0``) see the first records before any is encoded.

    Parameters
    ----------
    storage
        The dataset's storage.
    base_configs
        The codec configs of the dataset being appended to, or None for a new dataset.
    specs
        The writer's ``codecs=`` argument.
    dataset_id, session
        Identify the dataset (bound into encrypted records) and the writer (names its
        resources).
    keys, key_providers
        Run-time keys and key providers for encrypting codecs.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        base_configs: Sequence[Mapping[str, Any]] | None,
        specs: Sequence[Any] | None,
        dataset_id: str,
        session: str,
        keys: Mapping[str, bytes] | None,
        key_providers: Sequence[KeyProvider] | None,
    ) -> None:

        self.dataset_id = dataset_id
        self.created: list[str] = []
        self.pipeline: CodecPipeline | None = None
        self._codecs: list[Codec] = []
        self.sample: list[bytes] | None = None
        self._sample_bytes = 0
        self._sample_size = 0
        if not base_configs and not specs:
            return
        ring = key_ring(keys, key_providers)
        self._env = environment(storage, dataset_id, ring, session, self.created)
        if base_configs:
            wanted = [c.codec_id for c in new_codecs(specs, self._env)] if specs else None
            existing = [str(c["id"]) for c in base_configs]
            if wanted is not None and wanted != existing:
                raise CodecConfigError(
                    f"{storage.spec.url} stores records through the codecs {existing}; "
                    f"appending with {wanted} would mix chains: pass codecs=None to keep "
                    f"the dataset's own",
                    path=storage.spec.url,
                )
            self.pipeline = open_pipeline(base_configs, self._env, storage)
            return
        assert specs is not None  # checked above: a new chain needs specs
        self._codecs = new_codecs(specs, self._env)
        self._sample_size = max((c.sample_size for c in self._codecs), default=0)
        if self._sample_size > 0:
            self.sample = []
        else:
            self._build()

    def context(self) -> Callable[[int], Any]:
        """Global record index -> the context that record is encoded with."""
        from .codecs import RecordContext  # noqa: PLC0415

        return functools.partial(RecordContext, self.dataset_id)

    @property
    def active(self) -> bool:
        """True when records are transformed."""
        return self.pipeline is not None and not self.pipeline.identity

    def configs(self) -> tuple[dict[str, Any], ...]:
        return tuple(self.pipeline.configs()) if self.pipeline is not None else ()

    def add_to_sample(self, view: Any) -> bool:
        """Hold back one raw record for training; True once the sample is complete."""
        assert self.sample is not None  # only while collecting
        record = bytes(view)
        self.sample.append(record)
        self._sample_bytes += len(record)
        return len(self.sample) >= self._sample_size or self._sample_bytes >= SAMPLE_BYTES_LIMIT

    def finish_sample(self, first_record: int) -> list[bytes]:
        """Train the codecs on the sample, build the chain, and hand the sample back."""
        from .codecs import RecordContext  # noqa: PLC0415

        sample = self.sample or []
        self.sample = None
        stage = list(sample)
        trained: list[Codec] = []
        for codec in self._codecs:
            prepared = codec.prepare(stage, self._env)
            trained.append(prepared)
            stage = [
                prepared.encode(record, RecordContext(self.dataset_id, first_record + k))
                for k, record in enumerate(stage)
            ]
        self._codecs = trained
        self._build()
        return sample

    def _build(self) -> None:
        # Rebuilt from the configs exactly as a reader will rebuild it, so the writer's
        # codecs are bound to this dataset's keys and resources, and what it writes is
        # what the manifest describes.
        self.pipeline = open_pipeline([c.get_config() for c in self._codecs], self._env)
