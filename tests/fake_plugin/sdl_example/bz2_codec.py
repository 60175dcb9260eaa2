"""The ``bz2`` codec: each record compressed on its own with the standard library's bz2."""

from __future__ import annotations

import bz2
from typing import Any

from splitdataloader.codecs import Codec, RecordContext
from splitdataloader.errors import CodecConfigError, DecodeError
from splitdataloader.hookspecs import RegisterCodec, hookimpl


def parse_level(value: object) -> int:
    """Validate a bz2 compression level: an integer from 1 to 9."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
        raise CodecConfigError(f"bz2 level must be an integer from 1 to 9, not {value!r}")
    return value


class Bz2Codec(Codec):
    """bz2 compression of single records; bz2's CRCs detect corrupt input.

    Parameters
    ----------
    level
        Compression level, 1 (fast) to 9 (small).
    """

    codec_id = "bz2"
    kind = "compression"

    def __init__(self, level: int = 9) -> None:
        self.level = parse_level(level)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "level": self.level}

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return bz2.compress(data, self.level)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        decompressor = bz2.BZ2Decompressor()
        try:
            record = decompressor.decompress(data)
        except (OSError, ValueError) as err:
            raise DecodeError(f"record {context.record} is not valid bz2 data: {err}") from err
        if not decompressor.eof or decompressor.unused_data:
            raise DecodeError(f"record {context.record} is truncated or has trailing bytes")
        return record


@hookimpl
def splitdataloader_register_codecs(register: RegisterCodec) -> None:
    register(Bz2Codec)
