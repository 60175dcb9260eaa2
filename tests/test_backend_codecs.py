"""The first-party codecs (``zlib``, ``zstd``, ``lz4``, ``aesgcm``) and key providers.

Every codec, and the chain zstd -> aesgcm, runs the conformance kit
(:class:`splitdataloader.testing.CodecTests`); the tests after it check what the kit
cannot know: option validation, that a trained dictionary pays off on a real corpus (lines
of the Python standard library's source), that encryption binds records to their place,
that wrong or missing keys fail with the right error, and that keys never leak.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import random
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import pytest
from splitdataloader_backends.aesgcm import AesGcmCodec
from splitdataloader_backends.keys import EnvKeyProvider, FileKeyProvider, env_variable
from splitdataloader_backends.lz4_codec import Lz4Codec
from splitdataloader_backends.zlib_codec import ZlibCodec
from splitdataloader_backends.zstd_codec import ZstdCodec

from splitdataloader import plugins
from splitdataloader.codecs import (
    Codec,
    CodecEnvironment,
    CodecPipeline,
    KeyRing,
    RecordContext,
    resolve_codecs,
)
from splitdataloader.errors import (
    CodecConfigError,
    CorruptDataError,
    DecryptionError,
    KeyUnavailableError,
)
from splitdataloader.testing import CodecTests

DATASET = "conformance-dataset"
KEY_ID = "test-key"
#: Test keys: random, so no fixed byte pattern could hide a leak.
KEY = random.Random("test-key").randbytes(32)
OTHER_KEY = random.Random("other-key").randbytes(32)


@cache
def stdlib_lines() -> tuple[tuple[bytes, ...], ...]:
    """Lines of the standard library's top-level source files, one tuple per file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    assert len(files) > 50, f"expected the standard library's sources under {root}"
    return tuple(tuple(f.read_bytes().splitlines(keepends=True)) for f in files)


def keyed_environment(keys: Mapping[str, bytes] | None = None) -> CodecEnvironment:
    return CodecEnvironment.in_memory(
        dataset_id=DATASET, keys=KeyRing(keys={KEY_ID: KEY} if keys is None else keys)
    )


# -- the conformance kit, for every codec ----------------------------------------------


class TestZlibConformance(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        return ZlibCodec(level=6)


class TestZlibLevel0Conformance(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        return ZlibCodec(level=0)


class TestZstdConformance(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        return ZstdCodec(level=3)


@cache
def _trained_dictionary() -> tuple[dict[str, Any], bytes]:
    """Train once per run; each test stores the result in its own environment."""
    env = CodecEnvironment.in_memory(dataset_id="training")
    sample = [line for lines in stdlib_lines()[:40] for line in lines][:3000]
    prepared = ZstdCodec(level=5, dictionary=True, sample_size=3000, dict_size=16_384)
    prepared = prepared.prepare(sample, env)
    config = prepared.get_config()
    assert "dictionary_name" in config, "training on 3000 lines must give a dictionary"
    return config, env.read_resource(config["dictionary_name"])


class TestZstdDictionaryConformance(CodecTests):
    @pytest.fixture
    def codec(self, environment: CodecEnvironment) -> Codec:
        config, data = _trained_dictionary()
        assert environment.write_resource is not None
        name = environment.write_resource("zstd-test.dict", data)
        return ZstdCodec.from_config({**config, "dictionary_name": name}, environment)


class TestLz4Conformance(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        return Lz4Codec()


class TestLz4HighCompressionConformance(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        return Lz4Codec(level=9)


class TestAesGcmConformance(CodecTests):
    @pytest.fixture
    def environment(self) -> CodecEnvironment:
        return keyed_environment()

    @pytest.fixture
    def codec(self, environment: CodecEnvironment) -> Codec:
        return AesGcmCodec.from_config({"id": "aesgcm", "key_id": KEY_ID}, environment)


class ChainCodec(Codec):
    """A codec chain seen as one codec, so that the kit can run on a whole pipeline."""

    codec_id: ClassVar[str] = "test-chain"
    kind: ClassVar[str] = "encryption"

    def __init__(self, pipeline: CodecPipeline) -> None:
        self.pipeline = pipeline

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "codecs": self.pipeline.configs()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: CodecEnvironment) -> ChainCodec:
        return cls(CodecPipeline.from_configs(config["codecs"], env))

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return self.pipeline.encode(data, context)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        return self.pipeline.decode(data, context)


class TestZstdThenAesGcmConformance(CodecTests):
    @pytest.fixture
    def environment(self) -> CodecEnvironment:
        return keyed_environment()

    @pytest.fixture
    def codec(self, environment: CodecEnvironment) -> Codec:
        configs = [{"id": "zstd", "level": 3}, {"id": "aesgcm", "key_id": KEY_ID}]
        return ChainCodec(CodecPipeline.from_configs(configs, environment))

    def test_registered_under_its_id(
        self, codec: ChainCodec, environment: CodecEnvironment
    ) -> None:
        # The adapter itself is not a plugin; every codec in the chain is.
        for member in codec.pipeline.codecs:
            assert plugins.codec_class(member.codec_id) is type(member)
        rebuilt = CodecPipeline.from_configs(codec.pipeline.configs(), environment)
        context = RecordContext(environment.dataset_id, 5)
        data = b"".join(stdlib_lines()[1][:50])
        assert rebuilt.decode(codec.encode(data, context), context) == data

    def test_compresses_before_encrypting(self, codec: ChainCodec, context: RecordContext) -> None:
        text = b"".join(stdlib_lines()[0])
        assert len(codec.encode(text, context)) < len(text) // 2


# -- registration and lazy imports -------------------------------------------------------


def test_every_codec_and_provider_comes_from_an_entry_point() -> None:
    codecs = plugins.registered_codecs()
    for codec_id in ("zlib", "zstd", "lz4", "aesgcm"):
        assert codecs[codec_id].plugin.startswith(f"{codec_id!r}")
    providers = plugins.registered_key_providers()
    assert plugins.key_provider_class("env") is EnvKeyProvider
    assert plugins.key_provider_class("file") is FileKeyProvider
    assert providers["env"].plugin == providers["file"].plugin


def _python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_registration_needs_no_optional_library() -> None:
    out = _python(
        "import sys\n"
        "for name in ('zstandard', 'lz4', 'cryptography'):\n"
        "    sys.modules[name] = None  # as if none were installed\n"
        "from splitdataloader import plugins\n"
        "from splitdataloader.codecs import RecordContext, resolve_codecs\n"
        "print(sorted(plugins.registered_codecs()), sorted(plugins.registered_key_providers()))\n"
        "codec, = resolve_codecs(['zlib'])\n"
        "context = RecordContext('d', 0)\n"
        "assert codec.decode(codec.encode(b'abc', context), context) == b'abc'\n"
    )
    assert out.split() == ["['aesgcm',", "'lz4',", "'zlib',", "'zstd']", "['env',", "'file']"]


@pytest.mark.parametrize(
    ("codec_id", "module", "extra"),
    [("zstd", "zstandard", "zstd"), ("lz4", "lz4", "lz4"), ("aesgcm", "cryptography", "crypto")],
)
def test_missing_library_gives_the_pip_hint(codec_id: str, module: str, extra: str) -> None:
    out = _python(
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if it were not installed\n"
        "from splitdataloader import plugins\n"
        f"assert {codec_id!r} in plugins.registered_codecs()\n"
        "try:\n"
        f"    plugins.codec_class({codec_id!r})\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    assert f'pip install "splitdataloader[{extra}]"' in out


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"id": "zstd", "level": 99},
        {"id": "zstd", "level": 0},
        {"id": "zstd", "level": "3"},
        {"id": "zstd", "level": True},
        {"id": "zstd", "dictionary": "yes"},
        {"id": "zstd", "dictionary": True, "dict_size": 10},
        {"id": "zstd", "levle": 3},
        {"id": "zlib", "level": 10},
        {"id": "zlib", "level": -1},
        {"id": "lz4", "level": 13},
        {"id": "lz4", "level": 3, "acceleration": 4},
        {"id": "aesgcm"},
        {"id": "aesgcm", "key_id": ""},
        {"id": "aesgcm", "key_id": "has space"},
        {"id": "aesgcm", "key_id": "k", "provider": "../x"},
    ],
)
def test_invalid_options_fail_when_the_chain_is_resolved(spec: dict[str, Any]) -> None:
    with pytest.raises(CodecConfigError) as caught:
        resolve_codecs([spec])
    assert spec["id"] in str(caught.value)


def test_zstd_level_99_is_rejected_at_construction() -> None:
    with pytest.raises(CodecConfigError, match=r"'level' must be from 1 to 22, got 99"):
        ZstdCodec(level=99)


def test_defaults_and_configs() -> None:
    assert resolve_codecs(["zlib", "zstd", "lz4"]) == [ZlibCodec(6), ZstdCodec(3), Lz4Codec(0)]
    assert ZstdCodec(level=19).get_config() == {"id": "zstd", "level": 19}
    assert Lz4Codec(acceleration=8).get_config() == {"id": "lz4", "level": 0, "acceleration": 8}
    assert repr(ZlibCodec(level=1)) == "ZlibCodec(level=1)"


# -- zstd dictionaries --------------------------------------------------------------------


def _compressed_size(codec: Codec, records: list[bytes]) -> int:
    context = RecordContext(DATASET, 0)
    return sum(len(codec.encode(record, context)) for record in records)


def test_dictionary_improves_small_records_of_a_real_corpus() -> None:
    files = stdlib_lines()
    # Train on some files, measure on others: the gain must carry over to unseen text.
    sample = [line for lines in files[0::2] for line in lines][:4000]
    held_out = [line for lines in files[1::2] for line in lines][:20_000]
    env = CodecEnvironment.in_memory(dataset_id=DATASET)
    trained = ZstdCodec(dictionary=True, sample_size=4000).prepare(sample, env)
    plain = ZstdCodec()
    raw = sum(map(len, held_out))
    with_dictionary = raw / _compressed_size(trained, held_out)
    without = raw / _compressed_size(plain, held_out)
    assert with_dictionary > 1.25 * without, (with_dictionary, without)
    context = RecordContext(DATASET, 9)
    assert all(trained.decode(trained.encode(r, context), context) == r for r in held_out[:500])


def test_dictionary_is_stored_as_a_dataset_file_named_in_the_config() -> None:
    resources: dict[str, bytes] = {}
    env = CodecEnvironment.in_memory(dataset_id=DATASET, resources=resources)
    codec = ZstdCodec(level=3, dictionary=True, sample_size=2000, dict_size=8192)
    assert codec.sample_size == 2000
    sample = list(stdlib_lines()[3][:2000]) + list(stdlib_lines()[4][:2000])
    trained = codec.prepare(sample, env)
    config = trained.get_config()
    assert trained.sample_size == 0, "a trained codec needs no more sample"
    assert list(resources) == [config["dictionary_name"]]
    assert config["dictionary_name"].startswith("meta/")
    assert isinstance(config["dictionary_id"], int)
    assert len(resources[config["dictionary_name"]]) <= 8192
    # A reader rebuilds it from the config and the dataset's file alone.
    reader_env = CodecEnvironment.in_memory(dataset_id=DATASET, resources=dict(resources))
    reader = ZstdCodec.from_config(json.loads(json.dumps(config)), reader_env)
    context = RecordContext(DATASET, 1)
    line = b"    def __init__(self, *args, **kwargs):\n"
    assert reader.decode(trained.encode(line, context), context) == line
    assert trained.prepare(sample, env) is trained


def test_damaged_or_replaced_dictionary_fails_at_open() -> None:
    resources: dict[str, bytes] = {}
    env = CodecEnvironment.in_memory(dataset_id=DATASET, resources=resources)
    trained = ZstdCodec(dictionary=True).prepare(list(stdlib_lines()[5]) * 3, env)
    name = trained.get_config()["dictionary_name"]
    damaged = bytearray(resources[name])
    damaged[len(damaged) // 2] ^= 0x10
    resources[name] = bytes(damaged)
    with pytest.raises(CorruptDataError, match="SHA-256") as caught:
        ZstdCodec.from_config(trained.get_config(), env)
    assert caught.value.path == name
    with pytest.raises(FileNotFoundError):
        ZstdCodec.from_config(trained.get_config(), CodecEnvironment.in_memory(DATASET))


def test_too_small_a_sample_gives_a_codec_without_dictionary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = CodecEnvironment.in_memory(dataset_id=DATASET)
    with caplog.at_level(logging.INFO, logger="splitdataloader_backends"):
        prepared = ZstdCodec(level=4, dictionary=True).prepare([b"tiny", b"sample"], env)
    assert prepared.get_config() == {"id": "zstd", "level": 4}
    assert "no dictionary" in caplog.text


def test_untrained_dictionary_codec_refuses_to_encode() -> None:
    with pytest.raises(CodecConfigError, match="prepare"):
        ZstdCodec(dictionary=True).encode(b"x", RecordContext(DATASET, 0))


def test_codecs_are_safe_to_share_between_threads() -> None:
    env = keyed_environment()
    config, data = _trained_dictionary()
    assert env.write_resource is not None
    name = env.write_resource("d.dict", data)
    codecs: list[Codec] = [
        ZstdCodec.from_config({**config, "dictionary_name": name}, env),
        ZstdCodec(level=1),
        Lz4Codec(),
        ZlibCodec(),
        AesGcmCodec.from_config({"id": "aesgcm", "key_id": KEY_ID}, env),
    ]
    lines = [line for lines in stdlib_lines()[10:20] for line in lines]
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for codec in codecs:
                for i in range(offset, len(lines), 8):
                    context = RecordContext(DATASET, i)
                    assert codec.decode(codec.encode(lines[i], context), context) == lines[i]
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_pickled_codecs_rebuild_their_library_objects() -> None:
    env = keyed_environment()
    config, data = _trained_dictionary()
    assert env.write_resource is not None
    name = env.write_resource("d.dict", data)
    context = RecordContext(DATASET, 4)
    for codec in (
        ZstdCodec.from_config({**config, "dictionary_name": name}, env),
        Lz4Codec(level=4),
        AesGcmCodec(key_id=KEY_ID, keys={KEY_ID: KEY}),
    ):
        encoded = codec.encode(b"import os\n", context)  # builds the library objects
        clone = pickle.loads(pickle.dumps(codec))
        assert clone.decode(encoded, context) == b"import os\n"


# -- aesgcm -------------------------------------------------------------------------------


@pytest.fixture
def aesgcm() -> AesGcmCodec:
    return AesGcmCodec.from_config({"id": "aesgcm", "key_id": KEY_ID}, keyed_environment())


def test_same_plaintext_twice_gives_different_ciphertexts(aesgcm: AesGcmCodec) -> None:
    context = RecordContext(DATASET, 3)
    first = aesgcm.encode(b"attack at dawn", context)
    second = aesgcm.encode(b"attack at dawn", context)
    assert first != second
    assert first[:12] != second[:12], "each record gets a fresh nonce"
    assert len(first) == 12 + len(b"attack at dawn") + 16


def test_nonces_never_repeat_across_records_threads_and_forks(aesgcm: AesGcmCodec) -> None:
    context = RecordContext(DATASET, 0)
    nonces: list[bytes] = []

    def work() -> None:
        nonces.extend(aesgcm.encode(b"", context)[:12] for _ in range(1000))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(nonces)) == len(nonces) == 4000
    if not hasattr(os, "fork"):
        return
    # A child forked with a half-used batch of nonces must not reuse it.
    out = _python(
        "import os\n"
        "from splitdataloader.codecs import RecordContext\n"
        "from splitdataloader_backends.aesgcm import AesGcmCodec\n"
        "codec = AesGcmCodec(key_id='k', keys={'k': bytes(32)})\n"
        "context = RecordContext('d', 0)\n"
        "codec.encode(b'', context)\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, codec.encode(b'', context)[:12])\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.read(read, 12).hex(), codec.encode(b'', context)[:12].hex())\n"
    )
    child, parent = out.split()
    assert child != parent


@pytest.mark.parametrize(
    "where",
    [
        RecordContext(DATASET, 4),
        RecordContext(DATASET, 3 + 2**32),
        RecordContext("another-dataset", 3),
        RecordContext(DATASET + "\x00", 3),
    ],
)
def test_record_moved_to_another_position_or_dataset_fails(
    aesgcm: AesGcmCodec, where: RecordContext
) -> None:
    stored = aesgcm.encode(b"record three", RecordContext(DATASET, 3))
    with pytest.raises(DecryptionError) as caught:
        aesgcm.decode(stored, where)
    message = str(caught.value)
    assert f"record {where.record} of dataset {where.dataset_id}" in message
    assert repr(KEY_ID) in message
    assert caught.value.record == where.record


def test_same_record_under_another_key_id_fails() -> None:
    # Two key ids holding the same key: the key id is bound into every record too.
    env = keyed_environment({"a": KEY, "b": KEY})
    first = AesGcmCodec.from_config({"id": "aesgcm", "key_id": "a"}, env)
    second = AesGcmCodec.from_config({"id": "aesgcm", "key_id": "b"}, env)
    context = RecordContext(DATASET, 0)
    with pytest.raises(DecryptionError):
        second.decode(first.encode(b"payload", context), context)


def test_flipped_bit_fails_naming_the_record(aesgcm: AesGcmCodec) -> None:
    context = RecordContext(DATASET, 11)
    stored = bytearray(aesgcm.encode(b"x" * 100, context))
    for position in (0, 11, 12, 60, len(stored) - 1):
        damaged = bytearray(stored)
        damaged[position] ^= 0x04
        with pytest.raises(DecryptionError, match=f"record 11 of dataset {DATASET}"):
            aesgcm.decode(bytes(damaged), context)
    with pytest.raises(DecryptionError, match="too short"):
        aesgcm.decode(bytes(stored[:27]), context)


def test_wrong_key_fails_at_open_naming_dataset_and_key_id(aesgcm: AesGcmCodec) -> None:
    config = aesgcm.get_config()
    assert "key_check" in config
    wrong = CodecEnvironment.in_memory("dataset-x", keys=KeyRing(keys={KEY_ID: OTHER_KEY}))
    with pytest.raises(DecryptionError) as caught:
        AesGcmCodec.from_config(config, wrong)
    assert "dataset-x" in str(caught.value)
    assert repr(KEY_ID) in str(caught.value)


def test_wrong_key_without_key_check_fails_on_the_record(aesgcm: AesGcmCodec) -> None:
    context = RecordContext(DATASET, 2)
    stored = aesgcm.encode(b"secret", context)
    wrong = AesGcmCodec(key_id=KEY_ID, keys={KEY_ID: OTHER_KEY})
    with pytest.raises(DecryptionError, match=f"record 2 of dataset {DATASET}.*'{KEY_ID}'"):
        wrong.decode(stored, context)


def test_missing_key_fails_naming_dataset_and_key_id() -> None:
    env = CodecEnvironment.in_memory("dataset-y", keys=KeyRing())
    codec = AesGcmCodec.from_config({"id": "aesgcm", "key_id": "absent"}, env)
    with pytest.raises(KeyUnavailableError) as caught:
        codec.decode(b"\x00" * 40, RecordContext("dataset-y", 0))
    assert "dataset-y" in str(caught.value)
    assert "'absent'" in str(caught.value)
    with pytest.raises(KeyUnavailableError, match=r"dataset-y.*'absent'"):
        codec.prepare([], env)
    with pytest.raises(KeyUnavailableError, match="'absent'"):
        AesGcmCodec(key_id="absent").encode(b"x", RecordContext("dataset-y", 0))


def test_key_of_the_wrong_size_is_refused() -> None:
    env = keyed_environment({KEY_ID: KEY[:16]})
    codec = AesGcmCodec.from_config({"id": "aesgcm", "key_id": KEY_ID}, env)
    with pytest.raises(KeyUnavailableError, match="not 32 bytes"):
        codec.encode(b"x", RecordContext(DATASET, 0))


def test_writer_side_prepare_fetches_the_key_from_the_writer_ring() -> None:
    codec = resolve_codecs([{"id": "aesgcm", "key_id": KEY_ID}])[0]
    assert isinstance(codec, AesGcmCodec)
    prepared = codec.prepare([], keyed_environment())
    context = RecordContext(DATASET, 0)
    stored = prepared.encode(b"abc", context)
    reader = AesGcmCodec.from_config(prepared.get_config(), keyed_environment())
    assert reader.decode(stored, context) == b"abc"


def wrong_env(key_id: str) -> CodecEnvironment:
    return CodecEnvironment.in_memory(DATASET, keys=KeyRing({key_id: OTHER_KEY}))


def _leaks(text: str, key: bytes) -> bool:
    forms = [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        repr(key),
        repr(key)[2:-1],
        str(list(key)),
    ]
    return any(form in text for form in forms)


def test_keys_never_leak(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    texts: list[str] = []
    monkeypatch.setenv("SPLITDATALOADER_KEY_ENV_KEY", KEY.hex())
    (tmp_path / "file-key.key").write_bytes(KEY)
    (tmp_path / "bad.key").write_text(KEY.hex()[:-2] + "zz")
    monkeypatch.setenv("SPLITDATALOADER_KEY_BAD_ENV", base64.b64encode(KEY)[:-4].decode())
    monkeypatch.setenv("SPLITDATALOADER_KEY_DIR", str(tmp_path))
    ring = KeyRing(keys={KEY_ID: KEY}, providers=[EnvKeyProvider(), FileKeyProvider(path=tmp_path)])
    env = CodecEnvironment.in_memory(DATASET, keys=ring)
    with caplog.at_level(logging.DEBUG):
        for key_id in (KEY_ID, "env-key", "file-key"):
            codec = AesGcmCodec.from_config({"id": "aesgcm", "key_id": key_id}, env)
            texts += [repr(codec), str(codec), json.dumps(codec.get_config()), str(vars(codec))]
            context = RecordContext(DATASET, 1)
            stored = codec.encode(b"plaintext", context)
            for damaged in (stored[:-1], b"\x00" + stored[1:], stored[:5]):
                with pytest.raises(DecryptionError) as caught:
                    codec.decode(damaged, context)
                texts += [str(caught.value), repr(caught.value)]
            wrong = AesGcmCodec.from_config(
                {"id": "aesgcm", "key_id": key_id},
                CodecEnvironment.in_memory(DATASET, keys=KeyRing({key_id: OTHER_KEY})),
            )
            with pytest.raises(DecryptionError) as caught:
                wrong.decode(stored, context)
            texts.append(str(caught.value))
            with pytest.raises(DecryptionError) as caught:
                AesGcmCodec.from_config(codec.get_config(), wrong_env(key_id))
            texts.append(str(caught.value))
        for key_id in ("bad", "bad-env"):
            with pytest.raises(KeyUnavailableError) as unavailable:
                ring.get(key_id)
            texts += [str(unavailable.value), repr(unavailable.value)]
            cause = unavailable.value.__cause__ or unavailable.value.__context__
            texts.append(repr(cause))
    texts += [repr(ring), repr(env), caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    assert "resolved" in caplog.text, "the key look-ups were logged (without keys)"
    for text in texts:
        assert not _leaks(text, KEY), text


# -- key providers -------------------------------------------------------------------------


def test_env_variable_names() -> None:
    assert env_variable("prod") == "SPLITDATALOADER_KEY_PROD"
    assert env_variable("prod/2024-01") == "SPLITDATALOADER_KEY_PROD_2024_01"
    assert env_variable("arn:aws:kms:eu-west-1:1:key/ab.c") == (
        "SPLITDATALOADER_KEY_ARN_AWS_KMS_EU_WEST_1_1_KEY_AB_C"
    )


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        f"  {KEY.hex()}\n",
        base64.b64encode(KEY).decode(),
        base64.b64encode(KEY).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY).decode(),
    ],
)
def test_env_provider_reads_hex_and_base64(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SPLITDATALOADER_KEY_TEAM_A_2024", text)
    assert EnvKeyProvider().get_key("team-a.2024") == KEY


@pytest.mark.parametrize(
    "text", ["", "abc", KEY.hex()[:-2], base64.b64encode(KEY[:16]).decode(), "é" * 64]
)
def test_env_provider_refuses_what_is_not_a_key(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SPLITDATALOADER_KEY_K", text)
    with pytest.raises(KeyUnavailableError, match=r"SPLITDATALOADER_KEY_K.*'k'") as caught:
        EnvKeyProvider().get_key("k")
    if text:
        assert text not in str(caught.value)


def test_env_provider_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLITDATALOADER_KEY_NOPE", raising=False)
    with pytest.raises(KeyUnavailableError, match="SPLITDATALOADER_KEY_NOPE is not set"):
        EnvKeyProvider().get_key("nope")
    monkeypatch.setenv("MYAPP_NOPE", KEY.hex())
    assert EnvKeyProvider(prefix="MYAPP_").get_key("nope") == KEY
    with pytest.raises(CodecConfigError, match="unknown option"):
        EnvKeyProvider(path="x")


@pytest.mark.parametrize(
    "content", [KEY, KEY.hex().encode(), KEY.hex().encode() + b"\n", base64.b64encode(KEY)]
)
def test_file_provider_reads_raw_hex_and_base64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    (tmp_path / "prod.key").write_bytes(content)
    os.chmod(tmp_path / "prod.key", 0o600)
    monkeypatch.setenv("SPLITDATALOADER_KEY_DIR", str(tmp_path))
    assert FileKeyProvider().get_key("prod") == KEY
    assert FileKeyProvider(path=tmp_path).get_key("prod") == KEY
    assert FileKeyProvider(path=tmp_path / "prod.key").get_key("prod") == KEY
    assert FileKeyProvider(path=str(tmp_path / "prod.key"), key_id="x").get_key("x") == KEY


def test_file_provider_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SPLITDATALOADER_KEY_DIR", raising=False)
    with pytest.raises(KeyUnavailableError, match="SPLITDATALOADER_KEY_DIR is not set"):
        FileKeyProvider().get_key("prod")
    with pytest.raises(KeyUnavailableError, match="cannot read key file"):
        FileKeyProvider(path=tmp_path).get_key("absent")
    (tmp_path / "prod.key").write_bytes(KEY)
    with pytest.raises(KeyUnavailableError, match="holds key id 'prod'"):
        FileKeyProvider(path=tmp_path / "prod.key").get_key("other")
    for key_id in ("../prod", "sub/prod", ".hidden"):
        with pytest.raises(KeyUnavailableError, match="not a plain file name"):
            FileKeyProvider(path=tmp_path).get_key(key_id)
    (tmp_path / "short.key").write_bytes(KEY[:31])
    with pytest.raises(KeyUnavailableError, match="does not hold a 32-byte key"):
        FileKeyProvider(path=tmp_path).get_key("short")
    (tmp_path / "big.key").write_bytes(b"x" * 10_000)
    with pytest.raises(KeyUnavailableError, match="not a key file"):
        FileKeyProvider(path=tmp_path).get_key("big")
    (tmp_path / "open.key").write_bytes(KEY)
    os.chmod(tmp_path / "open.key", 0o644)
    with caplog.at_level(logging.WARNING, logger="splitdataloader_backends"):
        assert FileKeyProvider(path=tmp_path).get_key("open") == KEY
    assert "can be read by other users" in caplog.text


def test_key_ring_uses_the_providers_by_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITDATALOADER_KEY_SHARED", KEY.hex())
    (tmp_path / "shared.key").write_bytes(OTHER_KEY)
    ring = KeyRing(providers=[EnvKeyProvider(), FileKeyProvider(path=tmp_path)])
    assert ring.get("shared") == KEY
    assert ring.get("shared", provider="file") == OTHER_KEY
    env = CodecEnvironment.in_memory(DATASET, keys=ring)
    by_file = AesGcmCodec.from_config({"id": "aesgcm", "key_id": "shared", "provider": "file"}, env)
    by_env = AesGcmCodec.from_config({"id": "aesgcm", "key_id": "shared"}, env)
    context = RecordContext(DATASET, 0)
    assert by_file.decode(by_file.encode(b"a", context), context) == b"a"
    with pytest.raises(DecryptionError):
        by_env.decode(by_file.encode(b"a", context), context)
