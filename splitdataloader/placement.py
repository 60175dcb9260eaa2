"""Where a commit's index entries must point, as pure checks on arrays of entries.

A bin's records fill its segments in the order the commit lists them, frames back to back
from the segment header to the segment's end (``docs/format.md`` §4, §5). So every entry's
place is fixed by its neighbours: it starts where the entry before it in its bin ends (or
at the first frame of the bin's next segment, once that one's segment is full), and it
ends where the next one starts. Record checksums cover bytes, not places: an index whose
entries were moved or swapped still points at intact records, only the wrong ones. These
checks find that. Owns no I/O; :mod:`splitdataloader.commits` feeds it entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .byte_layout import FRAME_HEADER, SEGMENT_HEADER
from .format import Commit

#: Offset of the first payload of a segment: its header, then a frame header.
FIRST_PAYLOAD = SEGMENT_HEADER.size + FRAME_HEADER.size
_FRAME = np.uint64(FRAME_HEADER.size)


class Placement:
    """The places of one commit's entries: its segments by bin, in list order.

    Parameters
    ----------
    commit
        The commit.
    bin_base
        Entry number of each bin's first entry, and the number of entries last.
    """

    def __init__(self, commit: Commit, bin_base: NDArray[Any]) -> None:
        segments = commit.segments
        self.bin_base = bin_base
        self.sizes = np.fromiter((s.size for s in segments), dtype=np.uint64, count=len(segments))
        self.bins = np.fromiter((s.bin for s in segments), dtype=np.int64, count=len(segments))
        # The next segment of each one's bin and each bin's first and last (-1: none).
        self.following = np.full(len(segments), -1, dtype=np.int64)
        self.first = np.full(commit.layout.bins, -1, dtype=np.int64)
        self.last = np.full(commit.layout.bins, -1, dtype=np.int64)
        for k, segment in enumerate(segments):
            if self.last[segment.bin] >= 0:
                self.following[self.last[segment.bin]] = k
            else:
                self.first[segment.bin] = k
            self.last[segment.bin] = k

    def bin_of(self, numbers: NDArray[Any]) -> NDArray[Any]:
        """The bin of each entry number."""
        bins: NDArray[Any] = np.searchsorted(self.bin_base, numbers, side="right") - 1
        return bins

    def _rules(
        self,
        entries: NDArray[Any],
        numbers: NDArray[Any],
        previous: NDArray[Any],
        has_previous: NDArray[Any],
    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        """The rules for each of ``entries`` (entry ``numbers``), given the entry before
        each one (``previous``, meaningful where ``has_previous``).

        Returns ``(after, valid, starts_bin, ends_bin, last)``: in place after the previous
        entry, or a valid first entry of its bin; within its own segment and bin; first of
        its bin; last of its bin; a valid last entry of its bin.
        """
        bins = self.bin_of(numbers)
        segments = entries["segment"].astype(np.int64)
        unknown = segments >= len(self.sizes)
        known = np.where(unknown, 0, segments)
        sizes = self.sizes[known]
        offsets = entries["offset"]
        lengths = entries["length"].astype(np.uint64)
        # Unsigned throughout: each term is only relied on where the ones before it hold.
        valid = ~unknown & (self.bins[known] == bins)
        valid &= (offsets >= np.uint64(FIRST_PAYLOAD)) & (lengths <= sizes)
        valid &= offsets <= sizes - lengths
        at_start = offsets == np.uint64(FIRST_PAYLOAD)
        starts_bin = numbers == self.bin_base[bins]
        ends_bin = numbers + 1 == self.bin_base[bins + 1]
        after = valid & starts_bin & (segments == self.first[bins]) & at_start
        p_segments = previous["segment"].astype(np.int64)
        p_known = np.where(p_segments >= len(self.sizes), 0, p_segments)
        p_ends = previous["offset"] + previous["length"].astype(np.uint64)
        p_fills = p_ends == self.sizes[p_known]
        same = segments == p_segments
        next_segment = (segments == self.following[p_known]) & at_start & p_fills
        chained = np.where(same, offsets == p_ends + _FRAME, next_segment)
        after |= has_previous & valid & ~starts_bin & chained
        fills = valid & (offsets + lengths == sizes)  # the entry ends its segment
        last = valid & ends_bin & (segments == self.last[bins]) & fills
        return after, valid, starts_bin, ends_bin, last

    def _page_rules(
        self, entries: NDArray[Any], first: int, before: NDArray[Any] | None
    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """For consecutive entries from ``first`` (``before``: the entry before them, if
        known): (in place after the previous one; in place before the next one, or a valid
        last entry of its bin; last of its bin)."""
        count = len(entries)
        numbers = np.arange(first, first + count, dtype=np.int64)
        head = before if before is not None else entries[:1]
        previous = np.concatenate([head, entries[:-1]])
        has_previous = np.ones(count, dtype=bool)
        has_previous[0] = before is not None
        after, valid, starts_bin, ends_bin, last = self._rules(
            entries, numbers, previous, has_previous
        )
        # Entry k in place before entry k + 1: the same relation, seen from k + 1.
        before_next = np.zeros(count, dtype=bool)
        before_next[:-1] = after[1:] & ~starts_bin[1:] & valid[:-1]
        before_next |= last
        return after, before_next, ends_bin

    def page_ok(self, entries: NDArray[Any], first: int, before: NDArray[Any] | None) -> bool:
        """Whether every entry of a run is in place (``before``: the entry before ``first``,
        needed unless ``first`` starts a bin). The last one is checked against its bin's
        end only when it is its bin's last entry."""
        if not len(entries):
            return True
        quick = self._page_ok_by_runs(entries, first, before)
        if quick is not None:
            return quick
        after, before_next, ends_bin = self._page_rules(entries, first, before)
        ok = bool(after.all()) and bool(np.all(before_next[:-1]))
        return ok and (not bool(ends_bin[-1]) or bool(before_next[-1]))

    def _page_ok_by_runs(
        self, entries: NDArray[Any], first: int, before: NDArray[Any] | None
    ) -> bool | None:
        """:meth:`page_ok` in a few array operations for a page in good order, or ``None``
        when the page needs the full check.

        Most entries follow the one before them in the same segment, frame after frame.
        Within such a run every rule holds once the run lies in one bin, inside its
        segment, which its first and last entries show; the rules then need checking only
        where runs meet. Offsets of 2**63 or more, which could wrap around, go the full way.
        """
        offsets = entries["offset"]
        if int(offsets.max()) >= 1 << 63:
            return None
        segments = entries["segment"]
        ends = offsets + entries["length"]
        linked = (segments[1:] == segments[:-1]) & (offsets[1:] == ends[:-1] + _FRAME)
        starts = np.flatnonzero(~linked) + 1  # where a run begins (besides entry 0)
        if len(starts) > len(entries) // 8:
            return None  # not in good order: the full check is as quick
        run_first = np.concatenate([[0], starts])
        run_last = np.concatenate([starts - 1, [len(entries) - 1]])
        return self._runs_in_place(entries, first, before, run_first, run_last, ends)

    def _runs_in_place(  # noqa: PLR0917 - internal, called from one place
        self,
        entries: NDArray[Any],
        first: int,
        before: NDArray[Any] | None,
        run_first: NDArray[Any],
        run_last: NDArray[Any],
        ends: NDArray[Any],
    ) -> bool:
        """Whether runs of linked entries (from ``run_first`` to ``run_last``) are in
        place: each in one segment of its bin, and the rules hold where runs meet."""
        offsets = entries["offset"]
        run_segments = entries["segment"][run_first].astype(np.int64)
        if int(run_segments.max()) >= len(self.sizes):
            return False
        run_bins = self.bins[run_segments]
        # Offsets only grow along a run: its ends show that it lies inside its segment.
        inside = (
            np.array_equal(self.bin_of(first + run_first), run_bins)
            and np.array_equal(self.bin_of(first + run_last), run_bins)
            and bool(np.all(offsets[run_first] >= np.uint64(FIRST_PAYLOAD)))
            and bool(np.all(ends[run_last] <= self.sizes[run_segments]))
        )
        if not inside:
            return False
        # Where runs meet, and the page's ends: the rules themselves.
        at = np.union1d(run_first, run_last)
        previous = entries[np.maximum(at - 1, 0)]
        if before is not None:
            previous[at == 0] = before[0]
        has_previous = (at > 0) | (before is not None)
        after, valid, starts_bin, ends_bin, last = self._rules(
            entries[at], first + at, previous, has_previous
        )
        # A run's last entry is in place before the next run's first one, or ends its bin.
        following = np.searchsorted(at, run_last[:-1] + 1)
        ending = np.searchsorted(at, run_last[:-1])
        joined = after[following] & ~starts_bin[following] & valid[ending]
        return (
            bool(after.all())
            and bool((joined | last[ending]).all())
            # The page's last entry, if it ends its bin, ends it in place.
            and (not bool(ends_bin[-1]) or bool(last[-1]))
        )

    def trusted(self, entries: NDArray[Any], first: int) -> NDArray[Any]:
        """Which of a whole bin's entries (``first`` its first) are in place: chained to
        the bin's first entry through entries in place, or to its last one."""
        if not len(entries):
            return np.zeros(0, dtype=bool)
        after, before_next, _ = self._page_rules(entries, first, None)
        forward = np.logical_and.accumulate(after)
        backward = np.logical_and.accumulate(before_next[::-1])[::-1]
        trusted: NDArray[Any] = forward | backward
        return trusted
