"""Codecs: per-record byte transforms (compression, encryption) and the chain that runs them.

This module owns the class a codec plugin implements (:class:`Codec`), the run-time inputs
it gets (:class:`RecordContext`, :class:`CodecEnvironment`), the chain rules
(:class:`CodecPipeline`: compression before encryption, decode in reverse) and the
translation of a writer's codec specs or a manifest's configs into codec objects
(:func:`resolve_codecs`, :meth:`CodecPipeline.from_configs`). A codec is described by a
JSON config holding its ``"id"`` and options, never a secret. Keys are not its business:
:class:`KeyProvider` and :class:`KeyRing` live in :mod:`splitdataloader.keys` and are
re-exported here, the import path plugins use. It does no I/O itself and implements no
codec: those come from plugins, through :mod:`splitdataloader.plugins`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from . import plugins
from .errors import (
    CodecConfigError,
    DecodeError,
    MissingDataFileError,
    SplitDataError,
)
from .keys import KeyProvider, KeyRing

__all__ = [
    "COMPRESSION",
    "ENCRYPTION",
    "Codec",
    "CodecEnvironment",
    "CodecPipeline",
    "KeyProvider",
    "KeyRing",
    "RecordContext",
    "resolve_codecs",
]

#: ``Codec.kind`` of codecs that make records smaller; they run before encryption.
COMPRESSION = "compression"
#: ``Codec.kind`` of codecs that encrypt (and authenticate) records; they run last.
ENCRYPTION = "encryption"
_KINDS = (COMPRESSION, ENCRYPTION)


class RecordContext(NamedTuple):
    """Which record a codec call is about; encryption binds it into the ciphertext.

    A named tuple: one is made for every record read, and a tuple costs a fraction of a
    frozen dataclass to create.

    Attributes
    ----------
    dataset_id
        The manifest's ``dataset_id``.
    record
        The record's global index.
    """

    dataset_id: str
    record: int


def _no_resources(name: str) -> bytes:
    raise MissingDataFileError(
        f"the codec resource {name!r} is not available here (no dataset to read it from)",
        path=name,
    )


@dataclass
class CodecEnvironment:
    """What a codec may use besides the record: the dataset's resources and the keys.

    Attributes
    ----------
    dataset_id
        The manifest's ``dataset_id`` (empty before a dataset exists).
    read_resource
        Reads a dataset file by the name a codec config records (e.g. a dictionary under
        ``meta/``); raises ``FileNotFoundError`` when it does not exist.
    write_resource
        Writer side only: ``write_resource(name, data)`` stores ``data`` in the dataset
        and returns the name to record in the codec's config; ``None`` when reading.
    keys
        The keys available at run time.
    """

    dataset_id: str
    read_resource: Callable[[str], bytes] = _no_resources
    write_resource: Callable[[str, bytes], str] | None = None
    keys: KeyRing = field(default_factory=KeyRing)

    @classmethod
    def in_memory(
        cls,
        dataset_id: str = "",
        keys: KeyRing | None = None,
        resources: dict[str, bytes] | None = None,
    ) -> CodecEnvironment:
        """An environment whose resources live in a dict (tests, encoding without a dataset).

        Parameters
        ----------
        dataset_id
            The dataset id records are bound to.
        keys
            The key ring; empty by default.
        resources
            The dict resources are stored in, ``{name: bytes}``; a new one by default.
            Written resources are named ``meta/<name>``.
        """
        store = _MemoryResources({} if resources is None else resources)
        return cls(
            dataset_id=dataset_id,
            read_resource=store.read,
            write_resource=store.write,
            keys=KeyRing() if keys is None else keys,
        )


class _MemoryResources:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store

    def read(self, name: str) -> bytes:
        try:
            return self.store[name]
        except KeyError:
            raise MissingDataFileError(f"no resource named {name!r}", path=name) from None

    def write(self, name: str, data: bytes) -> str:
        base = name if name.startswith("meta/") else f"meta/{name}"
        stored, counter = base, 0
        while stored in self.store and self.store[stored] != data:
            counter += 1
            stored = f"{base}-{counter}"
        self.store[stored] = bytes(data)
        return stored


class Codec(abc.ABC):
    """A transform of one record's bytes, described by a JSON config.

    Subclasses set :attr:`codec_id` and :attr:`kind`, implement :meth:`encode` and
    :meth:`decode`, and, when they have options, :meth:`get_config` (the default
    :meth:`from_config` passes the config's other keys to ``__init__`` as keyword
    arguments). Validate options in ``__init__`` and raise
    :class:`~splitdataloader.errors.CodecConfigError`, so that a writer fails before it
    writes anything. Instances must pickle.

    Attributes
    ----------
    codec_id
        The name the codec is registered under and recorded with, e.g. ``"zstd"``.
    kind
        ``"compression"`` or ``"encryption"``; a chain runs every compression codec before
        any encryption codec.
    sample_size
        When positive, the writer calls :meth:`prepare` once with up to this many of the
        first records.
    integrity
        Whether :meth:`decode` detects every corruption of its input (raises rather than
        returns wrong bytes). Codecs without their own check set it to ``False``; the
        dataset's per-record checksum, verified on the stored bytes before decoding,
        still catches damage at rest.
    """

    codec_id: ClassVar[str]
    kind: ClassVar[str]
    sample_size: ClassVar[int] = 0
    integrity: ClassVar[bool] = True

    def get_config(self) -> dict[str, Any]:
        """The codec's JSON config: ``{"id": codec_id, **options}``, never a secret."""
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: CodecEnvironment) -> Codec:
        """Rebuild a codec from :meth:`get_config`'s output.

        Parameters
        ----------
        config
            The config, as read back from JSON.
        env
            The environment: resources to read, keys.

        Returns
        -------
        Codec
            A codec that decodes what the original encoded.

        Raises
        ------
        CodecConfigError
            The config is invalid.
        """
        options = dict(config)
        codec_id = options.pop("id", cls.codec_id)
        if codec_id != cls.codec_id:
            raise CodecConfigError(
                f"a config with id {codec_id!r} was given to codec {cls.codec_id!r}"
            )
        try:
            return cls(**options)
        except TypeError as err:
            raise CodecConfigError(f"invalid options for codec {cls.codec_id!r}: {err}") from err

    @abc.abstractmethod
    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        """Transform one record for storage.

        Parameters
        ----------
        data
            The record (the previous codec's output in a chain); must not be modified.
        context
            Which record this is.

        Returns
        -------
        bytes
            The encoded record.
        """

    @abc.abstractmethod
    def decode(self, data: bytes, context: RecordContext) -> bytes:
        """Invert :meth:`encode`.

        Parameters
        ----------
        data
            The stored bytes.
        context
            Which record this is; must be the context it was encoded with.

        Returns
        -------
        bytes
            The original record.

        Raises
        ------
        DecodeError
            ``data`` is not a valid encoding (corrupt, truncated).
        DecryptionError
            Authentication failed: wrong key, altered record, or a record moved to another
            position or dataset.
        """

    def prepare(self, sample: Sequence[bytes], env: CodecEnvironment) -> Codec:
        """Writer side, once, before the first record: adapt to a sample of the records.

        Parameters
        ----------
        sample
            Up to :attr:`sample_size` of the first records (empty when it is 0).
        env
            The writer's environment: ``env.write_resource`` stores what the codec needs
            to decode (e.g. a trained dictionary), to be named in its config.

        Returns
        -------
        Codec
            The codec to use: ``self`` (the default) or a new, prepared one.
        """
        return self

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({options})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codec):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True, default=str)))


def _check_order(codecs: Sequence[Codec]) -> None:
    encryption: Codec | None = None
    for codec in codecs:
        if codec.kind not in _KINDS:
            raise CodecConfigError(
                f"codec {codec.codec_id!r} has kind {codec.kind!r}; expected one of {_KINDS}"
            )
        if codec.kind == ENCRYPTION:
            encryption = encryption or codec
        elif encryption is not None:
            chain = [c.codec_id for c in codecs]
            raise CodecConfigError(
                f"codec chain {chain}: compression codec {codec.codec_id!r} comes after "
                f"encryption codec {encryption.codec_id!r}; encrypted bytes do not compress, "
                "so compression must come first"
            )


class CodecPipeline:
    """A chain of codecs: encode runs them in order, decode in reverse.

    Parameters
    ----------
    codecs
        The codecs in encode order.

    Raises
    ------
    CodecConfigError
        An item is not a :class:`Codec`, or a compression codec follows an encryption
        codec.
    """

    __slots__ = ("_codecs", "_reverse")

    def __init__(self, codecs: Sequence[Codec] = ()) -> None:
        chain = tuple(codecs)
        for codec in chain:
            if not isinstance(codec, Codec):
                raise CodecConfigError(
                    f"a codec chain holds Codec objects, not {type(codec).__name__}"
                )
        _check_order(chain)
        self._codecs = chain
        self._reverse = chain[::-1]

    @classmethod
    def from_configs(
        cls, configs: Sequence[Mapping[str, Any]], env: CodecEnvironment
    ) -> CodecPipeline:
        """Rebuild a chain from the configs a manifest records.

        Parameters
        ----------
        configs
            ``get_config()`` of each codec, in encode order.
        env
            The environment: resources, keys.

        Raises
        ------
        MissingPluginError
            A codec id has no plugin, or its dependency is missing (with the install
            command).
        CodecConfigError
            A config is malformed or the chain is in a wrong order.
        """
        if isinstance(configs, Mapping) or not isinstance(configs, Sequence):
            raise CodecConfigError("codec configs must be a list of objects")
        codecs = []
        for position, config in enumerate(configs):
            if not isinstance(config, Mapping):
                raise CodecConfigError(f"codec config #{position} is not an object")
            codec_id = config.get("id")
            if not isinstance(codec_id, str) or not codec_id:
                raise CodecConfigError(f"codec config #{position} has no string 'id'")
            codecs.append(_from_config(plugins.codec_class(codec_id), dict(config), env))
        return cls(codecs)

    @property
    def codecs(self) -> tuple[Codec, ...]:
        """The codecs in encode order."""
        return self._codecs

    @property
    def identity(self) -> bool:
        """Whether there are no codecs (records are stored as given)."""
        return not self._codecs

    def configs(self) -> list[dict[str, Any]]:
        """The configs to record in the manifest, in encode order.

        Raises
        ------
        CodecConfigError
            A codec's config is not a JSON object with its own id.
        """
        out = []
        for codec in self._codecs:
            config = codec.get_config()
            if not isinstance(config, dict) or config.get("id") != codec.codec_id:
                raise CodecConfigError(
                    f"codec {codec.codec_id!r}: get_config() must return a dict whose 'id' "
                    "is the codec id"
                )
            try:
                json.dumps(config, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise CodecConfigError(
                    f"codec {codec.codec_id!r}: its config is not JSON ({err})"
                ) from err
            out.append(config)
        return out

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        """Run every codec in order on one record."""
        for codec in self._codecs:
            data = codec.encode(data, context)
        return data if isinstance(data, bytes) else bytes(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        """Run every codec in reverse order on one stored record.

        Raises
        ------
        DecodeError
            A codec failed; a codec's own exception of another type is wrapped (it is the
            ``__cause__``), with the record set.
        DecryptionError
            Authentication failed.
        """
        for codec in self._reverse:
            try:
                data = codec.decode(data, context)
            except DecodeError as err:
                if err.record is None:
                    err.record = context.record
                raise
            except SplitDataError:
                raise
            except Exception as err:
                # Only the type: a foreign message might quote bytes of the record.
                raise DecodeError(
                    f"codec {codec.codec_id!r} could not decode record {context.record} of "
                    f"dataset {context.dataset_id!r} ({type(err).__name__})",
                    record=context.record,
                ) from err
        return data

    def __len__(self) -> int:
        return len(self._codecs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodecPipeline):
            return NotImplemented
        return self._codecs == other._codecs

    def __hash__(self) -> int:
        return hash(self._codecs)

    def __repr__(self) -> str:
        return f"CodecPipeline({list(self._codecs)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (CodecPipeline, (list(self._codecs),))


def _from_config(cls: type[Codec], config: dict[str, Any], env: CodecEnvironment) -> Codec:
    try:
        codec = cls.from_config(config, env)
    except SplitDataError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise CodecConfigError(
            f"invalid config for codec {cls.codec_id!r}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(codec, cls):
        raise CodecConfigError(
            f"{cls.__qualname__}.from_config returned {type(codec).__name__}, not a "
            f"{cls.__qualname__}"
        )
    return codec


def resolve_codecs(
    specs: str | Codec | Mapping[str, Any] | Sequence[str | Mapping[str, Any] | Codec],
    env: CodecEnvironment | None = None,
) -> list[Codec]:
    """Turn a writer's ``codecs=`` argument into codec objects, validating every option.

    Parameters
    ----------
    specs
        A sequence whose items are a codec id (``"zstd"``, default options), a config
        (``{"id": "zstd", "level": 9}``) or a :class:`Codec` object; a single item is
        accepted too.
    env
        The writer's environment (keys, resources); an empty one by default.

    Returns
    -------
    list[Codec]
        The codecs in encode order.

    Raises
    ------
    CodecConfigError
        An invalid option, an invalid item, or compression after encryption.
    MissingPluginError
        A codec id has no plugin, or its dependency is missing.
    """
    if isinstance(specs, (str, Codec, Mapping)):
        specs = [specs]
    if not isinstance(specs, Sequence):
        raise CodecConfigError(
            f"codecs must be a list of codec ids, configs or Codec objects, not "
            f"{type(specs).__name__}"
        )
    env = CodecEnvironment(dataset_id="") if env is None else env
    codecs: list[Codec] = []
    for spec in specs:
        if isinstance(spec, Codec):
            codecs.append(spec)
            continue
        if isinstance(spec, str):
            config: dict[str, Any] = {"id": spec}
        elif isinstance(spec, Mapping):
            config = dict(spec)
        else:
            raise CodecConfigError(
                f"a codec is given as an id, a config or a Codec object, not {type(spec).__name__}"
            )
        codec_id = config.get("id")
        if not isinstance(codec_id, str) or not codec_id:
            raise CodecConfigError(f"codec config with keys {sorted(config)} has no string 'id'")
        codecs.append(_from_config(plugins.codec_class(codec_id), config, env))
    CodecPipeline(codecs).configs()  # order and JSON-ability, before anything is written
    return codecs
