"""Walking a version-2 dataset's stored files and checking them, record by record.

Owns the checks behind :mod:`splitdataloader.verify` and :mod:`splitdataloader.repair`:
reading a segment's frames window by window (they are self-delimiting, ``docs/format.md``
§5), comparing each frame with its payload checksum and its index entry, and the counts with
the commit's layout. Every problem is collected as a :class:`Problem` naming the file, the
record and the reason; nothing is raised for damaged data, and nothing is written. A
splitdataloader 0.0.1 dataset is checked by :mod:`splitdataloader.checking_legacy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .byte_layout import (
    FRAME_CHECK_MASK,
    FRAME_HEADER,
    INDEX_ENTRY,
    INDEX_ENTRY_DTYPE,
    INDEX_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    check_index_header,
)
from .checksums import checksum_function
from .errors import DatasetFormatError, KeyUnavailableError, SplitDataError
from .format import Commit, Manifest, RoundRobinLayout
from .readahead import ReadAhead
from .storage import FileInfo, Storage

__all__ = [
    "DEFAULT_MAX_PROBLEMS",
    "READ_AHEAD_BYTES",
    "WINDOW_BYTES",
    "Checker",
    "CommitCheck",
    "Counters",
    "Frames",
    "Problem",
    "ProblemList",
    "ProgressCallback",
    "committed_records",
    "read_ahead",
]

#: Bytes of a segment read at once.
WINDOW_BYTES = 16 << 20
#: Bytes of reads kept in flight ahead of the check on remote storage.
READ_AHEAD_BYTES = 64 << 20
#: Problems kept in a report; the rest are counted.
DEFAULT_MAX_PROBLEMS = 1000

#: ``progress(records, nbytes)``: called with the records and bytes checked since the
#: previous call.
ProgressCallback = Callable[[int, int], object]
Fetch = Callable[[str, int, int], bytes]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes
    ----------
    file
        The file concerned, relative to the dataset root (``manifest.json`` for the
        dataset as a whole).
    record
        The global index of the record concerned, or ``None`` when the problem is not
        about one record (a missing index part, a short file).
    reason
        What is wrong, in words.
    offset
        The byte offset in ``file``, when one is concerned.
    repairable
        ``True`` when :func:`repair` can fix it (an index part lost or disagreeing with
        intact frames); damaged record bytes are not.
    """

    file: str
    record: int | None
    reason: str
    offset: int | None = None
    repairable: bool = False

    def __str__(self) -> str:
        where = self.file if self.offset is None else f"{self.file} at offset {self.offset}"
        what = "" if self.record is None else f"record {self.record}: "
        return f"{what}{where}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        return dataclasses.asdict(self)


class ProblemList:
    """Collects problems up to a limit, counting all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.found: list[Problem] = []
        self.count = 0

    def add(self, problem: Problem) -> None:
        self.count += 1
        if len(self.found) < self.limit:
            self.found.append(problem)


@dataclass
class Counters:
    """Records, bytes and files checked (``total``: records the dataset holds)."""

    records: int = 0
    nbytes: int = 0
    files: int = 0
    total: int = 0


class Frames:
    """The frames of one segment, read window by window through ``fetch``.

    Iterating yields ``(payload offset, length, frame checksum, payload)``; the payload is a
    view of a buffer that the next item may replace. It stops at the end of the segment,
    or at the first frame that cannot be delimited, recording why in :attr:`error`.
    """

    def __init__(self, fetch: Fetch, name: str, limit: int, window: int) -> None:
        self.fetch = fetch
        self.name = name
        self.limit = limit
        self.window = window
        self.error: tuple[int, str] | None = None
        self.bin: int | None = None
        self.reserved = 0
        self.nbytes = 0
        self._buffer = b""
        self._base = 0  # file offset of the buffer's first byte
        self._read = 0  # file offset of the next window

    def _fill(self, position: int, need: int) -> int:
        """Make the buffer hold ``need`` bytes from ``position`` (as far as the file has
        them); returns that position in the buffer, which may have been shifted."""
        if len(self._buffer) - position >= need:
            return position
        chunks = [self._buffer[position:]]
        have = len(chunks[0])
        self._base += position
        while have < need and self._read < self.limit:
            end = min(self._read + self.window, self.limit)
            data = self.fetch(self.name, self._read, end)
            self.nbytes += len(data)
            if len(data) < end - self._read:
                self.limit = self._read + len(data)  # shorter than listed: it changed
            self._read += len(data)
            if not data:
                break
            chunks.append(data)
            have += len(data)
        chunks = [chunk for chunk in chunks if chunk]
        self._buffer = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return 0

    def header(self) -> bool:
        """Read and check the segment header; False (with :attr:`error`) when it is bad."""
        self._fill(0, SEGMENT_HEADER.size)
        if len(self._buffer) < SEGMENT_HEADER.size:
            self.error = (0, "too short for a segment header")
            return False
        magic, bin_id, reserved = SEGMENT_HEADER.unpack_from(self._buffer)
        if magic != SEGMENT_MAGIC:
            self.error = (0, "does not start with a version-2 segment header")
            return False
        self.bin = bin_id
        self.reserved = reserved
        return True

    def __iter__(self) -> Iterator[tuple[int, int, int, memoryview]]:
        # The hot loop of a check: buffer, its file offset and the limit live in locals,
        # refreshed only when a window is read.
        unpack = FRAME_HEADER.unpack_from
        frame_size = FRAME_HEADER.size
        mask = FRAME_CHECK_MASK
        position = SEGMENT_HEADER.size
        buffer, base, limit = self._buffer, self._base, self.limit
        view = memoryview(buffer)
        end_of_buffer = len(buffer)
        while base + position < limit:
            if end_of_buffer - position < frame_size:
                position = self._fill(position, frame_size)
                buffer, base, limit = self._buffer, self._base, self.limit
                view, end_of_buffer = memoryview(buffer), len(buffer)
                if end_of_buffer - position < frame_size:
                    self.error = (base + position, "ends inside a frame header")
                    return
            length, check, checksum = unpack(buffer, position)
            if length ^ mask != check:
                self.error = (
                    base + position,
                    "damaged frame header: its length fails the length check",
                )
                return
            start = position + frame_size
            end = start + length
            if base + end > limit:
                self.error = (base + position, f"a frame of {length} bytes runs past the end")
                return
            if end > end_of_buffer:
                position = self._fill(position, frame_size + length)
                buffer, base, limit = self._buffer, self._base, self.limit
                view, end_of_buffer = memoryview(buffer), len(buffer)
                start = position + frame_size
                end = start + length
                if end > end_of_buffer:
                    self.error = (base + position, "the file ends inside a frame")
                    return
            yield base + start, length, checksum, view[start:end]
            position = end


def bin_slots(layout: RoundRobinLayout) -> list[int]:
    """The first commit-local record of each bin (record ``first + p * bins`` is its
    ``p``-th)."""
    bins = layout.bins
    order = layout.order if layout.order is not None else tuple(range(bins))
    first = [0] * bins
    for slot, bin_id in enumerate(order):
        first[bin_id] = slot - layout.start if slot >= layout.start else slot + bins - layout.start
    return first


@dataclass
class _Place:
    """Where a bin's records are: its commit, its first record and index entry."""

    commit: Commit
    bin: int
    first_record: int
    step: int
    first_entry: int
    position: int = 0


@dataclass
class CommitCheck:
    """The outcome of checking one commit."""

    index_damaged: bool = False
    frames_intact: bool = True


class Checker:
    """Checks a version-2 dataset's commits; shared by :func:`verify` and :func:`repair`."""

    def __init__(
        self,
        storage: Storage,
        manifest: Manifest,
        sizes: Mapping[str, FileInfo],
        problems: ProblemList,
        *,
        decode: Callable[[bytes, int], bytes] | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.storage = storage
        self.manifest = manifest
        self.sizes = sizes
        self.problems = problems
        self.decode = decode
        self.progress = progress
        self.counters = Counters()
        #: With a decoder: fail when a key is missing, instead of skipping the decoding.
        self.decode_required = False
        self.notes: list[str] = []
        self.hash = checksum_function(manifest.checksum)
        self.fetch: Fetch = storage.read_range

    def readable_size(self, name: str, declared: int, what: str) -> int | None:
        """How many bytes of ``name`` can be read (``None``: missing), reporting a size
        other than ``declared``."""
        info = self.sizes.get(name)
        if info is None:
            return None
        if info.size < declared:
            self.problems.add(
                Problem(name, None, f"{what} is {info.size} bytes; its commit says {declared}")
            )
            return info.size
        if info.size > declared:
            self.problems.add(
                Problem(
                    name,
                    None,
                    f"{what} is {info.size} bytes, {info.size - declared} more than its "
                    f"commit says",
                )
            )
        return declared

    def plan(self, commits: Sequence[tuple[int, Commit, int]]) -> Iterator[tuple[str, int, int]]:
        """The reads :meth:`check_commit` makes, in order, for a read-ahead."""
        for _, commit, _ in commits:
            index = self.sizes.get(commit.index.name)
            index_ok = index is not None and index.size == commit.index.size
            if index_ok:
                yield (commit.index.name, 0, INDEX_HEADER.size)
            counts = commit.layout.bin_counts(commit.records)
            base = np.concatenate(([0], np.cumsum(counts)))
            for bin_id in range(commit.bins):
                if counts[bin_id] == 0:
                    continue
                if index_ok:
                    start = INDEX_HEADER.size + int(base[bin_id]) * INDEX_ENTRY.size
                    yield (
                        commit.index.name,
                        start,
                        start + int(counts[bin_id]) * INDEX_ENTRY.size,
                    )
                for segment in commit.segments:
                    if segment.bin != bin_id or segment.name not in self.sizes:
                        continue
                    limit = min(segment.size, self.sizes[segment.name].size)
                    for lo in range(0, limit, WINDOW_BYTES):
                        yield (segment.name, lo, min(lo + WINDOW_BYTES, limit))

    def index_usable(self, commit: Commit) -> bool:
        """Check an index part's presence, size and header; report and return False if bad."""
        name = commit.index.name
        info = self.sizes.get(name)
        if info is None or info.size != commit.index.size:
            reason = (
                "index part is missing"
                if info is None
                else f"index part is {info.size} bytes; its commit says {commit.index.size}"
            )
            self.problems.add(Problem(name, None, reason, repairable=True))
            return False
        header = self.fetch(name, 0, INDEX_HEADER.size)
        self.counters.nbytes += len(header)
        try:
            check_index_header(header, commit.records, self.storage.display(name))
        except DatasetFormatError as err:
            self.problems.add(Problem(name, None, str(err), repairable=True))
            return False
        if INDEX_HEADER.unpack_from(header)[4]:
            self.problems.add(
                Problem(name, None, "the reserved field of its header is not 0", 24, True)
            )
            return False
        return True

    def bin_entries(self, commit: Commit, start: int, count: int) -> tuple[list[int], ...]:
        name = commit.index.name
        first = INDEX_HEADER.size + start * INDEX_ENTRY.size
        data = self.fetch(name, first, first + count * INDEX_ENTRY.size)
        self.counters.nbytes += len(data)
        if len(data) != count * INDEX_ENTRY.size:
            raise _ShortIndexError
        entries = np.frombuffer(data, dtype=INDEX_ENTRY_DTYPE)
        return (
            entries["segment"].tolist(),
            entries["length"].tolist(),
            entries["offset"].tolist(),
            entries["checksum"].tolist(),
        )

    def check_commit(
        self,
        commit: Commit,
        first_record: int,
        rebuild: Callable[[int, int, int, int], None] | None = None,
    ) -> CommitCheck:
        """Check one commit; with ``rebuild``, hand it ``(segment, length, offset, checksum)``
        of every frame, bin by bin (bin-major, the index part's order)."""
        result = CommitCheck()
        self.counters.files += 1
        index_ok = rebuild is None and self.index_usable(commit)
        result.index_damaged = rebuild is None and not index_ok
        layout = commit.layout
        counts = layout.bin_counts(commit.records).tolist()
        slots = bin_slots(layout)
        base = 0
        for bin_id in range(layout.bins):
            count = counts[bin_id]
            if count == 0:
                continue
            entries: tuple[list[int], ...] | None = None
            if index_ok:
                try:
                    entries = self.bin_entries(commit, base, count)
                except _ShortIndexError:
                    self.problems.add(
                        Problem(commit.index.name, None, "shorter than its commit says", None, True)
                    )
                    index_ok = False
                    result.index_damaged = True
            place = _Place(
                commit=commit,
                bin=bin_id,
                first_record=first_record + slots[bin_id],
                step=layout.bins,
                first_entry=base,
            )
            base += count
            for segment_id, segment in enumerate(commit.segments):
                if segment.bin != bin_id:
                    continue
                damaged = self.check_segment(place, segment_id, entries, rebuild, result)
                result.frames_intact &= not damaged
                place.position += segment.records
        return result

    def check_segment(
        self,
        place: _Place,
        segment_id: int,
        entries: tuple[list[int], ...] | None,
        rebuild: Callable[[int, int, int, int], None] | None,
        result: CommitCheck,
    ) -> bool:
        """Walk one segment's frames; True if its frames cannot all be delimited."""
        segment = place.commit.segments[segment_id]
        name, records = segment.name, segment.records
        first, step, position = place.first_record, place.step, place.position
        problems = self.problems
        self.counters.files += 1
        limit = self.readable_size(name, segment.size, "segment")
        if limit is None:
            which = "its record is" if records == 1 else f"its {records} records are"
            problems.add(
                Problem(
                    name,
                    first + position * step,
                    f"segment is missing: {which} lost (this one and every {step}th after it)"
                    if records > 1 and step > 1
                    else f"segment is missing: {which} lost",
                )
            )
            return True
        frames = Frames(self.fetch, name, limit, WINDOW_BYTES)
        if not frames.header():
            assert frames.error is not None  # set by header()
            problems.add(Problem(name, None, frames.error[1], frames.error[0]))
            self.counters.nbytes += frames.nbytes
            return True
        if frames.bin != place.bin:
            problems.add(Problem(name, None, f"its header says bin {frames.bin}, not {place.bin}"))
        if frames.reserved:
            problems.add(Problem(name, None, "the reserved field of its header is not 0", 12))
        hash_record = self.hash
        decode = self.decode
        segment_of: list[int] = []
        if entries is not None:
            segment_of, length_of, offset_of, checksum_of = entries
        known = len(segment_of)
        count = 0
        reported = 0
        checked_bytes = 0
        for offset, length, checksum, payload in frames:
            p = position + count
            count += 1
            if rebuild is not None:
                rebuild(segment_id, length, offset, checksum)
            intact = hash_record(payload) == checksum
            if not intact:
                problems.add(
                    Problem(
                        name,
                        first + p * step,
                        "the record's bytes do not match their checksum",
                        offset,
                    )
                )
            if p < known and (
                segment_of[p] != segment_id
                or offset_of[p] != offset
                or length_of[p] != length
                or checksum_of[p] != checksum
            ):
                result.index_damaged = True
                assert entries is not None  # p < known implies entries
                problems.add(
                    _entry_problem(place, entries, p, (segment_id, length, offset, checksum))
                )
            if decode is not None and intact:
                try:
                    decode(bytes(payload), first + p * step)
                except KeyUnavailableError as err:
                    # Not the record's fault: without the key nothing can be decoded.
                    if self.decode_required:
                        raise
                    self.notes.append(f"records were not decoded: {err}")
                    self.decode = decode = None
                except SplitDataError as err:
                    problems.add(
                        Problem(name, first + p * step, f"cannot be decoded: {err}", offset)
                    )
            if count - reported >= 4096:
                self.advance(count - reported, frames.nbytes - checked_bytes)
                reported, checked_bytes = count, frames.nbytes
        self.advance(count - reported, frames.nbytes - checked_bytes)
        if frames.error is not None:
            where, reason = frames.error
            lost = max(0, records - count)
            problems.add(
                Problem(
                    name,
                    first + (position + count) * step if lost else None,
                    f"{reason}; the {lost} records from here to the end of the segment "
                    f"cannot be read",
                    where,
                )
            )
            return True
        if count != records:
            problems.add(
                Problem(name, None, f"holds {count} frames; its commit says {records} records")
            )
            return True
        return False

    def advance(self, records: int, nbytes: int) -> None:
        self.counters.records += records
        self.counters.nbytes += nbytes
        if self.progress is not None and (records or nbytes):
            self.progress(records, nbytes)


def _entry_problem(
    place: _Place, stored: tuple[list[int], ...], p: int, frame: tuple[int, int, int, int]
) -> Problem:
    """The problem of an index entry that differs from the frame it should describe."""
    names = ("segment", "length", "offset", "checksum")
    differs = [what for what, column, actual in zip(names, stored, frame) if column[p] != actual]
    segment = place.commit.segments[frame[0]].name
    entry = place.first_entry + p
    return Problem(
        place.commit.index.name,
        place.first_record + p * place.step,
        f"entry {entry} differs from the record's frame at offset {frame[2]} of {segment} "
        f"({', '.join(differs)})",
        INDEX_HEADER.size + INDEX_ENTRY.size * entry,
        repairable=True,
    )


class _ShortIndexError(Exception):
    """An index part ended before a bin's entries (internal signal)."""


def committed_records(manifest: Manifest) -> Iterator[tuple[int, Commit, int]]:
    """``(position in commits, commit, first global record)`` of commits with records."""
    first = 0
    for number, commit in enumerate(manifest.commits):
        if commit.records:
            yield number, commit, first
        first += commit.records


@contextlib.contextmanager
def read_ahead(
    storage: Storage, checker: Checker, plan: Iterator[tuple[str, int, int]]
) -> Iterator[None]:
    """Point the checker's reads at a read-ahead on remote storage."""
    if storage.is_local:
        yield
        return
    with ReadAhead(storage, plan, max_bytes=READ_AHEAD_BYTES) as ahead:
        checker.fetch = ahead.read
        try:
            yield
        finally:
            checker.fetch = storage.read_range
