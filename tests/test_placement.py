"""The quick placement check of a page agrees with the full one, entry rule by entry rule.

:meth:`Placement.page_ok` first tries a check by runs (entries that follow each other
in one segment), which only applies the rules where runs meet; damaged pages must get
the same verdict from it as from the rules applied to every entry.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from splitdataloader import SplitDataLoader, SplitWriter
from splitdataloader.commits import INDEX_PAGE_ENTRIES, CommitReader


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A commit of 5 bins whose bins span several segments and pages span several bins."""
    url = str(tmp_path_factory.mktemp("placement") / "ds")
    rng = random.Random(3)
    records = [rng.randbytes(rng.randrange(0, 200)) for _ in range(18_000)]
    with SplitWriter(url, bins=5, max_segment_bytes=64 << 10) as writer:
        writer.write_many(records)
    with SplitDataLoader(url) as loader:
        commit_reader: CommitReader = loader._readers[0]
        assert len(commit_reader.segments) > 5 * 3
        yield commit_reader


def page(reader: Any, number: int) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """A page's entries (a writable copy) and the entry before it."""
    first = number * INDEX_PAGE_ENTRIES
    count = min(INDEX_PAGE_ENTRIES, reader.records - first)
    table = reader._local_entries(first - 1 if number else 0, count + (1 if number else 0)).copy()
    return (table[1:], table[:1]) if number else (table, None)


def full_verdict(reader: Any, entries: NDArray[Any], first: int, before: Any) -> bool:
    """Every rule applied to every entry: the reference."""
    after, before_next, ends_bin = reader._placement._page_rules(entries, first, before)
    ok = bool(after.all()) and bool(np.all(before_next[:-1]))
    return ok and (not bool(ends_bin[-1]) or bool(before_next[-1]))


def pages(reader: Any) -> int:
    return -(-reader.records // INDEX_PAGE_ENTRIES)


def test_intact_pages_pass_the_quick_check(reader: Any) -> None:
    for number in range(pages(reader)):
        entries, before = page(reader, number)
        first = number * INDEX_PAGE_ENTRIES
        assert reader._placement._page_ok_by_runs(entries, first, before) is True
        assert full_verdict(reader, entries, first, before)


FIELDS = ("segment", "length", "offset")

damage = st.lists(
    st.tuples(
        st.integers(0, INDEX_PAGE_ENTRIES - 1),
        st.sampled_from([*FIELDS, "swap", "copy"]),
        st.integers(-70_000, 70_000),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(number=st.integers(0, 4), changes=damage)
def test_the_quick_check_agrees_with_the_full_one(
    reader: Any, number: int, changes: list[tuple[int, str, int]]
) -> None:
    number %= pages(reader)
    entries, before = page(reader, number)
    for where, how, amount in changes:
        at = where % len(entries)
        other = (at + amount) % len(entries)
        if how == "swap":
            entries[[at, other]] = entries[[other, at]]
        elif how == "copy":
            entries[at] = entries[other]
        else:
            limit = 2**64 - 1 if how == "offset" else 2**32 - 1
            entries[how][at] = (int(entries[how][at]) + amount) % (limit + 1)
    first = number * INDEX_PAGE_ENTRIES
    expected = full_verdict(reader, entries, first, before)
    assert reader._placement.page_ok(entries, first, before) == expected


def test_an_offset_past_two_to_the_63_takes_the_full_check(reader: Any) -> None:
    entries, before = page(reader, 1)
    entries["offset"][10] = 2**64 - 8
    first = INDEX_PAGE_ENTRIES
    assert reader._placement._page_ok_by_runs(entries, first, before) is None
    assert reader._placement.page_ok(entries, first, before) is False
