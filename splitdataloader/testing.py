"""Conformance kit: pytest suites that prove a codec or a storage backend plugin correct.

Subclass :class:`CodecTests` and provide a ``codec`` fixture (optionally ``environment``),
or subclass :class:`BackendTests` and provide a ``backend_url`` fixture (optionally
``storage_options``); pytest then runs every test of the suite against the plugin. The
classes' names do not start with ``Test``, so they are only collected through a subclass.

This module imports pytest and is meant for test suites only; nothing in splitdataloader
imports it. It tests plugins through the public API and the registries; it does not
implement anything plugins use.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from . import plugins
from .codecs import COMPRESSION, ENCRYPTION, Codec, CodecEnvironment, CodecPipeline, RecordContext
from .errors import DecodeError, DecryptionError
from .loader import SplitDataLoader
from .storage import Storage, open_storage, url_scheme
from .writer import write_split_data

__all__ = ["BackendTests", "CodecTests"]

#: Record sizes of the small round trips, in bytes.
SMALL_SIZES = (1, 2, 3, 7, 15, 16, 17, 31, 64, 100, 255, 256, 511, 1000, 1023, 1024)
#: Size of the large round trip: several MiB.
LARGE_SIZE = 4 * 2**20
_KINDS_OF_DATA = ("random", "text", "zeros")
_CONTEXTS = (
    RecordContext("conformance-dataset", 0),
    RecordContext("conformance-dataset", 1),
    RecordContext("conformance-dataset", 2**40 + 3),
    RecordContext("another-dataset", 0),
)


def _make(kind: str, size: int, seed: int = 0) -> bytes:
    rng = random.Random(f"{kind}-{size}-{seed}")
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"record", b"bin", b"index", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _large_record() -> bytes:
    half = LARGE_SIZE // 2
    return _make("text", half) + _make("random", LARGE_SIZE - half)


def _damage_positions(length: int, limit: int = 256) -> Iterator[int]:
    if length <= limit:
        yield from range(length)
        return
    step = length / limit
    seen = set()
    for i in range(limit):
        position = int(i * step)
        if position not in seen:
            seen.add(position)
            yield position
    if length - 1 not in seen:
        yield length - 1


def _decode_outcome(codec: Codec, data: bytes, context: RecordContext) -> bytes | DecodeError:
    try:
        return codec.decode(data, context)
    except DecodeError as err:
        return err
    except Exception as err:  # any other type is the failure being reported
        pytest.fail(
            f"{type(codec).__name__}.decode raised {type(err).__name__} ({err}) on invalid "
            "input; it must raise DecodeError (or DecryptionError)"
        )


def _secret_forms(secret: bytes) -> list[str]:
    forms = [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]
    return [form for form in forms if len(form) >= 8]


class CodecTests:
    """The contract every codec meets. Subclass it and provide the ``codec`` fixture.

    Fixtures to provide or override
    -------------------------------
    codec
        Required: the codec under test, ready to encode (prepared, if it needs it).
    environment
        Optional: the :class:`~splitdataloader.codecs.CodecEnvironment` the codec is
        rebuilt in (an in-memory one with no keys by default; give one with the keys an
        encryption codec needs). Its explicitly given keys are the secrets that must
        never appear in the codec's repr, config or error messages.

    A wrapper that no plugin registers (a test adapter around a chain, say) overrides
    ``test_registered_under_its_id`` with the registration check that fits it.

    Notes
    -----
    Corrupt input (truncated, bit flips, garbage) must make ``decode`` raise
    :class:`~splitdataloader.errors.DecodeError` (or ``DecryptionError``), or give back the
    original record (a flip in a bit the format ignores); never another exception type. A
    codec that cannot detect corruption itself (plain compression without a checksum)
    declares ``integrity = False`` and may then return wrong bytes for corrupt input: in a
    dataset, the per-record checksum over the stored bytes catches damage before any codec
    sees it.
    """

    @pytest.fixture
    def codec(self) -> Codec:
        """The codec under test; subclasses must override this fixture."""
        pytest.fail("a CodecTests subclass must provide a `codec` fixture")

    @pytest.fixture
    def environment(self) -> CodecEnvironment:
        """The environment the codec is rebuilt in."""
        return CodecEnvironment.in_memory(dataset_id="conformance-dataset")

    @pytest.fixture
    def context(self, environment: CodecEnvironment) -> RecordContext:
        """A record context in the environment's dataset."""
        return RecordContext(environment.dataset_id, 7)

    # -- helpers

    def _round_trip(self, codec: Codec, data: bytes, context: RecordContext) -> None:
        encoded = codec.encode(data, context)
        assert isinstance(encoded, bytes), f"encode must return bytes, not {type(encoded).__name__}"
        decoded = codec.decode(encoded, context)
        assert isinstance(decoded, bytes), f"decode must return bytes, not {type(decoded).__name__}"
        assert decoded == data, f"round trip of {len(data)} bytes changed the record"

    def _check_corrupt(
        self, codec: Codec, original: bytes, damaged: bytes, context: RecordContext, what: str
    ) -> DecodeError | None:
        outcome = _decode_outcome(codec, damaged, context)
        if isinstance(outcome, DecodeError):
            return outcome
        if outcome != original and codec.integrity:
            pytest.fail(
                f"{what}: decode returned {len(outcome)} wrong bytes instead of raising "
                "DecodeError; a codec that cannot detect corruption declares integrity = False"
            )
        return None

    # -- identity and config

    def test_declares_id_and_kind(self, codec: Codec) -> None:
        assert isinstance(codec, Codec)
        assert isinstance(codec.codec_id, str)
        assert codec.codec_id
        assert codec.kind in (COMPRESSION, ENCRYPTION)
        assert isinstance(codec.integrity, bool)
        assert isinstance(codec.sample_size, int)
        assert codec.sample_size >= 0

    def test_config_is_json_with_its_id(self, codec: Codec) -> None:
        config = codec.get_config()
        assert isinstance(config, dict)
        assert config.get("id") == codec.codec_id
        assert json.loads(json.dumps(config, allow_nan=False)) == config
        assert CodecPipeline([codec]).configs() == [config]

    def test_registered_under_its_id(self, codec: Codec, environment: CodecEnvironment) -> None:
        assert plugins.codec_class(codec.codec_id) is type(codec)
        pipeline = CodecPipeline.from_configs([codec.get_config()], environment)
        data = _make("text", 300)
        context = RecordContext(environment.dataset_id, 5)
        assert pipeline.decode(codec.encode(data, context), context) == data

    def test_config_round_trip_through_json(
        self, codec: Codec, environment: CodecEnvironment, context: RecordContext
    ) -> None:
        config = json.loads(json.dumps(codec.get_config()))
        rebuilt = type(codec).from_config(config, environment)
        assert isinstance(rebuilt, type(codec))
        assert rebuilt.get_config() == codec.get_config()
        for kind in _KINDS_OF_DATA:
            data = _make(kind, 777)
            assert rebuilt.decode(codec.encode(data, context), context) == data
            assert codec.decode(rebuilt.encode(data, context), context) == data

    def test_pickles(self, codec: Codec, context: RecordContext) -> None:
        clone = pickle.loads(pickle.dumps(codec))
        assert type(clone) is type(codec)
        assert clone.get_config() == codec.get_config()
        data = _make("text", 500)
        assert clone.decode(codec.encode(data, context), context) == data
        assert codec.decode(clone.encode(data, context), context) == data

    # -- round trips

    def test_round_trip_empty(self, codec: Codec, context: RecordContext) -> None:
        self._round_trip(codec, b"", context)

    @pytest.mark.parametrize("kind", _KINDS_OF_DATA)
    def test_round_trip_small(self, codec: Codec, context: RecordContext, kind: str) -> None:
        for size in SMALL_SIZES:
            self._round_trip(codec, _make(kind, size), context)

    def test_round_trip_large(self, codec: Codec, context: RecordContext) -> None:
        self._round_trip(codec, _large_record(), context)

    def test_round_trip_in_every_context(self, codec: Codec) -> None:
        for context in _CONTEXTS:
            self._round_trip(codec, _make("text", 200, context.record % 97), context)

    def test_accepts_memoryview_and_leaves_it_intact(
        self, codec: Codec, context: RecordContext
    ) -> None:
        buffer = bytearray(b"#" * 10 + _make("text", 1000) + b"#" * 10)
        before = bytes(buffer)
        view = memoryview(buffer)[10:-10]
        encoded = codec.encode(view, context)
        assert bytes(buffer) == before, "encode modified its input"
        assert codec.decode(encoded, context) == before[10:-10]

    def test_decode_is_repeatable(self, codec: Codec, context: RecordContext) -> None:
        data = _make("random", 600)
        encoded = codec.encode(data, context)
        copy = bytes(encoded)
        assert codec.decode(encoded, context) == data
        assert encoded == copy, "decode modified its input"
        assert codec.decode(encoded, context) == data

    # -- corrupt input

    @pytest.mark.parametrize("kind", ["random", "text"])
    def test_truncated_input_fails(self, codec: Codec, context: RecordContext, kind: str) -> None:
        for size in (1, 100, 1024, 70_000):
            data = _make(kind, size)
            encoded = codec.encode(data, context)
            cuts = sorted({0, 1, len(encoded) // 2, len(encoded) - 1} - {len(encoded)})
            for cut in cuts:
                if cut < 0:
                    continue
                self._check_corrupt(
                    codec, data, encoded[:cut], context, f"{size} bytes cut to {cut}"
                )

    @pytest.mark.parametrize("kind", ["random", "text"])
    def test_flipped_bits_fail(self, codec: Codec, context: RecordContext, kind: str) -> None:
        for size in (1, 200, 5000):
            data = _make(kind, size)
            encoded = codec.encode(data, context)
            for position in _damage_positions(len(encoded)):
                damaged = bytearray(encoded)
                damaged[position] ^= 1 << (position % 8)
                self._check_corrupt(
                    codec,
                    data,
                    bytes(damaged),
                    context,
                    f"bit {position % 8} of byte {position} flipped ({size}-byte record)",
                )

    def test_garbage_fails(self, codec: Codec, context: RecordContext) -> None:
        rng = random.Random(1234)
        for length in (1, 7, 64, 1000, 65_536):
            garbage = rng.randbytes(length)
            outcome = _decode_outcome(codec, garbage, context)
            if not isinstance(outcome, DecodeError) and codec.integrity:
                pytest.fail(
                    f"decode accepted {length} random bytes; a codec that cannot detect "
                    "corruption declares integrity = False"
                )

    # -- preparation on a sample

    def test_prepare_on_a_sample(self, codec: Codec, environment: CodecEnvironment) -> None:
        count = min(codec.sample_size, 500) if codec.sample_size else 0
        sample = [_make("text", 50 + (i * 37) % 400, i) for i in range(count)]
        prepared = codec.prepare(sample, environment)
        assert isinstance(prepared, Codec)
        assert prepared.codec_id == codec.codec_id
        context = RecordContext(environment.dataset_id, 3)
        rebuilt = type(prepared).from_config(
            json.loads(json.dumps(prepared.get_config())), environment
        )
        for record in [*sample[:20], _make("text", 321), b""]:
            encoded = prepared.encode(record, context)
            assert prepared.decode(encoded, context) == record
            assert rebuilt.decode(encoded, context) == record


class EncryptionCodecTests(CodecTests):
    """The codec suite plus what every encrypting codec must guarantee.

    Records are bound to their dataset and position, and no key ever shows in a repr, a
    config or an error. Provide an ``environment`` fixture whose key ring holds the keys.
    """

    def test_record_is_bound_to_its_position(self, codec: Codec, context: RecordContext) -> None:
        assert codec.kind == ENCRYPTION
        data = _make("text", 300)
        encoded = codec.encode(data, context)
        moved = RecordContext(context.dataset_id, context.record + 1)
        other = RecordContext(context.dataset_id + "-other", context.record)
        for wrong in (moved, other):
            with pytest.raises(DecryptionError):
                codec.decode(encoded, wrong)

    def test_secrets_never_shown(
        self, codec: Codec, environment: CodecEnvironment, context: RecordContext
    ) -> None:
        secrets = [environment.keys.get(key_id) for key_id in environment.keys.key_ids()]
        assert secrets, "provide an `environment` fixture whose key ring holds the keys"
        texts = [repr(codec), str(codec), json.dumps(codec.get_config()), repr(environment)]
        encoded = codec.encode(_make("text", 100), context)
        for damaged in (encoded[:-1], bytes([encoded[0] ^ 1]) + encoded[1:], b"x" * 40):
            outcome = _decode_outcome(codec, damaged, context)
            if isinstance(outcome, DecodeError):
                texts += [str(outcome), repr(outcome)]
        for secret in secrets:
            for form in _secret_forms(secret):
                for text in texts:
                    assert form not in text, "a key appears in a repr, config or error message"


class BackendTests:
    """The contract every storage backend meets. Subclass it; provide ``backend_url``.

    Fixtures to provide or override
    -------------------------------
    backend_url
        Required: the URL of a location that does not exist yet, new for every test.
    storage_options
        Optional: the storage options to open it with (``{}`` by default).

    Class attributes
    ----------------
    requires_plugin
        Whether the URL's scheme must be served by a backend plugin (default ``True``);
        ``False`` runs the suite on a URL that fsspec serves by itself (and checks that
        no plugin takes it over).
    """

    requires_plugin: ClassVar[bool] = True

    @pytest.fixture
    def backend_url(self) -> str:
        """The location under test; subclasses must override this fixture."""
        pytest.fail("a BackendTests subclass must provide a `backend_url` fixture")

    @pytest.fixture
    def storage_options(self) -> dict[str, Any]:
        """Storage options for ``backend_url``."""
        return {}

    @pytest.fixture
    def storage(self, backend_url: str, storage_options: dict[str, Any]) -> Storage:
        """``backend_url`` opened as a :class:`~splitdataloader.storage.Storage`."""
        return open_storage(backend_url, storage_options)

    def test_scheme_is_served_by_its_plugin(
        self, backend_url: str, storage_options: dict[str, Any], storage: Storage
    ) -> None:
        scheme = url_scheme(backend_url)
        factory = plugins.backend_factory(scheme) if scheme is not None else None
        if not self.requires_plugin:
            assert factory is None, f"a backend plugin serves {scheme!r}; fsspec was expected"
            return
        assert scheme is not None, f"{backend_url!r} has no scheme"
        assert factory is not None, f"no backend plugin serves the scheme {scheme!r}"
        fs, root = factory(backend_url, dict(storage_options))
        assert type(storage.fs) is type(fs)
        assert storage.root == (root.rstrip("/") if root not in ("/", "") else root)

    def test_dataset_round_trip(self, backend_url: str, storage_options: dict[str, Any]) -> None:
        rng = random.Random(5)
        records = [b"", b"x", *(rng.randbytes(rng.randrange(0, 5000)) for _ in range(60))]
        records.append(rng.randbytes(300_000))
        written = write_split_data(backend_url, records, splits=5, storage_options=storage_options)
        assert written == len(records)
        with SplitDataLoader(backend_url, storage_options=storage_options) as loader:
            assert len(loader) == len(records)
            assert [loader[i] for i in range(len(records))] == records
            assert loader[-1] == records[-1]
            assert loader.get_many([3, 0, 3, len(records) - 1]) == [
                records[3],
                records[0],
                records[3],
                records[-1],
            ]
            assert sorted(loader.iterate_binwise(shuffle=True, seed=1)) == sorted(records)
            clone = pickle.loads(pickle.dumps(loader))
            assert clone[7] == records[7]
        more = [b"appended %d" % i for i in range(9)]
        write_split_data(backend_url, more, storage_options=storage_options)
        with SplitDataLoader(backend_url, storage_options=storage_options) as loader:
            assert list(loader) == records + more

    def test_ranged_reads(self, storage: Storage) -> None:
        blob = random.Random(9).randbytes(1_500_000)
        storage.makedirs("", "data")
        writer = storage.open_writer("data/blob.bin", durable=False)
        writer.write(blob[:700_000])
        writer.write(memoryview(blob)[700_000:])
        writer.close()
        size = len(blob)
        assert storage.size("data/blob.bin") == size
        assert storage.read_file("data/blob.bin") == blob
        for start, end in [(0, 1), (5, 17), (123_456, 654_321), (size - 3, size), (0, size)]:
            assert storage.read_range("data/blob.bin", start, end) == blob[start:end]
        assert storage.read_range("data/blob.bin", size - 3, size + 10) == blob[-3:]
        assert storage.read_range("data/blob.bin", size, size + 5) == b""
        starts = [0, 10, 999_999, 10]
        ends = [4, 20, 1_000_100, 20]
        expected = [blob[s:e] for s, e in zip(starts, ends)]
        assert storage.read_ranges(["data/blob.bin"] * 4, starts, ends) == expected

    def test_missing_paths_raise_file_not_found(
        self, storage: Storage, backend_url: str, storage_options: dict[str, Any]
    ) -> None:
        storage.makedirs("", "data")
        storage.replace_file("data/present", b"here", durable=False)
        assert not storage.exists("data/absent")
        assert storage.exists("data/present")
        with pytest.raises(FileNotFoundError):
            storage.read_range("data/absent", 0, 4)
        with pytest.raises(FileNotFoundError):
            storage.size("data/absent")
        with pytest.raises(FileNotFoundError):
            storage.read_file("data/absent")
        with pytest.raises(FileNotFoundError):
            storage.read_ranges(["data/present", "data/absent"], [0, 0], [4, 4])
        with pytest.raises(FileNotFoundError):
            SplitDataLoader(
                f"{backend_url.rstrip('/')}/no-dataset", storage_options=storage_options
            )

    def test_listing(self, storage: Storage) -> None:
        storage.makedirs("", "data", "index")
        for name in ("data/b.seg", "data/a.seg", "index/x.idx"):
            storage.replace_file(name, name.encode(), durable=False)
        assert storage.root_exists()
        assert storage.list_names("data") == ["data/a.seg", "data/b.seg"]
        assert storage.list_names("index") == ["index/x.idx"]
        assert storage.list_names(f"missing-{uuid.uuid4().hex}") == []

    def test_replace_and_remove(self, storage: Storage) -> None:
        storage.makedirs("")
        storage.replace_file("manifest.json", b"first", durable=False)
        storage.replace_file("manifest.json", b"second, longer", durable=False)
        assert storage.read_file("manifest.json") == b"second, longer"
        storage.remove(["manifest.json", "never-existed"])
        assert not storage.exists("manifest.json")

    def test_storage_pickles(self, storage: Storage) -> None:
        storage.makedirs("")
        storage.replace_file("probe", b"pickled", durable=False)
        clone = pickle.loads(pickle.dumps(storage))
        assert clone.spec == storage.spec
        assert clone.read_file("probe") == b"pickled"
        assert clone.read_range("probe", 2, 5) == b"ckl"
