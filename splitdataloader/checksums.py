"""Record checksums: the named algorithms a dataset may declare, as plain functions.

Owns the mapping from the name stored in a manifest to a function ``bytes-like -> int``.
It does not decide when to verify; the loader and the writer do.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from .errors import UnsupportedFormatError

__all__ = ["DEFAULT_CHECKSUM", "SUPPORTED_CHECKSUMS", "checksum_function"]

ChecksumFunction = Callable[[Any], int]

DEFAULT_CHECKSUM = "xxh3_64"
SUPPORTED_CHECKSUMS = ("xxh3_64", "crc32")


def _crc32(data: Any) -> int:
    return zlib.crc32(data)


def checksum_function(name: str) -> ChecksumFunction:
    """Return the checksum function called ``name``.

    Parameters
    ----------
    name
        One of :data:`SUPPORTED_CHECKSUMS`: ``"xxh3_64"`` (the default, 64-bit XXH3 with
        seed 0) or ``"crc32"`` (zlib's CRC-32, from the standard library).

    Raises
    ------
    UnsupportedFormatError
        If the name is unknown.
    """
    if name == "xxh3_64":
        import xxhash  # noqa: PLC0415 - imported on first use, not at package import

        function: ChecksumFunction = xxhash.xxh3_64_intdigest
        return function
    if name == "crc32":
        return _crc32
    raise UnsupportedFormatError(
        f"unknown checksum algorithm {name!r}; supported: {', '.join(SUPPORTED_CHECKSUMS)}"
    )
