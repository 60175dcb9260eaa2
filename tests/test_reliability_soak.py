"""Load: random reads from threads sharing a loader and from other processes, every
record's bytes checked, for a bounded time, with memory that stays flat
(:mod:`reliability_soak`). The ``slow`` variants read longer, with more readers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import S3_BUCKET
from reliability_soak import SoakStats, record, soak, write_soak_dataset

pytestmark = pytest.mark.timeout(600)

#: Most a reader process's resident set may grow after its warm-up.
FLAT = 32 << 20


def check(stats: SoakStats, processes: int) -> None:
    assert stats.failures == [], stats.failures[:10]
    assert len(stats.growth) == processes + 1
    assert max(stats.growth) < FLAT, [g >> 20 for g in stats.growth]
    # Every reader did read (moto serves a few hundred requests a second at most).
    assert stats.records_checked > 100 * (processes + 1)


def test_soak_local(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    write_soak_dataset(url)
    check(soak(url, seconds=3.0, threads=4, processes=2), 2)


@pytest.mark.s3
def test_soak_s3() -> None:
    url = f"s3://{S3_BUCKET}/soak-{uuid.uuid4().hex}/ds"
    write_soak_dataset(url)
    check(soak(url, seconds=4.0, threads=3, processes=1), 1)


@pytest.mark.slow
def test_long_soak_local(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    write_soak_dataset(url)
    check(soak(url, seconds=20.0, threads=8, processes=3), 3)


@pytest.mark.slow
@pytest.mark.s3
def test_long_soak_s3() -> None:
    url = f"s3://{S3_BUCKET}/soak-{uuid.uuid4().hex}/ds"
    write_soak_dataset(url)
    check(soak(url, seconds=10.0, threads=4, processes=2), 2)


def test_records_are_a_function_of_their_index() -> None:
    assert record(7) == record(7)
    assert record(7) != record(8)
    assert record(7).startswith(b"00000007:")
