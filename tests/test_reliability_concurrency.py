"""Concurrency: readers during appends see whole commits; concurrent appends lose none.

Two writer processes append at once (retrying after each clear
:class:`~splitdataloader.errors.CommitConflictError`) while readers in threads of this
process and in two other processes read the whole dataset again and again
(:mod:`reliability_concurrency`). Every snapshot must be made of whole commits in order,
a reader's snapshots must never shrink, and in the end every commit of both writers must
be there.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import S3_BUCKET
from reliability_concurrency import BASE, ReadStats, check_snapshot, commit_records, run_concurrency

pytestmark = pytest.mark.timeout(600)


def check(stats: ReadStats, writers: int, commits: int) -> None:
    assert stats.failures == [], stats.failures[:10]
    assert stats.seen == {f"w{k}": commits for k in range(writers)}
    # The readers did read while the writers wrote: they saw intermediate commits.
    assert len(stats.lengths) > 2, stats.lengths


def test_readers_see_whole_commits_while_two_writers_append(tmp_path: Path) -> None:
    stats, _ = run_concurrency(str(tmp_path / "ds"), commits=30, reader_seconds=4.0)
    check(stats, 2, 30)


@pytest.mark.s3
def test_readers_and_writers_at_once_on_s3() -> None:
    url = f"s3://{S3_BUCKET}/conc-{uuid.uuid4().hex}/ds"
    stats, _ = run_concurrency(url, commits=6, reader_threads=2, reader_seconds=5.0)
    check(stats, 2, 6)


@pytest.mark.slow
def test_many_readers_and_four_writers(tmp_path: Path) -> None:
    stats, _ = run_concurrency(
        str(tmp_path / "ds"),
        writers=4,
        commits=40,
        reader_threads=6,
        reader_processes=3,
        reader_seconds=10.0,
    )
    check(stats, 4, 40)


def test_the_snapshot_check_rejects_mixed_commits() -> None:
    """The check itself can fail: a missing commit, a partial one, a repeated one."""
    one, two = commit_records("w0", 0, 5), commit_records("w0", 1, 5)
    other = commit_records("w1", 0, 5)
    assert check_snapshot([*BASE, *one, *other, *two], 5) == {"w0": 2, "w1": 1}
    assert isinstance(check_snapshot([*BASE, *two], 5), str)
    assert isinstance(check_snapshot([*BASE, *one[:3], *other], 5), str)
    assert isinstance(check_snapshot([*BASE, *one, *one], 5), str)
    assert isinstance(check_snapshot(BASE[1:], 5), str)
