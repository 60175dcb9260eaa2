"""On-disk format version 2, the binary side: segment, frame and index-part encodings.

Owns the byte layout of the files a commit writes (``docs/format.md`` §4, §5): the
segment header, the frame header before each record, the index part's header and its
fixed-width entries (as :mod:`struct` layouts and a numpy dtype), the largest record a
frame holds, and the arithmetic that packs a bin's index entries from record lengths.
The manifest and part manifests, their JSON schema and the round-robin layout belong to
:mod:`splitdataloader.format`. It performs no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DatasetFormatError

#: Records hold at most this many bytes (the frame's length field is a u32).
MAX_RECORD_BYTES = 0xFFFF_FFFF

SEGMENT_MAGIC = b"SDLSEG02"
SEGMENT_HEADER = struct.Struct("<8sII")  # magic, bin, reserved (0)
INDEX_MAGIC = b"SDLIDX02"
INDEX_HEADER = struct.Struct("<8sIIQQ")  # magic, header size, entry size, entries, reserved
FRAME_HEADER = struct.Struct("<IIQ")  # length, length ^ 0xFFFFFFFF, checksum
INDEX_ENTRY = struct.Struct("<IIQQ")  # segment, length, offset, checksum
FRAME_CHECK_MASK = 0xFFFF_FFFF

INDEX_ENTRY_DTYPE = np.dtype(
    [("segment", "<u4"), ("length", "<u4"), ("offset", "<u8"), ("checksum", "<u8")]
)


def index_part_size(records: int) -> int:
    """Bytes of an index part holding ``records`` entries."""
    return INDEX_HEADER.size + INDEX_ENTRY.size * records


def encode_index_header(records: int) -> bytes:
    return INDEX_HEADER.pack(INDEX_MAGIC, INDEX_HEADER.size, INDEX_ENTRY.size, records, 0)


def check_index_header(data: bytes, records: int, path: str) -> None:
    """Validate an index part's header against the commit that lists it."""
    if len(data) < INDEX_HEADER.size:
        raise DatasetFormatError(f"index part {path} is too short for its header", path=path)
    magic, header_size, entry_size, count, _ = INDEX_HEADER.unpack_from(data)
    if magic != INDEX_MAGIC or header_size != INDEX_HEADER.size:
        raise DatasetFormatError(f"{path} is not a version-2 index part", path=path)
    if entry_size != INDEX_ENTRY.size or count != records:
        raise DatasetFormatError(
            f"index part {path} declares {count} entries of {entry_size} bytes; "
            f"its commit says {records} of {INDEX_ENTRY.size}",
            path=path,
        )


def bin_index_entries(
    lengths: NDArray[Any],
    checksums: NDArray[Any],
    cursor: tuple[int, int],
    segment_starts: list[tuple[int, int]],
) -> tuple[bytes, tuple[int, int]]:
    """Index entries for consecutive records of one bin, from their lengths and checksums.

    Frames lie back to back, so offsets follow from the lengths once it is known where
    each segment starts.

    Parameters
    ----------
    lengths, checksums
        Stored length and checksum of each record, in written order.
    cursor
        ``(segment, offset of the next frame)`` where the first record goes, unless a new
        segment starts at it.
    segment_starts
        ``(position, segment)`` pairs: record ``position`` (into ``lengths``) is the first
        frame of ``segment``, which starts right after its header.

    Returns
    -------
    tuple
        The packed entries, and the cursor after the last record.
    """
    count = len(lengths)
    if count == 0:
        return b"", cursor
    entries = np.empty(count, dtype=INDEX_ENTRY_DTYPE)
    entries["length"] = lengths
    entries["checksum"] = checksums
    frame = np.uint64(FRAME_HEADER.size)
    frame_ends = np.cumsum(lengths + frame, dtype=np.uint64)
    segment_id, next_frame = cursor
    runs = [(0, segment_id, next_frame)] if not segment_starts or segment_starts[0][0] else []
    runs += [(position, new_id, SEGMENT_HEADER.size) for position, new_id in segment_starts]
    for k, (lo, run_segment, run_first) in enumerate(runs):
        hi = runs[k + 1][0] if k + 1 < len(runs) else count
        before = frame_ends[lo - 1] if lo else np.uint64(0)
        frame_starts = frame_ends[lo:hi] - lengths[lo:hi] - frame
        entries["offset"][lo:hi] = frame_starts - before + np.uint64(run_first) + frame
        entries["segment"][lo:hi] = run_segment
        segment_id = run_segment
        next_frame = run_first + int(frame_ends[hi - 1] - before)
    return entries.tobytes(), (segment_id, next_frame)


def encode_segment_header(bin_id: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, bin_id, 0)
