"""Bin-wise iteration read and decoded in worker processes: same records, same order."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest
from conftest import S3_BUCKET

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import ChecksumMismatchError

START_METHODS = ["fork", "spawn", "forkserver"]
RECORDS = [bytes([k % 251]) * (1 + k % 97) + k.to_bytes(4, "little") for k in range(3000)]


def _write(url: str) -> None:
    write_split_data(url, RECORDS[:1800], 7, codecs=["zstd"])
    write_split_data(url, RECORDS[1800:], 5)


def _url(place: str, tmp_path: Path) -> str:
    if place == "local":
        return str(tmp_path / "ds")
    return f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "s3":
        request.getfixturevalue("s3_server")
    return name


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_workers_give_the_single_process_order(
    place: str, tmp_path: Path, method: str, shuffle: bool
) -> None:
    url = _url(place, tmp_path)
    _write(url)
    with SplitDataLoader(url) as loader:
        expected = list(loader.iterate_binwise(shuffle=shuffle, seed=9))
        got = list(loader.iterate_binwise(shuffle=shuffle, seed=9, workers=2, start_method=method))
    assert got == expected
    assert sorted(got) == sorted(RECORDS)


@pytest.mark.parametrize("workers", [1, 3, 50])
def test_any_worker_count_gives_the_same_records(tmp_path: Path, workers: int) -> None:
    url = str(tmp_path / "ds")
    _write(url)
    with SplitDataLoader(url) as loader:
        expected = list(loader.iterate_binwise(shuffle=True, seed=2))
        assert list(loader.iterate_binwise(shuffle=True, seed=2, workers=workers)) == expected


def test_memory_datasets_work_with_fork() -> None:
    url = f"memory://parallel-{uuid.uuid4().hex}"
    _write(url)
    with SplitDataLoader(url) as loader:
        expected = list(loader.iterate_binwise())
        assert list(loader.iterate_binwise(workers=2, start_method="fork")) == expected


def test_workers_read_the_commit_the_loader_opened(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    _write(url)
    with SplitDataLoader(url) as loader:
        write_split_data(url, [b"appended later"] * 10, 5)
        got = list(loader.iterate_binwise(workers=2, start_method="spawn"))
    assert sorted(got) == sorted(RECORDS)


def test_a_corrupt_record_in_a_worker_is_raised_here(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    write_split_data(url, RECORDS, 4)
    segment = next(Path(url, "data").iterdir())
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    with (
        SplitDataLoader(url) as loader,
        pytest.raises(ChecksumMismatchError) as raised,
    ):
        list(loader.iterate_binwise(workers=2, start_method="spawn"))
    assert raised.value.path is not None
    assert segment.name in raised.value.path


def test_leaving_early_stops_the_workers(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    _write(url)
    with SplitDataLoader(url) as loader:
        records = loader.iterate_binwise(workers=2, start_method="fork")
        assert next(records) in RECORDS
        assert len(multiprocessing.active_children()) == 2
        del records
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("workers", [-1, 1.5, "2"])
def test_bad_worker_counts_are_rejected(tmp_path: Path, workers: object) -> None:
    url = str(tmp_path / "ds")
    write_split_data(url, [b"a"], 1)
    with SplitDataLoader(url) as loader, pytest.raises(ValueError, match="workers"):
        loader.iterate_binwise(workers=workers)  # type: ignore[arg-type]
