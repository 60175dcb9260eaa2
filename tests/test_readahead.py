"""The read-ahead engine: planned ranges fetched ahead within a budget, in order, once."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.readahead import PART_BYTES, ReadAhead
from splitdataloader.storage import Storage, open_storage


class _Recorder:
    """Wraps a filesystem's ``cat_file`` to log every ranged read it serves."""

    def __init__(self, storage: Storage) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._inner = storage.fs.cat_file
        storage.fs.cat_file = self  # instance attribute: this filesystem object only

    def __call__(self, path: str, start: int | None = None, end: int | None = None) -> Any:
        with self._lock:
            self.calls.append((path, start or 0, end or -1))
        return self._inner(path, start=start, end=end)


@pytest.fixture
def storage() -> Storage:
    store = open_storage(f"memory://readahead-{uuid.uuid4().hex}")
    for k in range(8):
        store.replace_file(f"f{k}", bytes([k]) * 1000, durable=False)
    return store


def test_planned_ranges_come_back_in_order_and_are_fetched_once(storage: Storage) -> None:
    plan = [(f"f{k}", 10 * k, 10 * k + 100) for k in range(8)]
    recorder = _Recorder(storage)
    with ReadAhead(storage, iter(plan), max_bytes=250, concurrency=4) as ahead:
        for name, start, end in plan:
            assert ahead.read(name, start, end) == bytes([int(name[1:])]) * (end - start)
    assert sorted(recorder.calls) == sorted((storage.path(n), s, e) for n, s, e in plan)


def test_budget_bounds_the_bytes_requested_ahead(storage: Storage) -> None:
    plan = [(f"f{k}", 0, 100) for k in range(8)]
    recorder = _Recorder(storage)
    ahead = ReadAhead(storage, iter(plan), max_bytes=250, concurrency=8)
    try:
        for consumed, (name, start, end) in enumerate(plan, start=1):
            ahead.read(name, start, end)
            # At most the budget plus one range is ever requested beyond what was consumed.
            assert (len(recorder.calls) - consumed) * 100 <= 250 + 100
    finally:
        ahead.close()
    assert len(recorder.calls) == len(plan)


def test_a_range_read_in_pieces_stays_resident(storage: Storage) -> None:
    recorder = _Recorder(storage)
    with ReadAhead(storage, iter([("f3", 0, 1000), ("f4", 0, 10)]), max_bytes=10**6) as ahead:
        assert ahead.read("f3", 0, 32) == b"\x03" * 32
        assert ahead.read("f3", 500, 600) == b"\x03" * 100
        assert ahead.read("f4", 0, 10) == b"\x04" * 10
        assert ahead.read("f3", 900, 1000) == b"\x03" * 100
    assert [call[0] for call in recorder.calls].count(storage.path("f3")) == 1


def test_unplanned_and_skipped_ranges_are_still_read_correctly(storage: Storage) -> None:
    plan = [("f1", 0, 10), ("f2", 0, 10), ("f3", 0, 10)]
    with ReadAhead(storage, iter(plan), max_bytes=10**6) as ahead:
        assert ahead.read("f5", 3, 9) == b"\x05" * 6  # never planned: read directly
        assert ahead.read("f2", 0, 10) == b"\x02" * 10  # f1 skipped
        assert ahead.read("f1", 0, 10) == b"\x01" * 10  # no longer queued: read directly
        assert ahead.read("f3", 0, 10) == b"\x03" * 10


def test_large_ranges_are_fetched_in_parts(storage: Storage) -> None:
    size = 2 * PART_BYTES + 123
    storage.replace_file("big", bytes(range(256)) * (size // 256) + b"x" * (size % 256), False)
    recorder = _Recorder(storage)
    with ReadAhead(storage, iter([("big", 0, size)])) as ahead:
        data = ahead.read("big", 0, size)
    assert len(recorder.calls) == 3
    assert data == storage.read_file("big")


def test_close_releases_the_threads(storage: Storage) -> None:
    before = {t.name for t in threading.enumerate()}
    ahead = ReadAhead(storage, iter([(f"f{k}", 0, 100) for k in range(8)]), concurrency=4)
    ahead.read("f0", 0, 100)
    ahead.close()
    for thread in threading.enumerate():
        if thread.name.startswith("splitdataloader-readahead") and thread.name not in before:
            thread.join(timeout=5)
            assert not thread.is_alive()


@pytest.mark.parametrize("shuffle", [False, True])
def test_read_ahead_iteration_equals_direct_iteration(dataset_url: str, shuffle: bool) -> None:
    records = [bytes([k % 251]) * (k % 300) for k in range(2000)]
    write_split_data(dataset_url, records[:1200], 5)
    write_split_data(dataset_url, records[1200:], 7)
    with (
        SplitDataLoader(dataset_url, read_ahead_bytes=0) as direct,
        SplitDataLoader(dataset_url, read_ahead_bytes=4096, max_concurrency=3) as ahead,
    ):
        expected = list(direct.iterate_binwise(shuffle=shuffle, seed=5))
        assert list(ahead.iterate_binwise(shuffle=shuffle, seed=5)) == expected
    assert sorted(expected) == sorted(records)


@pytest.mark.parametrize(("option", "value"), [("read_ahead_bytes", -1), ("max_concurrency", 0)])
def test_bad_read_ahead_options_are_rejected(dataset_url: str, option: str, value: int) -> None:
    write_split_data(dataset_url, [b"a"], 1)
    with pytest.raises(ValueError, match=option):
        SplitDataLoader(dataset_url, **{option: value})
