"""Batched random access: many records at once, grouped by segment and coalesced.

Owns :func:`read_batch`, the engine of ``SplitDataLoader.get_many`` and of slices: it
looks up every requested record's index entry in one vectorised step per commit, groups
the records by segment, merges neighbouring byte ranges into one read (small gaps
included), issues the reads (concurrently through ``cat_ranges`` on remote
filesystems, ``pread`` locally), then slices, verifies and returns the records in the
order asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .commits import CommitReader
from .iteration import LARGE_RECORD

if TYPE_CHECKING:
    from .storage import Storage

#: Neighbouring ranges of one segment closer than this are fetched in one read: on local
#: disk a read costs about as much as copying a few KiB; on a remote store a request
#: costs as much as transferring hundreds of KiB, but the reads run concurrently and
#: every byte fetched is paid for, so the gap stays well below that.
LOCAL_COALESCE_GAP = 8 * 1024
REMOTE_COALESCE_GAP = 64 * 1024
#: A coalesced read never grows past this many bytes.
MAX_COALESCED = 16 << 20

_Run = tuple[int, int, int, int, int, int]  # reader, segment, start, end, first, last item


def read_batch(
    storage: Storage,
    readers: Sequence[CommitReader],
    first_records: Sequence[int],
    positions: NDArray[Any],
) -> list[bytes]:
    """The verified records at global ``positions`` (already range-checked), in order."""
    count = len(positions)
    if count == 0:
        return []
    wanted = positions
    owner = np.searchsorted(np.asarray(first_records, dtype=np.int64), wanted, side="right") - 1
    segment = np.empty(count, dtype=np.int64)
    length = np.empty(count, dtype=np.int64)
    offset = np.empty(count, dtype=np.int64)
    checksum = np.empty(count, dtype=np.uint64)
    for reader_id in np.unique(owner).tolist():
        picked = owner == reader_id
        reader = readers[reader_id]
        entries = reader.entries_at(wanted[picked] - reader.first_record)
        bad = np.flatnonzero(entries["segment"] >= len(reader.segments))
        if bad.size:
            raise reader.bad_entry(int(wanted[picked][bad[0]]) - reader.first_record)
        _check_bounds(reader, entries, wanted[picked])
        segment[picked] = entries["segment"]
        length[picked] = entries["length"]
        offset[picked] = entries["offset"]
        checksum[picked] = entries["checksum"]
    order = np.lexsort((offset, segment, owner))
    sorted_lengths = length[order]
    if storage.is_local:
        # A large record is read on its own, straight into the bytes returned: one copy,
        # where a shared read would be copied again by slicing.
        gap, alone = LOCAL_COALESCE_GAP, sorted_lengths >= LARGE_RECORD
    else:
        gap, alone = REMOTE_COALESCE_GAP, None
    runs = _coalesce(owner[order], segment[order], offset[order], sorted_lengths, gap, alone)
    if storage.is_local:
        blobs = [readers[r].read_span(s, start, end) for r, s, start, end, _, _ in runs]
    else:
        blobs = storage.read_ranges(
            [readers[r].segments[s].name for r, s, _, _, _, _ in runs],
            [start for _, _, start, _, _, _ in runs],
            [end for _, _, _, end, _, _ in runs],
            readers[0].concurrency,
        )
    out: list[bytes] = [b""] * count
    items = order.tolist()
    offsets = offset.tolist()
    lengths = length.tolist()
    checksums = checksum.tolist()
    for (reader_id, segment_id, start, end, first, last), blob in zip(runs, blobs):
        reader = readers[reader_id]
        hash_record = reader.hash_record
        decoder = reader.decoder
        if len(blob) != end - start or start < reader.min_offset:
            k = items[first]
            name = reader.segments[segment_id].name
            raise reader.short_error(int(wanted[k]) - reader.first_record, name, start)
        for k in items[first:last]:
            at = offsets[k] - start
            # A run of one record is the record itself: no second copy.
            data = blob if last - first == 1 else blob[at : at + lengths[k]]
            if hash_record is not None and hash_record(data) != checksums[k]:
                j = int(wanted[k]) - reader.first_record
                raise reader.mismatch(j, reader.segments[segment_id].name, offsets[k])
            out[k] = data if decoder is None else decoder(data, int(wanted[k]))
    return out


def _check_bounds(reader: CommitReader, entries: NDArray[Any], records: NDArray[Any]) -> None:
    """Raise for the first entry whose bytes lie outside its segment (before any read)."""
    sizes = np.fromiter((s.size for s in reader.segments), dtype=np.uint64)[entries["segment"]]
    lengths = entries["length"].astype(np.uint64)
    offsets = entries["offset"]
    # Unsigned throughout: rows where ``lengths > sizes`` wrap in the last term, but are
    # already flagged by the second.
    bad = np.flatnonzero(
        (offsets < np.uint64(reader.min_offset)) | (lengths > sizes) | (offsets > sizes - lengths)
    )
    if bad.size:
        k = int(bad[0])
        raise reader.outside(
            int(records[k]) - reader.first_record,
            int(entries["segment"][k]),
            int(offsets[k]),
            int(lengths[k]),
        )


def _coalesce(  # noqa: PLR0917 - internal, called from two places
    owner: NDArray[Any],
    segment: NDArray[Any],
    offset: NDArray[Any],
    length: NDArray[Any],
    gap: int,
    alone: NDArray[Any] | None = None,
) -> list[_Run]:
    """Runs of sorted items that one read can serve (items flagged ``alone`` get a read
    of their own)."""
    end = offset + length
    breaks = np.ones(len(offset), dtype=bool)
    # Sorted records of one segment never overlap, except repeats of the same record, so the
    # previous record's end is the running end of the run.
    breaks[1:] = (
        (owner[1:] != owner[:-1]) | (segment[1:] != segment[:-1]) | (offset[1:] > end[:-1] + gap)
    )
    if alone is not None:
        breaks[1:] |= alone[1:] | alone[:-1]
    firsts = np.flatnonzero(breaks).tolist()
    lasts = [*firsts[1:], len(offset)]
    starts = offset.tolist()
    ends = end.tolist()
    owners = owner.tolist()
    segments = segment.tolist()
    runs: list[_Run] = []
    for first, last in zip(firsts, lasts):
        # Sorted and non-overlapping (repeats aside): the last record ends the run.
        if ends[last - 1] - starts[first] <= MAX_COALESCED:
            runs.append(
                (owners[first], segments[first], starts[first], ends[last - 1], first, last)
            )
            continue
        # Too long for one read: split it greedily.
        lo = first
        for k in range(first + 1, last + 1):
            if k == last or ends[k] - starts[lo] > MAX_COALESCED:
                runs.append((owners[lo], segments[lo], starts[lo], ends[k - 1], lo, k))
                lo = k
    return runs


def read_coalesced(
    storage: Storage,
    names: Sequence[str],
    starts: Sequence[int],
    ends: Sequence[int],
    *,
    concurrency: int | None = None,
    gap: int = REMOTE_COALESCE_GAP,
) -> list[bytes]:
    """Bytes ``[starts[k], ends[k])`` of ``names[k]`` for every ``k``, with neighbouring
    ranges of one file (closer than ``gap``) fetched by one read, the reads concurrent
    (:meth:`Storage.read_ranges`). A short result means the file is short."""
    count = len(names)
    if count == 0:
        return []
    file_ids = {name: k for k, name in enumerate(dict.fromkeys(names))}
    owner = np.fromiter((file_ids[name] for name in names), dtype=np.int64, count=count)
    offset = np.asarray(starts, dtype=np.int64)
    length = np.asarray(ends, dtype=np.int64) - offset
    order = np.lexsort((offset, owner))
    zeros = np.zeros(count, dtype=np.int64)
    runs = _coalesce(zeros, owner[order], offset[order], length[order], gap)
    by_id = list(file_ids)
    blobs = storage.read_ranges(
        [by_id[file_id] for _, file_id, _, _, _, _ in runs],
        [start for _, _, start, _, _, _ in runs],
        [end for _, _, _, end, _, _ in runs],
        concurrency,
    )
    out: list[bytes] = [b""] * count
    items = order.tolist()
    for (_, _, start, _, first, last), blob in zip(runs, blobs):
        for k in items[first:last]:
            at = starts[k] - start
            out[k] = blob[at : at + ends[k] - starts[k]]
    return out
