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

from .format import FRAME_HEADER, SEGMENT_HEADER, Commit

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
        self, entries: NDArray[Any], first: int, before: NDArray[Any] | None
    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """For consecutive entries from ``first``: (in place after the previous one, or a
        valid first entry of its bin; in place before the next one, or a valid last entry
        of its bin; where the next one is not in ``entries``: its own bin's end only)."""
        count = len(entries)
        numbers = np.arange(first, first + count, dtype=np.int64)
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
        ends = offsets + lengths
        fills = valid & (ends == sizes)  # the entry ends its segment
        at_start = offsets == np.uint64(FIRST_PAYLOAD)
        starts_bin = numbers == self.bin_base[bins]
        ends_bin = numbers + 1 == self.bin_base[bins + 1]
        # Entry k in place after entry k - 1 (of the same bin).
        after = valid & starts_bin & (segments == self.first[bins]) & at_start
        if before is not None:
            previous = np.concatenate([before, entries[:-1]])
            mine = slice(0, None)
        else:
            previous = entries[:-1]
            mine = slice(1, None)
        if len(previous):
            p_segments = previous["segment"].astype(np.int64)
            p_known = np.where(p_segments >= len(self.sizes), 0, p_segments)
            p_ends = previous["offset"] + previous["length"].astype(np.uint64)
            p_fills = p_ends == self.sizes[p_known]
            same = segments[mine] == p_segments
            next_segment = (segments[mine] == self.following[p_known]) & at_start[mine] & p_fills
            chained = np.where(same, offsets[mine] == p_ends + _FRAME, next_segment)
            after[mine] |= valid[mine] & ~starts_bin[mine] & chained
        # Entry k in place before entry k + 1: the same relation, seen from k + 1.
        before_next = np.zeros(count, dtype=bool)
        before_next[:-1] = after[1:] & ~starts_bin[1:] & valid[:-1]
        last = valid & ends_bin & (segments == self.last[bins]) & fills
        before_next |= last
        return after, before_next, ends_bin

    def page_ok(self, entries: NDArray[Any], first: int, before: NDArray[Any] | None) -> bool:
        """Whether every entry of a run is in place (``before``: the entry before ``first``,
        needed unless ``first`` starts a bin). The last one is checked against its bin's
        end only when it is its bin's last entry."""
        if not len(entries):
            return True
        after, before_next, ends_bin = self._rules(entries, first, before)
        ok = bool(after.all()) and bool(np.all(before_next[:-1]))
        return ok and (not bool(ends_bin[-1]) or bool(before_next[-1]))

    def trusted(self, entries: NDArray[Any], first: int) -> NDArray[Any]:
        """Which of a whole bin's entries (``first`` its first) are in place: chained to
        the bin's first entry through entries in place, or to its last one."""
        if not len(entries):
            return np.zeros(0, dtype=bool)
        after, before_next, _ = self._rules(entries, first, None)
        forward = np.logical_and.accumulate(after)
        backward = np.logical_and.accumulate(before_next[::-1])[::-1]
        trusted: NDArray[Any] = forward | backward
        return trusted
