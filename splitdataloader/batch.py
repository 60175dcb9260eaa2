"""Batched random access: many records at once, grouped by segment and coalesced.

Owns :func:`read_batch`, the engine of ``SplitDataLoader.get_many`` and of slices: it
looks up every requested record's index entry, groups the records by segment, merges
neighbouring byte ranges into one read (gaps up to :data:`COALESCE_GAP`), issues the reads
(concurrently through ``cat_ranges`` on remote filesystems, ``pread`` locally), then
slices, verifies and returns the records in the order asked.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .commits import CommitReader

if TYPE_CHECKING:
    from .storage import Storage

#: Neighbouring ranges of one segment closer than this are fetched in one read.
COALESCE_GAP = 256 * 1024
#: A coalesced read never grows past this many bytes.
MAX_COALESCED = 16 << 20

_Item = tuple[int, int, int, int]  # offset, length, checksum, position in the request
_Run = tuple[int, int, int, int, list[_Item]]  # reader, segment, start, end, items


def read_batch(
    storage: Storage,
    readers: Sequence[CommitReader],
    first_records: Sequence[int],
    positions: Sequence[int],
) -> list[bytes]:
    """The verified records at global ``positions`` (already range-checked), in order."""
    wanted: dict[tuple[int, int], list[_Item]] = {}
    for k, position in enumerate(positions):
        reader_id = bisect.bisect_right(first_records, position) - 1
        reader = readers[reader_id]
        segment, length, offset, checksum = reader.entry(position - reader.first_record)
        if segment >= len(reader.segments):
            raise reader.bad_entry(position - reader.first_record)
        wanted.setdefault((reader_id, segment), []).append((offset, length, checksum, k))
    runs = _coalesce(wanted)
    if storage.is_local:
        blobs = [readers[r].read_span(segment, start, end) for r, segment, start, end, _ in runs]
    else:
        blobs = storage.read_ranges(
            [readers[r].segments[segment].name for r, segment, _, _, _ in runs],
            [start for _, _, start, _, _ in runs],
            [end for _, _, _, end, _ in runs],
        )
    out: list[bytes] = [b""] * len(positions)
    for (reader_id, segment, start, _, items), blob in zip(runs, blobs):
        reader = readers[reader_id]
        hash_record = reader.hash_record
        for offset, length, checksum, k in items:
            data = blob[offset - start : offset - start + length]
            if len(data) != length or offset < reader.min_offset:
                j = positions[k] - reader.first_record
                raise reader.short_error(j, reader.segments[segment].name, offset)
            if hash_record is not None and hash_record(data) != checksum:
                j = positions[k] - reader.first_record
                raise reader.mismatch(j, reader.segments[segment].name, offset)
            out[k] = data
    return out


def _coalesce(wanted: dict[tuple[int, int], list[_Item]]) -> list[_Run]:
    runs: list[_Run] = []
    for (reader_id, segment), items in wanted.items():
        items.sort()
        current: list[_Item] = []
        start = end = 0
        for item in items:
            offset, length = item[0], item[1]
            if (
                current
                and offset <= end + COALESCE_GAP
                and max(end, offset + length) - start <= MAX_COALESCED
            ):
                current.append(item)
                end = max(end, offset + length)
                continue
            if current:
                runs.append((reader_id, segment, start, end, current))
            current = [item]
            start, end = offset, offset + length
        if current:
            runs.append((reader_id, segment, start, end, current))
    return runs
