"""The files of the commit a writer is writing: segments, buffers and index entries.

Owns the data path of one commit of format version 2: records are framed (length, its
check and the checksum) into one new segment per bin, through one data buffer per bin;
a bin whose segment would grow past its size limit starts a new one. Index entries are
gathered bin-major, column-wise, and spilled to a local scratch file past a fixed budget,
so that memory stays bounded (see :mod:`splitdataloader.writer`); at the commit the
segments are closed and the entries written out as the commit's index part. It knows
nothing of manifests, codecs or commits as a whole: :class:`~splitdataloader.SplitWriter`
decides what is written and when it is committed or discarded, and encodes records with
its codec chain before they get here.
"""

from __future__ import annotations

import array
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .byte_layout import (
    FRAME_CHECK_MASK,
    FRAME_HEADER,
    INDEX_ENTRY,
    MAX_RECORD_BYTES,
    SEGMENT_HEADER,
    bin_index_entries,
    encode_index_header,
    encode_segment_header,
    index_part_size,
)
from .format import DATA_DIR, INDEX_DIR, IndexRef, SegmentRef
from .records import as_byte_view

if TYPE_CHECKING:
    from .codecs import RecordContext
    from .storage import Storage
    from .writables import Writable

__all__ = ["StagedCommit"]

_DATA_BUFFER_TOTAL = 16 << 20
_DATA_BUFFER_MIN = 64 << 10
_DATA_BUFFER_MAX = 1 << 20
_ENTRY_BUDGET = 8 << 20


class _OpenSegment:
    """A segment being written in the current commit."""

    __slots__ = ("bin", "name", "records", "size", "writer")

    def __init__(self, name: str, bin_id: int, writer: Writable) -> None:
        self.name = name
        self.bin = bin_id
        self.writer: Writable | None = writer
        self.size = 0
        self.records = 0


class StagedCommit:
    """The records a writer wrote since its last commit, as files not yet committed.

    Parameters
    ----------
    storage
        Where the files go.
    session
        The writer's session id, which every file name starts with.
    bins, order
        The number of bins, and the bin order of a shuffled round-robin (``None``: in
        bin order).
    durable
        ``fsync`` the files on local disk when they are closed.
    max_segment_bytes
        Start a new segment of a bin once its current one would exceed this size.
    hash_record
        The checksum function of the dataset.
    """

    def __init__(
        self,
        storage: Storage,
        session: str,
        *,
        bins: int,
        order: tuple[int, ...] | None,
        durable: bool,
        max_segment_bytes: int,
        hash_record: Callable[[Any], int],
    ) -> None:
        self._storage = storage
        self._session = session
        self._bins = bins
        self._order = order
        self._durable = durable
        self._max_segment_bytes = max_segment_bytes
        self._hash = hash_record
        self._buffer_limit = min(
            _DATA_BUFFER_MAX, max(_DATA_BUFFER_MIN, _DATA_BUFFER_TOTAL // self._bins)
        )
        self._dirs_made = False
        self.reset(0)

    def reset(self, commit_number: int) -> None:
        """Start afresh, for the writer's commit number ``commit_number``."""
        bins = self._bins
        self._commit_number = commit_number
        self.segments: list[_OpenSegment] = []
        self._current: list[int] = [-1] * bins
        self._buffers: list[bytearray] = [bytearray() for _ in range(bins)]
        # Pending index entries, column-wise per bin; offsets are derived when they are
        # turned into entries, from the lengths and where each segment starts.
        self._lengths: list[array.array[int]] = [array.array("I") for _ in range(bins)]
        self._checksums: list[array.array[int]] = [array.array("Q") for _ in range(bins)]
        self._segment_starts: list[list[tuple[int, int]]] = [[] for _ in range(bins)]
        self._cursor: list[tuple[int, int]] = [(-1, 0)] * bins
        self._spilled_upto = 0
        self._spills: list[list[tuple[int, int]]] = [[] for _ in range(bins)]
        self._scratch: IO[bytes] | None = None
        #: Records written since the last commit.
        self.records = 0

    def write(
        self,
        records: Iterable[Any],
        slot: int,
        first: int,
        encode: Callable[[bytes | memoryview, RecordContext], bytes] | None,
        context: Callable[[int], RecordContext] | None,
    ) -> None:
        """Frame ``records`` into the bins' segments, round-robin from bin slot ``slot``.

        ``first`` is the global index of the first record of this commit, ``encode`` the
        codec chain's encoder (``None``: records are stored as they are) and ``context``
        the context of a record by global index.
        """
        bins = self._bins
        order = self._order
        buffers = self._buffers
        lengths = self._lengths
        checksums = self._checksums
        current = self._current
        segments = self.segments
        limit = self._buffer_limit
        max_segment = self._max_segment_bytes
        hash_record = self._hash
        pack_frame = FRAME_HEADER.pack
        frame_size = FRAME_HEADER.size
        mask = FRAME_CHECK_MASK
        count = self.records
        spill_at = self._spilled_upto + _ENTRY_BUDGET // INDEX_ENTRY.size
        try:
            for record in records:
                view = (
                    record if type(record) is bytes else as_byte_view(record, first + count, count)
                )
                length = len(view)
                if length > MAX_RECORD_BYTES:
                    as_byte_view(record, first + count, count)  # raises RecordTooLargeError
                if encode is not None:
                    assert context is not None  # set together with encode
                    view = encode(view, context(first + count))
                    length = len(view)
                    if length > MAX_RECORD_BYTES:
                        as_byte_view(view, first + count, count)
                bin_id = slot if order is None else order[slot]
                slot += 1
                if slot == bins:
                    slot = 0
                checksum = hash_record(view)
                segment_id = current[bin_id]
                if segment_id < 0:
                    segment_id = self._open_segment(bin_id)
                segment = segments[segment_id]
                if segment.records and segment.size + frame_size + length > max_segment:
                    self._close_segment(bin_id)
                    segment_id = self._open_segment(bin_id)
                    segment = segments[segment_id]
                buffer = buffers[bin_id]
                buffer += pack_frame(length, length ^ mask, checksum)
                if length >= limit:
                    self._flush(bin_id)
                    assert segment.writer is not None  # the segment is open
                    segment.writer.write(view)
                else:
                    buffer += view
                    if len(buffer) >= limit:
                        self._flush(bin_id)
                segment.size += frame_size + length
                segment.records += 1
                lengths[bin_id].append(length)
                checksums[bin_id].append(checksum)
                count += 1
                if count >= spill_at:
                    self._spill_entries()
                    self._spilled_upto = count
                    spill_at = count + _ENTRY_BUDGET // INDEX_ENTRY.size
        finally:
            self.records = count

    def _open_segment(self, bin_id: int) -> int:
        if not self._dirs_made:
            self._storage.makedirs("", DATA_DIR, INDEX_DIR)
            self._dirs_made = True
        part = sum(1 for s in self.segments if s.bin == bin_id)
        name = (
            f"{DATA_DIR}/{self._session}-c{self._commit_number:04d}-b{bin_id:06d}-p{part:03d}.seg"
        )
        segment = _OpenSegment(name, bin_id, self._storage.open_writer(name, self._durable))
        self.segments.append(segment)
        segment_id = len(self.segments) - 1
        self._current[bin_id] = segment_id
        self._segment_starts[bin_id].append((len(self._lengths[bin_id]), segment_id))
        self._buffers[bin_id] += encode_segment_header(bin_id)
        segment.size = SEGMENT_HEADER.size
        return segment_id

    def _close_segment(self, bin_id: int) -> None:
        self._flush(bin_id)
        segment = self.segments[self._current[bin_id]]
        if segment.writer is not None:
            segment.writer.close()
            segment.writer = None

    def _flush(self, bin_id: int) -> None:
        buffer = self._buffers[bin_id]
        if buffer:
            writer = self.segments[self._current[bin_id]].writer
            assert writer is not None  # a buffered bin always has an open segment
            writer.write(buffer)
            buffer.clear()

    def _take_entries(self, bin_id: int) -> bytes:
        """Turn a bin's pending lengths and checksums into index entries, and clear them."""
        entries, self._cursor[bin_id] = bin_index_entries(
            np.frombuffer(self._lengths[bin_id], dtype=np.uint32),
            np.frombuffer(self._checksums[bin_id], dtype=np.uint64),
            self._cursor[bin_id],
            self._segment_starts[bin_id],
        )
        self._segment_starts[bin_id] = []
        self._lengths[bin_id] = array.array("I")
        self._checksums[bin_id] = array.array("Q")
        return entries

    def _spill_entries(self) -> None:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryFile(prefix="splitdataloader-index-")  # noqa: SIM115 - closed at commit or abort
        scratch = self._scratch
        position = scratch.seek(0, os.SEEK_END)
        for bin_id in range(self._bins):
            pending = self._take_entries(bin_id)
            if pending:
                scratch.write(pending)
                self._spills[bin_id].append((position, len(pending)))
                position += len(pending)

    def close_segments(self) -> None:
        """Write out the buffers and close every open segment (completing its upload)."""
        for bin_id in range(self._bins):
            if self._current[bin_id] >= 0:
                self._flush(bin_id)
        open_writers = [s.writer for s in self.segments if s.writer is not None]
        self._storage.close_writers(open_writers)
        for segment in self.segments:
            segment.writer = None

    def write_index(self) -> IndexRef:
        """Write the index part of the records, bin-major; after :meth:`close_segments`."""
        index_name = f"{INDEX_DIR}/{self._session}-c{self._commit_number:04d}.idx"
        writer = self._storage.open_writer(index_name, self._durable)
        try:
            writer.write(encode_index_header(self.records))
            for bin_id in range(self._bins):
                for position, length in self._spills[bin_id]:
                    assert self._scratch is not None  # spills imply a scratch file
                    self._scratch.seek(position)
                    writer.write(self._scratch.read(length))
                pending = self._take_entries(bin_id)
                if pending:
                    writer.write(pending)
            writer.close()
        except BaseException:
            writer.discard()
            raise
        return IndexRef(index_name, index_part_size(self.records))

    def segment_refs(self) -> tuple[SegmentRef, ...]:
        """The segments written, as the commit lists them."""
        return tuple(SegmentRef(s.name, s.bin, s.size, s.records) for s in self.segments)

    def discard(self) -> None:
        """Drop the open segments and delete the files written (the index part too)."""
        for segment in self.segments:
            if segment.writer is not None:
                segment.writer.discard()
                segment.writer = None
        self._storage.remove([s.name for s in self.segments])
        self._storage.remove([f"{INDEX_DIR}/{self._session}-c{self._commit_number:04d}.idx"])

    def close_scratch(self) -> None:
        """Delete the scratch file of spilled index entries, if there is one."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
