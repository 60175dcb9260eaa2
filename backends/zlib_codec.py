"""The ``zlib`` codec: each record compressed on its own with the standard library's zlib.

Stored bytes are a complete zlib stream (RFC 1950: 2-byte header, deflate data, Adler-32
of the record), exactly what :func:`zlib.compress` returns, so any zlib can read them.
The codec has no state: :func:`zlib.compress` and :func:`zlib.decompress` are one-shot
calls that are safe from any thread.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, ClassVar

from splitdataloader.codecs import Codec
from splitdataloader.errors import DecodeError
from splitdataloader.hookspecs import RegisterCodec, hookimpl

# TID251 bans importing the source folder by name; a relative import inside the
# installed package is what it asks for.
from ._options import check_options, describe, parse_int  # noqa: TID251

if TYPE_CHECKING:
    from collections.abc import Mapping

    from splitdataloader.codecs import CodecEnvironment, RecordContext

__all__ = ["ZlibCodec"]


class ZlibCodec(Codec):
    """Per-record zlib compression.

    Parameters
    ----------
    level
        Compression level from 0 (stored, no compression) to 9 (smallest); 6 by default.

    Raises
    ------
    CodecConfigError
        ``level`` is not an integer from 0 to 9.
    """

    codec_id: ClassVar[str] = "zlib"
    kind: ClassVar[str] = "compression"

    def __init__(self, level: int = 6) -> None:
        self.level = parse_int(self.codec_id, "level", level, 0, 9)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "level": self.level}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: CodecEnvironment) -> ZlibCodec:
        return cls(**check_options(cls.codec_id, config, ("level",)))

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return zlib.compress(data, self.level)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as err:
            raise DecodeError(
                f"zlib: {describe(context)} is not a valid zlib stream ({err})",
                record=context.record,
            ) from err


@hookimpl
def splitdataloader_register_codecs(register: RegisterCodec) -> None:
    """Register the ``zlib`` codec (standard library only)."""
    register(ZlibCodec)
