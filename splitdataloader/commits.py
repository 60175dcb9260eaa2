"""Reading one commit of a version-2 dataset: index look-ups and segment access.

Owns the per-commit read path: mapping a commit-local record number to its index entry
(O(1): arithmetic on the round-robin layout, then one fixed-width entry), reading and
verifying the record's bytes, and handing out a bin's entries and segment contents for
iteration. Local files are memory-mapped or read with ``pread``; other filesystems use
cached ranged reads of index pages and ranged reads of records.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ChecksumMismatchError, CorruptDataError, TruncatedDataError
from .format import (
    INDEX_ENTRY,
    INDEX_ENTRY_DTYPE,
    INDEX_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    Commit,
    check_index_header,
)

if TYPE_CHECKING:
    from .storage import Storage

#: Index entries per cached page on non-local filesystems (96 KiB per page).
INDEX_PAGE_ENTRIES = 4096
_ENTRY = INDEX_ENTRY.size
_HEADER = INDEX_HEADER.size
_MIN_OFFSET = SEGMENT_HEADER.size
_unpack_entry = INDEX_ENTRY.unpack_from

#: ``(name, start, end)``: a byte range of a file, by name relative to the dataset root.
ByteRange = tuple[str, int, int]
#: Reads a :data:`ByteRange` (``storage.read_range`` or a read-ahead's ``read``).
Fetch = Callable[[str, int, int], bytes]
_pread = os.pread


def not_a_segment(where: str) -> CorruptDataError:
    """The error for a file whose header is not a version-2 segment's."""
    return CorruptDataError(f"{where} does not start with a version-2 segment header", path=where)


class HandleCache:
    """Bounds the number of open memory maps and descriptors across a loader's commits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._opened: deque[tuple[CommitReader, int]] = deque()

    def opened(self, reader: CommitReader, segment: int) -> None:
        self._opened.append((reader, segment))
        while len(self._opened) > self.capacity:
            old_reader, old_segment = self._opened.popleft()
            old_reader.release(old_segment)

    def clear(self) -> None:
        while self._opened:
            reader, segment = self._opened.popleft()
            reader.release(segment)


class CommitReader:
    """Random access to the records of one commit, and its bins for iteration."""

    def __init__(  # noqa: PLR0917 - internal constructor, called from one place
        self,
        storage: Storage,
        commit: Commit,
        first_record: int,
        checksum: Callable[[Any], int] | None,
        handles: HandleCache,
        index_cache_pages: int = 32,
        decoder: Callable[[bytes, int], bytes] | None = None,
    ) -> None:
        self.storage = storage
        self.commit = commit
        self.first_record = first_record
        self.records = commit.records
        self.segments = commit.segments
        self.hash_record = checksum
        #: ``(stored bytes, global index) -> record`` when the dataset has codecs.
        self.decoder = decoder
        self._handles = handles
        layout = commit.layout
        self.bins = layout.bins
        self.bin_counts = layout.bin_counts(commit.records)
        base = np.zeros(self.bins + 1, dtype=np.int64)
        np.cumsum(self.bin_counts, out=base[1:])
        self.bin_base = base
        order = layout.order if layout.order is not None else range(self.bins)
        self._shift = layout.start
        # Entry of record j: slot_adjust[t] + q where (q, t) = divmod(j + start, bins).
        self._slot_adjust = [
            int(base[order[t]]) - (1 if t < layout.start else 0) for t in range(self.bins)
        ]
        self._slot_byte = [_HEADER + _ENTRY * adjust for adjust in self._slot_adjust]
        self._fds: list[int] = [-1] * len(self.segments)
        self._index_map: mmap.mmap | None = None
        self._reader: Callable[[int], bytes] | None = None
        self._index_checked = False
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._page_capacity = index_cache_pages
        self.local = storage.is_local
        self.min_offset = _MIN_OFFSET
        #: Most concurrent requests for batched remote reads.
        self.concurrency: int | None = None

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        for segment in range(len(self.segments)):
            self.release(segment)
        self._reader = None
        if self._index_map is not None:
            self._index_map.close()
            self._index_map = None
        self._pages.clear()

    def release(self, segment: int) -> None:
        """Close the descriptor of ``segment``, if open."""
        descriptor = self._fds[segment]
        if descriptor >= 0:
            self._fds[segment] = -1
            os.close(descriptor)

    # ---------------------------------------------------------------- index

    def _open_index(self) -> mmap.mmap:
        name = self.commit.index.name
        mapping = self.storage.map_file(name, self.commit.index.size)
        check_index_header(mapping[:_HEADER], self.records, self.storage.display(name))
        self._index_map = mapping
        return mapping

    def _check_remote_header(self, fetch: Fetch | None = None) -> None:
        """Validate the index part's header once, before its entries are trusted."""
        if not self._index_checked:
            name = self.commit.index.name
            header = (fetch or self.storage.read_range)(name, 0, _HEADER)
            check_index_header(header, self.records, self.storage.display(name))
            self._index_checked = True

    def header_range(self) -> ByteRange | None:
        """The index header's byte range, while it still has to be checked (remote)."""
        if self.local or self._index_checked:
            return None
        return (self.commit.index.name, 0, _HEADER)

    def index_range(self) -> ByteRange:
        """The byte range of the whole index part."""
        return (self.commit.index.name, 0, self.commit.index.size)

    def bin_entries_range(self, bin_id: int) -> ByteRange | None:
        """The byte range of the index part holding ``bin_id``'s entries (None if empty)."""
        if bin_id >= self.bins or self.bin_counts[bin_id] == 0:
            return None
        start = _HEADER + int(self.bin_base[bin_id]) * _ENTRY
        return (self.commit.index.name, start, start + int(self.bin_counts[bin_id]) * _ENTRY)

    def bin_segment_ranges(self, bin_id: int) -> Iterator[ByteRange]:
        """Whole-segment byte ranges of ``bin_id`` in this commit, in the order iterated."""
        for ref in self.segments:
            if ref.bin == bin_id:
                yield (ref.name, 0, ref.size)

    def _remote_page(self, page: int) -> bytes:
        cached = self._pages.get(page)
        if cached is not None:
            self._pages.move_to_end(page)
            return cached
        name = self.commit.index.name
        start = _HEADER + page * INDEX_PAGE_ENTRIES * _ENTRY
        end = min(start + INDEX_PAGE_ENTRIES * _ENTRY, self.commit.index.size)
        if self._index_checked:
            data = self.storage.read_range(name, start, end)
        else:
            # The header is checked before any entry is trusted; both in one round trip.
            header, data = self.storage.read_ranges([name, name], [0, start], [_HEADER, end])
            check_index_header(header, self.records, self.storage.display(name))
            self._index_checked = True
        if len(data) != end - start:
            raise self._truncated_index()
        self._pages[page] = data
        if len(self._pages) > self._page_capacity:
            self._pages.popitem(last=False)
        return data

    def _fetch_pages(self, pages: list[int]) -> None:
        """Read missing index pages all at once (concurrently) into the page cache."""
        if len(pages) < 2:
            return
        self._check_remote_header()
        name = self.commit.index.name
        size = self.commit.index.size
        starts = [_HEADER + page * INDEX_PAGE_ENTRIES * _ENTRY for page in pages]
        ends = [min(start + INDEX_PAGE_ENTRIES * _ENTRY, size) for start in starts]
        blobs = self.storage.read_ranges([name] * len(pages), starts, ends, self.concurrency)
        capacity = max(self._page_capacity, len(pages))
        for page, start, end, data in zip(pages, starts, ends, blobs):
            if len(data) != end - start:
                raise self._truncated_index()
            self._pages[page] = data
        while len(self._pages) > capacity:
            self._pages.popitem(last=False)

    def _truncated_index(self) -> TruncatedDataError:
        where = self.storage.display(self.commit.index.name)
        return TruncatedDataError(f"index part {where} is shorter than its commit says", path=where)

    def entry(self, j: int) -> tuple[int, int, int, int]:
        """(segment, length, offset, checksum) of commit-local record ``j``."""
        q, t = divmod(j + self._shift, self.bins)
        e = self._slot_adjust[t] + q
        if self.local:
            mapping = self._index_map if self._index_map is not None else self._open_index()
            return _unpack_entry(mapping, _HEADER + _ENTRY * e)
        page, within = divmod(e, INDEX_PAGE_ENTRIES)
        return _unpack_entry(self._remote_page(page), within * _ENTRY)

    def entries_at(self, records: NDArray[Any]) -> NDArray[Any]:
        """Index entries of many commit-local records at once (a structured array)."""
        q, t = np.divmod(records + self._shift, self.bins)
        numbers = np.asarray(self._slot_adjust, dtype=np.int64)[t] + q
        if self.local:
            mapping = self._index_map if self._index_map is not None else self._open_index()
            table = np.frombuffer(mapping, INDEX_ENTRY_DTYPE, count=self.records, offset=_HEADER)
            result: NDArray[Any] = table[numbers]
            return result
        pages, within = np.divmod(numbers, INDEX_PAGE_ENTRIES)
        out = np.empty(len(numbers), dtype=INDEX_ENTRY_DTYPE)
        self._fetch_pages([p for p in np.unique(pages).tolist() if p not in self._pages])
        for page in np.unique(pages).tolist():
            picked = pages == page
            chunk = np.frombuffer(self._remote_page(page), INDEX_ENTRY_DTYPE)
            out[picked] = chunk[within[picked]]
        return out

    def bin_entries(self, bin_id: int, fetch: Fetch | None = None) -> NDArray[Any]:
        """The index entries of ``bin_id`` in this commit, in written order (a copy).

        ``fetch(name, start, end)`` reads the bytes (default: the storage, directly).
        """
        if bin_id >= self.bins:
            return np.empty(0, dtype=INDEX_ENTRY_DTYPE)
        first = int(self.bin_base[bin_id])
        count = int(self.bin_counts[bin_id])
        if count == 0:
            return np.empty(0, dtype=INDEX_ENTRY_DTYPE)
        name = self.commit.index.name
        self._check_remote_header(fetch)
        start = _HEADER + first * _ENTRY
        data = (fetch or self.storage.read_range)(name, start, start + count * _ENTRY)
        if len(data) != count * _ENTRY:
            raise self._truncated_index()
        entries = np.frombuffer(data, dtype=INDEX_ENTRY_DTYPE)
        self._check_entries(entries, bin_id)
        return entries

    def _check_entries(self, entries: NDArray[Any], bin_id: int) -> None:
        segment_ids = entries["segment"]
        where = self.storage.display(self.commit.index.name)
        if segment_ids.size and int(segment_ids.max()) >= len(self.segments):
            raise CorruptDataError(
                f"index part {where} names a segment this commit does not have",
                path=where,
            )
        sizes = np.fromiter((s.size for s in self.segments), dtype=np.uint64)
        bins = np.fromiter((s.bin for s in self.segments), dtype=np.int64)
        ends = entries["offset"] + entries["length"]
        bad = (
            (bins[segment_ids] != bin_id)
            | (ends > sizes[segment_ids])
            | (entries["offset"] < SEGMENT_HEADER.size)
        )
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise CorruptDataError(
                f"index part {where}: entry {k} of bin {bin_id} points outside its segment",
                path=where,
            )

    # ---------------------------------------------------------------- records

    def read(self, j: int) -> bytes:
        """The verified stored bytes of commit-local record ``j``."""
        read = self._reader if self._reader is not None else self.record_reader()
        return read(j)

    def record_reader(self) -> Callable[[int], bytes]:
        """A function ``j -> bytes`` specialised for this commit: the hot path of ``loader[i]``.

        Everything it needs is bound as closure variables, so a look-up costs a few local
        loads, one ``unpack_from`` on the mapped index and one ``pread``. It stays valid
        until :meth:`close`.
        """
        if self._reader is not None:
            return self._reader
        if not self.local:
            self._reader = self._with_decoder(self._read_remote)
            return self._reader
        mapping = self._index_map if self._index_map is not None else self._open_index()
        shift = self._shift
        bins = self.bins
        slot_byte = self._slot_byte
        descriptors = self._fds
        hash_record = self.hash_record
        open_descriptor = self._open_fd
        unpack = _unpack_entry
        pread = _pread
        minimum = _MIN_OFFSET

        def read_local(j: int) -> bytes:
            q, t = divmod(j + shift, bins)
            # 24 = INDEX_ENTRY.size, fixed by the format.
            segment, length, offset, checksum = unpack(mapping, slot_byte[t] + 24 * q)
            try:
                descriptor = descriptors[segment]
            except IndexError:
                raise self.bad_entry(j) from None
            if descriptor < 0:
                descriptor = open_descriptor(segment)
            data = pread(descriptor, length, offset)
            if len(data) != length or offset < minimum:
                raise self.short_error(j, self.segments[segment].name, offset)
            if hash_record is not None and hash_record(data) != checksum:
                raise self.mismatch(j, self.segments[segment].name, offset)
            return data

        self._reader = self._with_decoder(read_local)
        return self._reader

    def _with_decoder(self, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
        decoder = self.decoder
        if decoder is None:
            return read
        first = self.first_record

        def read_decoded(j: int) -> bytes:
            return decoder(read(j), first + j)

        return read_decoded

    def _read_remote(self, j: int) -> bytes:
        segment, length, offset, checksum = self.entry(j)
        try:
            name = self.segments[segment].name
        except IndexError:
            raise self.bad_entry(j) from None
        data = self.storage.read_range(name, offset, offset + length)
        if len(data) != length or offset < _MIN_OFFSET:
            raise self.short_error(j, name, offset)
        if self.hash_record is not None and self.hash_record(data) != checksum:
            raise self.mismatch(j, name, offset)
        return data

    def read_span(self, segment: int, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a segment (local: through the cached descriptor)."""
        if not self.local:
            return self.storage.read_range(self.segments[segment].name, start, end)
        descriptor = self._fds[segment]
        if descriptor < 0:
            descriptor = self._open_fd(segment)
        return _pread(descriptor, end - start, start)

    def _open_fd(self, segment: int) -> int:
        name = self.segments[segment].name
        descriptor = self.storage.open_fd(name)
        if _pread(descriptor, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:
            os.close(descriptor)
            raise not_a_segment(self.storage.display(name))
        self._fds[segment] = descriptor
        self._handles.opened(self, segment)
        return descriptor

    def bad_entry(self, j: int) -> CorruptDataError:
        where = self.storage.display(self.commit.index.name)
        return CorruptDataError(
            f"record {self.first_record + j}: index part {where} names a segment this "
            f"commit does not have",
            path=where,
            record=self.first_record + j,
        )

    def short_error(self, j: int, name: str, offset: int) -> TruncatedDataError:
        where = self.storage.display(name)
        return TruncatedDataError(
            f"record {self.first_record + j}: {where} ends before the record at offset {offset}",
            path=where,
            record=self.first_record + j,
            offset=offset,
        )

    def mismatch(self, j: int | None, name: str, offset: int) -> ChecksumMismatchError:
        """The error for a checksum mismatch of record ``j`` (commit-local, if known)."""
        where = self.storage.display(name)
        record = None if j is None else self.first_record + j
        label = "a record" if record is None else f"record {record}"
        return ChecksumMismatchError(
            f"{label}: the bytes at offset {offset} of {where} do not match their checksum",
            path=where,
            record=record,
            offset=offset,
        )

    def record_of_entry(self, bin_id: int, position: int) -> int:
        """The commit-local record number of the ``position``-th record of ``bin_id``."""
        layout = self.commit.layout
        slot = bin_id if layout.order is None else layout.order.index(bin_id)
        first = slot - layout.start if slot >= layout.start else slot + self.bins - layout.start
        return first + position * self.bins
