"""The conformance kit itself: it passes a correct codec and fails each kind of broken one.

Kit tests are called directly with hand-made fixtures; ``pytest.fail`` inside them raises
``pytest.fail.Exception``, which is what a broken plugin must get.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import pytest

from splitdataloader.codecs import Codec, CodecEnvironment, KeyRing, RecordContext
from splitdataloader.errors import DecodeError, DecryptionError
from splitdataloader.testing import BackendTests, CodecTests, EncryptionCodecTests

Failed = pytest.fail.Exception
CONTEXT = RecordContext("conformance-dataset", 7)
KEY = bytes(range(100, 132))


class Deflate(Codec):
    """A correct codec: zlib with its Adler-32 check."""

    codec_id: ClassVar[str] = "tdeflate"
    kind: ClassVar[str] = "compression"

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as err:
            raise DecodeError(str(err)) from err


class Passthrough(Deflate):
    """Stores records as they are: it cannot notice any corruption."""

    codec_id: ClassVar[str] = "tpass"

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return bytes(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        return data


class HonestPassthrough(Passthrough):
    integrity: ClassVar[bool] = False


class RawErrors(Deflate):
    """Lets zlib.error out instead of DecodeError."""

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        return zlib.decompress(data)


class ReturnsBytearray(Deflate):
    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return bytearray(zlib.compress(data))  # type: ignore[return-value]


class DropsLastByte(Deflate):
    def decode(self, data: bytes, context: RecordContext) -> bytes:
        return (
            super().decode(data, context)[:-1] if len(data) > 200 else super().decode(data, context)
        )


class ForgetsOption(Deflate):
    """Prefixes records with a tag that its config does not record."""

    def __init__(self, tag: bytes = b"T") -> None:
        self.tag = tag

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return self.tag + bytes(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        if not data.startswith(self.tag):
            raise DecodeError("wrong tag")
        return data[len(self.tag) :]


class XorSeal(Codec):
    """A toy 'encryption' that authenticates the payload but not its position."""

    codec_id: ClassVar[str] = "txor"
    kind: ClassVar[str] = "encryption"

    def __init__(self, key: bytes, show_key: bool = False) -> None:
        self.key = key
        self.show_key = show_key

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id, "key_id": "k"}
        if self.show_key:
            config["debug"] = self.key.hex()
        return config

    def _xor(self, data: bytes | memoryview) -> bytes:
        return bytes(b ^ self.key[i % len(self.key)] for i, b in enumerate(bytes(data)))

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        body = self._xor(data)
        return body + zlib.crc32(body).to_bytes(4, "little")

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        body, tag = data[:-4], data[-4:]
        if len(data) < 4 or zlib.crc32(body).to_bytes(4, "little") != tag:
            raise DecryptionError("authentication failed")
        return self._xor(body)


@pytest.fixture
def kit() -> CodecTests:
    return CodecTests()


def test_a_correct_codec_passes_the_corruption_tests(kit: CodecTests) -> None:
    codec = Deflate()
    for kind in ("random", "text"):
        kit.test_truncated_input_fails(codec, CONTEXT, kind)
        kit.test_flipped_bits_fail(codec, CONTEXT, kind)
        kit.test_round_trip_small(codec, CONTEXT, kind)
    kit.test_garbage_fails(codec, CONTEXT)
    kit.test_round_trip_empty(codec, CONTEXT)
    kit.test_accepts_memoryview_and_leaves_it_intact(codec, CONTEXT)


def test_wrong_bytes_fail_unless_the_codec_declares_no_integrity(kit: CodecTests) -> None:
    with pytest.raises(Failed, match="declares integrity = False"):
        kit.test_flipped_bits_fail(Passthrough(), CONTEXT, "text")
    with pytest.raises(Failed, match="declares integrity = False"):
        kit.test_truncated_input_fails(Passthrough(), CONTEXT, "text")
    with pytest.raises(Failed, match="accepted"):
        kit.test_garbage_fails(Passthrough(), CONTEXT)
    kit.test_flipped_bits_fail(HonestPassthrough(), CONTEXT, "text")
    kit.test_truncated_input_fails(HonestPassthrough(), CONTEXT, "text")
    kit.test_garbage_fails(HonestPassthrough(), CONTEXT)


def test_other_exception_types_fail(kit: CodecTests) -> None:
    with pytest.raises(Failed, match="raised error"):
        kit.test_garbage_fails(RawErrors(), CONTEXT)


def test_wrong_round_trips_and_types_fail(kit: CodecTests) -> None:
    with pytest.raises(AssertionError, match="encode must return bytes, not bytearray"):
        kit.test_round_trip_small(ReturnsBytearray(), CONTEXT, "text")
    with pytest.raises(AssertionError, match="changed the record"):
        kit.test_round_trip_small(DropsLastByte(), CONTEXT, "random")


def test_a_config_that_loses_an_option_fails(kit: CodecTests) -> None:
    env = CodecEnvironment.in_memory("conformance-dataset")
    kit.test_config_round_trip_through_json(ForgetsOption(), env, CONTEXT)  # the default tag
    with pytest.raises(DecodeError):
        kit.test_config_round_trip_through_json(ForgetsOption(b"other"), env, CONTEXT)


def test_position_binding_and_key_secrecy_are_checked() -> None:
    kit = EncryptionCodecTests()
    env = CodecEnvironment.in_memory("conformance-dataset", keys=KeyRing({"k": KEY}))
    with pytest.raises(Failed, match="DID NOT RAISE"):
        kit.test_record_is_bound_to_its_position(XorSeal(KEY), CONTEXT)
    kit.test_secrets_never_shown(XorSeal(KEY), env, CONTEXT)
    with pytest.raises(AssertionError, match="a key appears"):
        kit.test_secrets_never_shown(XorSeal(KEY, show_key=True), env, CONTEXT)


def test_registration_is_checked(kit: CodecTests) -> None:
    env = CodecEnvironment.in_memory("conformance-dataset")
    with pytest.raises(ImportError, match="no plugin provides the codec 'tdeflate'"):
        kit.test_registered_under_its_id(Deflate(), env)


def test_a_backend_that_swallows_missing_files_fails(tmp_path: Any) -> None:
    from splitdataloader.storage import open_storage  # noqa: PLC0415 - local to this test

    storage = open_storage(f"memory://kit-{tmp_path.name}")
    storage.read_range = lambda name, start, end: b""  # type: ignore[method-assign]
    with pytest.raises(Failed, match="DID NOT RAISE"):
        BackendTests().test_missing_paths_raise_file_not_found(
            storage, f"memory://kit-{tmp_path.name}", {}
        )
