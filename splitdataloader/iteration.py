"""Bin-wise iteration over version-2 commits: reading segments in bulk, in chunks.

Owns how a bin's records are fetched while iterating: the bin's index entries are read
as one contiguous range per commit, each segment is read in large requests (one per
segment on object stores), and records are handed out as lists of verified ``bytes`` (a
chunk at a time), so the per-record work is one slice and one hash. It does not decide
the order of bins or the seed; :class:`~splitdataloader.loader.SplitDataLoader` does.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .byte_layout import SEGMENT_MAGIC
from .commits import ByteRange, CommitReader, Fetch, not_a_segment
from .errors import TruncatedDataError

#: Records averaging at least this size are read record by record with ``pread`` on
#: local disk: one copy into the returned bytes instead of a bulk read plus a copy.
LARGE_RECORD = 64 * 1024
#: Largest bulk read while iterating a local segment in order.
WINDOW_BYTES = 8 << 20
#: Most record bytes materialised at once (a chunk); larger records come one per chunk,
#: through their own path: keeping many fresh 1 MiB objects alive makes the C allocator
#: hand memory back to the OS and fault it in again for the next ones.
CHUNK_BYTES = 1 << 20
#: Most records materialised at once.
CHUNK_RECORDS = 1024
#: Local segments up to this size are read whole for shuffled iteration; larger ones are
#: memory-mapped so that memory stays bounded.
WHOLE_READ_LIMIT = 64 << 20


def plan(
    readers: Sequence[CommitReader], bins: Iterable[int], whole_index_budget: int
) -> Iterator[ByteRange]:
    """The byte ranges that iterating ``bins`` in this order reads (remote), in order:
    bin by bin and commit by commit, the bin's index entries and its whole segments.

    A commit's index part is fetched whole the first time it is needed while the sizes
    of the parts fetched whole stay within ``whole_index_budget`` (the later look-ups
    are slices of it: one request per commit instead of one per bin); otherwise its
    header, then each bin's range of entries.
    """
    whole: set[int] = set()
    seen: set[int] = set()
    for bin_id in bins:
        for k, reader in enumerate(readers):
            entries = reader.bin_entries_range(bin_id)
            if entries is None:
                continue
            if k not in seen:
                seen.add(k)
                index = reader.index_range()
                if index[2] <= whole_index_budget:
                    whole_index_budget -= index[2]
                    whole.add(k)
                    yield index
                else:
                    header = reader.header_range()
                    if header is not None:
                        yield header
            if k not in whole:
                yield entries
            yield from reader.bin_segment_ranges(bin_id)


def bin_in_order(
    readers: Sequence[CommitReader], bin_id: int, fetch: Fetch | None = None
) -> Iterator[list[bytes]]:
    """Chunks of the records of ``bin_id`` in written order, commit after commit.

    ``fetch`` reads byte ranges on remote filesystems (default: the storage directly).
    """
    for reader in readers:
        entries = reader.bin_entries(bin_id, fetch)
        if entries.size == 0:
            continue
        segment_ids = entries["segment"]
        cuts = np.flatnonzero(segment_ids[1:] != segment_ids[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(entries)]
        for lo, hi in itertools.pairwise(bounds):
            source = SegmentSource(
                reader, int(segment_ids[lo]), entries[lo:hi], sequential=True, fetch=fetch
            )
            try:
                yield from source.chunks(bin_id, lo)
            finally:
                source.close()


def bin_shuffled(
    readers: Sequence[CommitReader],
    bin_id: int,
    rng: np.random.Generator,
    fetch: Fetch | None = None,
) -> Iterator[list[bytes]]:
    """Chunks of the records of ``bin_id`` in an order drawn from ``rng``."""
    sources: list[SegmentSource] = []
    owners: list[NDArray[Any]] = []
    positions: list[NDArray[Any]] = []
    try:
        for reader in readers:
            entries = reader.bin_entries(bin_id, fetch)
            if entries.size == 0:
                continue
            segment_ids = entries["segment"]
            for segment in np.unique(segment_ids).tolist():
                where = np.flatnonzero(segment_ids == segment)
                sources.append(
                    SegmentSource(reader, segment, entries[where], sequential=False, fetch=fetch)
                )
                owners.append(np.full(len(where), len(sources) - 1, dtype=np.int64))
                positions.append(where)
        if not sources:
            return
        order = rng.permutation(sum(len(o) for o in owners))
        owner = np.concatenate(owners)[order]
        within = np.concatenate([np.arange(len(o)) for o in owners])[order]
        position = np.concatenate(positions)[order]
        step = _chunk_records(np.concatenate([s.entries["length"] for s in sources]))
        if len(sources) == 1 and sources[0].buffered:
            yield from sources[0].permuted_chunks(within, bin_id, position, step)
            return
        for lo in range(0, len(order), step):
            hi = lo + step
            yield _gather(sources, owner[lo:hi], within[lo:hi], bin_id, position[lo:hi])
    finally:
        for source in sources:
            source.close()


def _gather(
    sources: list[SegmentSource],
    owner: NDArray[Any],
    within: NDArray[Any],
    bin_id: int,
    position: NDArray[Any],
) -> list[bytes]:
    if len(sources) == 1:
        return sources[0].take(within, bin_id, position)
    out: list[bytes] = [b""] * len(owner)
    for source_id in np.unique(owner).tolist():
        picked = np.flatnonzero(owner == source_id)
        records = sources[source_id].take(within[picked], bin_id, position[picked])
        for k, record in zip(picked.tolist(), records):
            out[k] = record
    return out


def _chunk_records(lengths: NDArray[Any]) -> int:
    if not lengths.size:
        return 1
    average = max(1, int(lengths.mean()))
    return max(1, min(CHUNK_RECORDS, CHUNK_BYTES // average))


class SegmentSource:
    """One segment opened for iteration.

    Four ways to read, chosen once per segment: large records one ``pread`` each (local);
    in-order windows of many small records one ``pread`` each (local); the whole segment
    read once (shuffled local segments up to :data:`WHOLE_READ_LIMIT`, and every segment
    on other filesystems, in one request); or a read-only memory map (larger shuffled
    local segments).
    """

    def __init__(
        self,
        reader: CommitReader,
        segment: int,
        entries: NDArray[Any],
        *,
        sequential: bool,
        fetch: Fetch | None = None,
    ) -> None:
        self.reader = reader
        self.entries = entries
        ref = reader.segments[segment]
        self.name = ref.name
        storage = reader.storage
        self._buffer: Any = None
        self._fd = -1
        self._windowed = False
        if storage.is_local:
            large = bool(entries.size) and int(entries["length"].mean()) >= LARGE_RECORD
            if large or sequential or ref.size <= WHOLE_READ_LIMIT:
                self._fd = storage.open_fd(ref.name)
                actual = os.fstat(self._fd).st_size
                if actual < ref.size:
                    self.close()
                    raise self._truncated(actual)
                if os.pread(self._fd, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:
                    self.close()
                    raise not_a_segment(storage.display(ref.name))
                if large:
                    return
                if sequential:
                    self._windowed = True
                    return
                self._buffer = os.pread(self._fd, ref.size, 0)
                os.close(self._fd)
                self._fd = -1
            else:
                self._buffer = storage.map_file(ref.name, ref.size)
        else:
            self._buffer = (fetch or storage.read_range)(ref.name, 0, ref.size)
        if len(self._buffer) < ref.size:
            actual = len(self._buffer)
            self.close()
            raise self._truncated(actual)
        if self._buffer[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            self.close()
            raise not_a_segment(storage.display(ref.name))

    @property
    def buffered(self) -> bool:
        """True when the whole segment is in memory (or mapped)."""
        return self._buffer is not None

    def _truncated(self, actual: int) -> TruncatedDataError:
        where = self.reader.storage.display(self.name)
        return TruncatedDataError(
            f"{where} is {actual} bytes, shorter than its commit says", path=where, offset=actual
        )

    def _slices(self, part: NDArray[Any]) -> list[bytes]:
        offsets = part["offset"]
        lengths = part["length"].tolist()
        if self._fd >= 0:
            descriptor = self._fd
            starts = offsets.tolist()
            records = [os.pread(descriptor, n, o) for o, n in zip(starts, lengths)]
            for record, length, offset in zip(records, lengths, starts):
                if len(record) != length:
                    raise self._truncated(offset)
            return records
        buffer = self._buffer
        return [buffer[o : o + n] for o, n in zip(offsets.tolist(), lengths)]

    def _read_window(self, part: NDArray[Any]) -> tuple[bytes, int]:
        """One ``pread`` covering every record of ``part``; returns it and its offset."""
        start = int(part["offset"][0])
        end = int(part["offset"][-1]) + int(part["length"][-1])
        window = os.pread(self._fd, end - start, start)
        if len(window) != end - start:
            raise self._truncated(start + len(window))
        return window, start

    def chunks(self, bin_id: int, first_position: int) -> Iterator[list[bytes]]:
        """The segment's records in written order, a verified chunk at a time."""
        entries = self.entries
        step = _chunk_records(entries["length"])
        if step == 1 and self._fd >= 0:
            yield from self._large_records(bin_id, first_position)
            return
        if not self._windowed:
            for lo in range(0, len(entries), step):
                part = entries[lo : lo + step]
                records = self._slices(part)
                positions = range(first_position + lo, first_position + lo + len(part))
                offsets = part["offset"].tolist()
                self._check(records, part["checksum"].tolist(), bin_id, positions, offsets)
                yield self._decoded(records, bin_id, positions)
            return
        per_window = max(step, WINDOW_BYTES // max(1, int(entries["length"].mean())))
        per_window -= per_window % step
        for window_lo in range(0, len(entries), per_window):
            part = entries[window_lo : window_lo + per_window]
            window, start = self._read_window(part)
            relative = part["offset"] - np.uint64(start)
            starts = relative.tolist()
            ends = (relative + part["length"]).tolist()
            checksums = part["checksum"].tolist()
            for lo in range(0, len(starts), step):
                hi = lo + step
                records = [window[a:b] for a, b in zip(starts[lo:hi], ends[lo:hi])]
                first = first_position + window_lo + lo
                positions = range(first, first + len(records))
                offsets = [start + a for a in starts[lo:hi]]
                self._check(records, checksums[lo:hi], bin_id, positions, offsets)
                yield self._decoded(records, bin_id, positions)

    def permuted_chunks(
        self, within: NDArray[Any], bin_id: int, positions: NDArray[Any], step: int
    ) -> Iterator[list[bytes]]:
        """The records at ``within`` in that order, a verified chunk at a time (buffered)."""
        part = self.entries[within]
        starts = part["offset"].tolist()
        ends = (part["offset"] + part["length"]).tolist()
        checksums = part["checksum"].tolist()
        position_list = positions.tolist()
        buffer = self._buffer
        for lo in range(0, len(starts), step):
            hi = lo + step
            records = [buffer[a:b] for a, b in zip(starts[lo:hi], ends[lo:hi])]
            positions_chunk = position_list[lo:hi]
            self._check(records, checksums[lo:hi], bin_id, positions_chunk, starts[lo:hi])
            yield self._decoded(records, bin_id, positions_chunk)

    def _check(
        self,
        records: list[bytes],
        checksums: list[int],
        bin_id: int,
        positions: Sequence[int],
        offsets: Sequence[int],
    ) -> None:
        """Verify a chunk; on a mismatch, name the record, the file and the offset."""
        hash_record = self.reader.hash_record
        if hash_record is None or list(map(hash_record, records)) == checksums:
            return
        for k, (record, checksum) in enumerate(zip(records, checksums)):
            if hash_record(record) != checksum:
                reader = self.reader
                record_number = reader.record_of_entry(bin_id, positions[k])
                raise reader.mismatch(record_number, self.name, offsets[k])

    def _decoded(self, records: list[bytes], bin_id: int, positions: Sequence[int]) -> list[bytes]:
        """Records through the dataset's codecs (as stored when it has none)."""
        decoder = self.reader.decoder
        if decoder is None:
            return records
        reader = self.reader
        first = reader.first_record + reader.record_of_entry(bin_id, 0)
        bins = reader.bins
        return [decoder(record, first + p * bins) for record, p in zip(records, positions)]

    def _large_records(self, bin_id: int, first_position: int) -> Iterator[list[bytes]]:
        # Records of a chunk's size or more, one pread each: the per-record bookkeeping
        # stays in plain Python lists, built once per segment.
        entries = self.entries
        offsets = entries["offset"].tolist()
        lengths = entries["length"].tolist()
        checksums = entries["checksum"].tolist()
        hash_record = self.reader.hash_record
        descriptor = self._fd
        for position, (offset, length, checksum) in enumerate(zip(offsets, lengths, checksums)):
            record = os.pread(descriptor, length, offset)
            if len(record) != length:
                raise self._truncated(offset)
            if hash_record is not None and hash_record(record) != checksum:
                reader = self.reader
                raise reader.mismatch(
                    reader.record_of_entry(bin_id, first_position + position), self.name, offset
                )
            yield self._decoded([record], bin_id, [first_position + position])

    def take(self, within: NDArray[Any], bin_id: int, positions: NDArray[Any]) -> list[bytes]:
        """The records at ``within`` (indices into this source's entries), verified."""
        if self._windowed:
            raise AssertionError("take() needs a source opened with sequential=False")
        part = self.entries[within]
        records = self._slices(part)
        offsets = part["offset"].tolist()
        position_list = positions.tolist()
        self._check(records, part["checksum"].tolist(), bin_id, position_list, offsets)
        return self._decoded(records, bin_id, position_list)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._buffer is not None and hasattr(self._buffer, "close"):
            self._buffer.close()
        self._buffer = None
