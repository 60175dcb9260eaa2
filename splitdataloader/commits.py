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

from .byte_layout import (
    INDEX_ENTRY,
    INDEX_ENTRY_DTYPE,
    INDEX_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    check_index_header,
)
from .errors import ChecksumMismatchError, CorruptDataError, TruncatedDataError
from .format import Commit
from .placement import Placement

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
        self._fds: list[int] = [-1] * len(self.segments)
        self._placement = Placement(commit, base)
        #: Index pages whose entries are all in place, and pages found damaged with
        #: which of their entries are still in place (a page in neither is not checked).
        self._pages_ok: set[int] = set()
        self._trusted: dict[int, NDArray[Any]] = {}
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
        start, end = self._page_range(page)
        if self._index_checked:
            data = self.storage.read_range(name, start, end)
        else:
            # The header is checked before any entry is trusted; both in one round trip.
            header, data = self.storage.read_ranges([name, name], [0, start], [_HEADER, end])
            check_index_header(header, self.records, self.storage.display(name))
            self._index_checked = True
        data = self._accept_page(page, data, end - start)
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
        ranges = [self._page_range(page) for page in pages]
        blobs = self.storage.read_ranges(
            [name] * len(pages), [r[0] for r in ranges], [r[1] for r in ranges], self.concurrency
        )
        capacity = max(self._page_capacity, len(pages))
        for page, (start, end), data in zip(pages, ranges, blobs):
            self._pages[page] = self._accept_page(page, data, end - start)
        while len(self._pages) > capacity:
            self._pages.popitem(last=False)

    def _page_range(self, page: int) -> tuple[int, int]:
        """Bytes of index page ``page``, with the entry before it (its entries are
        checked against that one)."""
        start = _HEADER + page * INDEX_PAGE_ENTRIES * _ENTRY
        end = min(start + INDEX_PAGE_ENTRIES * _ENTRY, self.commit.index.size)
        return (start - _ENTRY if page else start), end

    def _accept_page(self, page: int, data: bytes, expected: int) -> bytes:
        """Check a page read with :meth:`_page_range`; returns its own entries."""
        if len(data) != expected:
            raise self._truncated_index()
        table = np.frombuffer(data, INDEX_ENTRY_DTYPE)
        self._settle_page(page, table[1:] if page else table, table[:1] if page else None)
        return data[_ENTRY:] if page else data

    def _local_entries(self, first: int, count: int) -> NDArray[Any]:
        mapping = self._index_map if self._index_map is not None else self._open_index()
        # A copy (of bytes: quicker than of a record array): a view would pin the map
        # open while an error's traceback holds it.
        begin = _HEADER + _ENTRY * first
        entries: NDArray[Any] = np.frombuffer(
            mapping[begin : begin + _ENTRY * count], INDEX_ENTRY_DTYPE, count=count
        )
        return entries

    def _check_local_page(self, page: int) -> None:
        first = page * INDEX_PAGE_ENTRIES
        count = min(INDEX_PAGE_ENTRIES, self.records - first)
        table = self._local_entries(first - 1 if page else 0, count + (1 if page else 0))
        self._settle_page(page, table[1:] if page else table, table[:1] if page else None)

    def _settle_page(self, page: int, entries: NDArray[Any], before: NDArray[Any] | None) -> None:
        """Check that a page's entries are in place (:mod:`splitdataloader.placement`);
        if some are not, find out which of them still are, bin by bin."""
        first = page * INDEX_PAGE_ENTRIES
        if self._placement.page_ok(entries, first, before):
            self._pages_ok.add(page)
            return
        trusted = np.zeros(len(entries), dtype=bool)
        low, high = first, first + len(entries)
        bins = self._placement.bin_of(np.array([low, high - 1]))
        for bin_id in range(int(bins[0]), int(bins[1]) + 1):
            start = int(self.bin_base[bin_id])
            count = int(self.bin_counts[bin_id])
            if count == 0:
                continue
            if self.local:
                whole = self._local_entries(start, count)
            else:
                name = self.commit.index.name
                begin = _HEADER + start * _ENTRY
                data = self.storage.read_range(name, begin, begin + count * _ENTRY)
                if len(data) != count * _ENTRY:
                    raise self._truncated_index()
                whole = np.frombuffer(data, INDEX_ENTRY_DTYPE)
            placed = self._placement.trusted(whole, start)
            lo, hi = max(low, start), min(high, start + count)
            trusted[lo - low : hi - low] = placed[lo - start : hi - start]
        self._trusted[page] = trusted

    def check_entry(self, e: int) -> None:
        """Raise if entry ``e`` is out of place (checking its page first if need be)."""
        page = e // INDEX_PAGE_ENTRIES
        if page not in self._pages_ok and page not in self._trusted:
            if self.local:
                self._check_local_page(page)
            else:
                self._remote_page(page)
        trusted = self._trusted.get(page)
        if trusted is not None and not trusted[e % INDEX_PAGE_ENTRIES]:
            raise self.misplaced(e)

    def misplaced(self, e: int) -> CorruptDataError:
        """The error for entry ``e``, which is not where its record must be."""
        where = self.storage.display(self.commit.index.name)
        bin_id = int(self._placement.bin_of(np.array([e]))[0])
        j = self.record_of_entry(bin_id, e - int(self.bin_base[bin_id]))
        return CorruptDataError(
            f"record {self.first_record + j}: entry {e} of index part {where} is not where "
            f"bin {bin_id}'s records lie: the index is damaged",
            path=where,
            record=self.first_record + j,
        )

    def _truncated_index(self) -> TruncatedDataError:
        where = self.storage.display(self.commit.index.name)
        return TruncatedDataError(f"index part {where} is shorter than its commit says", path=where)

    def entry(self, j: int) -> tuple[int, int, int, int]:
        """(segment, length, offset, checksum) of commit-local record ``j``."""
        q, t = divmod(j + self._shift, self.bins)
        e = self._slot_adjust[t] + q
        if self.local:
            mapping = self._index_map if self._index_map is not None else self._open_index()
            if e // INDEX_PAGE_ENTRIES not in self._pages_ok:
                self.check_entry(e)
            return _unpack_entry(mapping, _HEADER + _ENTRY * e)
        page, within = divmod(e, INDEX_PAGE_ENTRIES)
        data = self._remote_page(page)
        if page not in self._pages_ok:
            self.check_entry(e)
        return _unpack_entry(data, within * _ENTRY)

    def entries_at(self, records: NDArray[Any]) -> NDArray[Any]:
        """Index entries of many commit-local records at once (a structured array)."""
        q, t = np.divmod(records + self._shift, self.bins)
        numbers = np.asarray(self._slot_adjust, dtype=np.int64)[t] + q
        if self.local:
            mapping = self._index_map if self._index_map is not None else self._open_index()
            for page in np.unique(numbers // INDEX_PAGE_ENTRIES).tolist():
                if page not in self._pages_ok and page not in self._trusted:
                    self._check_local_page(page)
            self._check_numbers(numbers)
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
        self._check_numbers(numbers)
        return out

    def _check_numbers(self, numbers: NDArray[Any]) -> None:
        """Raise for the first entry of ``numbers`` (in checked pages) out of place."""
        for page in np.unique(numbers // INDEX_PAGE_ENTRIES).tolist():
            if page in self._trusted:
                mine = numbers[numbers // INDEX_PAGE_ENTRIES == page]
                bad = mine[~self._trusted[page][mine % INDEX_PAGE_ENTRIES]]
                if bad.size:
                    raise self.misplaced(int(bad[0]))

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
        placed = self._placement.trusted(entries, first)
        if not placed.all():
            raise self.misplaced(first + int(np.flatnonzero(~placed)[0]))
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
        lengths = entries["length"].astype(np.uint64)
        limits = sizes[segment_ids]
        # ``offset + length`` could wrap around 2**64: compare against ``size - length``
        # instead, in rows where ``length <= size`` (the others are flagged already).
        bad = (
            (bins[segment_ids] != bin_id)
            | (lengths > limits)
            | (entries["offset"] > limits - lengths)
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
        slot_adjust = self._slot_adjust
        pages_ok = self._pages_ok
        check_entry = self.check_entry
        page_entries = INDEX_PAGE_ENTRIES
        descriptors = self._fds
        sizes = [ref.size for ref in self.segments]
        hash_record = self.hash_record
        open_descriptor = self._open_fd
        unpack = _unpack_entry
        pread = _pread
        minimum = _MIN_OFFSET

        def read_local(j: int) -> bytes:
            q, t = divmod(j + shift, bins)
            e = slot_adjust[t] + q
            if e // page_entries not in pages_ok:
                check_entry(e)
            # 32 and 24: the index header and entry sizes, fixed by the format.
            segment, length, offset, checksum = unpack(mapping, 32 + 24 * e)
            try:
                descriptor = descriptors[segment]
            except IndexError:
                raise self.bad_entry(j) from None
            if offset < minimum or offset + length > sizes[segment]:
                raise self.outside(j, segment, offset, length)
            if descriptor < 0:
                descriptor = open_descriptor(segment)
            data = pread(descriptor, length, offset)
            if len(data) != length:
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
            ref = self.segments[segment]
        except IndexError:
            raise self.bad_entry(j) from None
        if offset < _MIN_OFFSET or offset + length > ref.size:
            raise self.outside(j, segment, offset, length)
        name = ref.name
        data = self.storage.read_range(name, offset, offset + length)
        if len(data) != length:
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

    def outside(self, j: int, segment: int, offset: int, length: int) -> CorruptDataError:
        """The error for an index entry whose bytes lie outside its segment."""
        where = self.storage.display(self.commit.index.name)
        ref = self.segments[segment]
        return CorruptDataError(
            f"record {self.first_record + j}: index part {where} points at bytes "
            f"{offset}-{offset + length} of {ref.name}, outside its {ref.size} bytes",
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
