"""Turning user records into flat byte views, with errors that name the record.

Owns the rule for what a record may be: any object exposing a C-contiguous buffer
(``bytes``, ``bytearray``, ``memoryview``, a numpy array, ...). It does no I/O.
"""

from __future__ import annotations

from typing import Any

from .byte_layout import MAX_RECORD_BYTES
from .errors import RecordTooLargeError, RecordTypeError


def as_byte_view(record: Any, position: int, item: int) -> bytes | memoryview:
    """Return ``record`` as ``bytes`` or a flat unsigned-byte ``memoryview``.

    Parameters
    ----------
    record
        The record as given by the user.
    position
        The global index the record would get, for the error message.
    item
        Its position in the input since the last commit, for the error message.

    Raises
    ------
    RecordTypeError
        If the record has no buffer, or a non-contiguous one.
    RecordTooLargeError
        If it holds more than 4 GiB - 1 bytes.
    """
    if type(record) is bytes:
        view: bytes | memoryview = record
    else:
        if isinstance(record, str):
            raise RecordTypeError(
                f"record {position} (input item {item}) is a str; encode it first (for example "
                f"record.encode('utf-8')): records must be bytes-like",
                record=position,
            )
        try:
            flat = memoryview(record)
        except TypeError as err:
            raise RecordTypeError(
                f"record {position} (input item {item}) has type {type(record).__name__}, "
                f"not a bytes-like object (bytes, bytearray, memoryview, numpy array)",
                record=position,
            ) from err
        if not flat.c_contiguous:
            raise RecordTypeError(
                f"record {position} (input item {item}) is a non-contiguous "
                f"{type(record).__name__}; make a contiguous copy first (for example "
                f"numpy.ascontiguousarray)",
                record=position,
            )
        if flat.ndim != 1 or flat.format != "B":
            flat = flat.cast("B")
        view = flat
    if len(view) > MAX_RECORD_BYTES:
        raise RecordTooLargeError(
            f"record {position} (input item {item}) holds {len(view)} bytes; the format "
            f"allows at most {MAX_RECORD_BYTES}",
            record=position,
        )
    return view
