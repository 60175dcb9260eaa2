"""Sample records: a named group of files stored as one record.

Owns the byte layout of a sample record and nothing else; it does no I/O. A sample record
is self-describing::

    b"SDLSMPL1" || u32 h || h bytes of UTF-8 JSON {"key": k, "fields": [[name, size], ...]}
                || the fields' bytes, back to back

(little-endian). A WebDataset sample ``dir/s01.jpg``, ``dir/s01.cls`` is the key
``dir/s01`` with the fields ``jpg`` and ``cls``; a file stored with its path is a sample of
one field named ``""`` whose key is the path. ``splitdata pack`` writes them from tar files
and folders; :func:`decode_sample` reads one back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import SampleFormatError

__all__ = ["MAX_SAMPLE_HEADER", "SAMPLE_MAGIC", "Sample", "decode_sample", "encode_sample"]

SAMPLE_MAGIC = b"SDLSMPL1"
_SAMPLE_HEADER = struct.Struct("<8sI")
#: Largest JSON header of a sample record.
MAX_SAMPLE_HEADER = 1 << 20


@dataclass(frozen=True)
class Sample:
    """A named group of files stored as one record.

    Attributes
    ----------
    key
        The sample's key (a WebDataset key, or a file's relative path).
    fields
        The files by field name (a WebDataset extension such as ``"jpg"``; ``""`` for a
        file stored under its key alone), in stored order.
    """

    key: str
    fields: dict[str, bytes]

    def file_names(self) -> list[str]:
        """The file names the fields came from: ``key.field``, or ``key`` for ``""``."""
        return [f"{self.key}.{name}" if name else self.key for name in self.fields]


def encode_sample(key: str, fields: Sequence[tuple[str, bytes]]) -> bytes:
    """A sample record holding ``fields`` under ``key`` (layout in the module docs).

    Raises
    ------
    SampleFormatError
        If a field name repeats.
    """
    names = [name for name, _ in fields]
    if len(set(names)) != len(names):
        raise SampleFormatError(f"sample {key!r} repeats a field: {names}")
    header = json.dumps(
        {"key": key, "fields": [[name, len(data)] for name, data in fields]},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return b"".join(
        [_SAMPLE_HEADER.pack(SAMPLE_MAGIC, len(header)), header, *(d for _, d in fields)]
    )


def decode_sample(record: bytes | memoryview, index: int | None = None) -> Sample:
    """Read a sample record back.

    Parameters
    ----------
    record
        The record, as a loader returns it.
    index
        Its record index, for error messages.

    Raises
    ------
    SampleFormatError
        If ``record`` is not a valid sample record.
    """
    where = "a record" if index is None else f"record {index}"
    data = bytes(record)
    if len(data) < _SAMPLE_HEADER.size:
        raise SampleFormatError(f"{where} is too short for a sample record", record=index)
    magic, size = _SAMPLE_HEADER.unpack_from(data)
    if magic != SAMPLE_MAGIC or size > MAX_SAMPLE_HEADER:
        raise SampleFormatError(f"{where} is not a sample record", record=index)
    start = _SAMPLE_HEADER.size
    try:
        header = json.loads(data[start : start + size].decode("utf-8"))
        key = header["key"]
        listed = [(str(name), int(length)) for name, length in header["fields"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise SampleFormatError(
            f"{where} has a damaged sample header: {err}", record=index
        ) from None
    position = start + size
    if not isinstance(key, str) or any(length < 0 for _, length in listed):
        raise SampleFormatError(f"{where} has a damaged sample header", record=index)
    if position + sum(length for _, length in listed) != len(data):
        raise SampleFormatError(
            f"{where}: its fields do not add up to the record's size", record=index
        )
    fields: dict[str, bytes] = {}
    for name, length in listed:
        if name in fields:
            raise SampleFormatError(f"{where} repeats the field {name!r}", record=index)
        fields[name] = data[position : position + length]
        position += length
    return Sample(key, fields)
