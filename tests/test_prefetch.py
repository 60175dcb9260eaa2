from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import _prefetch_helpers as helpers
import pytest
from conftest import S3_BUCKET

from splitdataloader import MpQItr, SplitDataLoader, write_split_data
from splitdataloader.errors import SplitDataError
from splitdataloader.prefetch import WorkerDiedError, WorkerError

T = TypeVar("T")

METHOD_NAMES = multiprocessing.get_all_start_methods()
START_METHODS = [pytest.param(method, id=method) for method in METHOD_NAMES]


def gone(pid: int | None) -> bool:
    """Whether the worker ``pid`` has exited and been reaped."""
    assert pid is not None
    if pid in {child.pid for child in multiprocessing.active_children()}:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def drain(items: Iterable[T], into: list[T]) -> None:
    """Collect ``items`` into ``into`` until the end or an exception."""
    for item in items:
        into.append(item)


@pytest.mark.parametrize("method", START_METHODS)
def test_items_arrive_in_order(method: str) -> None:
    it = MpQItr[int].with_options(start_method=method, qsize=3)(helpers.count, 200)
    assert list(it) == list(range(200))
    assert gone(it.pid)


def test_readme_example(tmp_path: Path) -> None:
    records = [b"record %d" % i for i in range(100)]
    write_split_data(tmp_path / "train", records, splits=4)
    got = []
    for batch in MpQItr[list[bytes]](helpers.batches, str(tmp_path / "train"), 32):
        got.append(batch)
    # As written in the README, the generator also yields the last, partial batch.
    assert [len(batch) for batch in got] == [32, 32, 32, 4]
    flat = [record for batch in got for record in batch]
    assert sorted(flat) == sorted(records)
    assert flat != records  # shuffled


def test_keyword_arguments_reach_the_generator() -> None:
    assert list(MpQItr[int](helpers.squares, 4, offset=1)) == [1, 2, 5, 10]


def test_runs_in_another_process() -> None:
    it = MpQItr[int](helpers.pids, 5)
    seen = set(it)
    assert seen == {it.pid}
    assert os.getpid() not in seen


def test_items_larger_than_the_pipe_buffer() -> None:
    size = 3 * 1024 * 1024
    # Through the pipe: shared memory (tested in test_prefetch_workers.py) is off.
    it = MpQItr[bytes].with_options(shm_threshold=None)(helpers.blobs, 4, size)
    got = list(it)
    assert [len(b) for b in got] == [size] * 4
    assert got == [bytes([i]) * size for i in range(4)]
    assert it.stats.shm_items == 0
    assert it.stats.pipe_bytes > 4 * size


@pytest.mark.parametrize("method", START_METHODS)
def test_exception_is_raised_in_the_consumer_with_the_worker_traceback(method: str) -> None:
    it = MpQItr[int].with_options(start_method=method)(helpers.fail_after, 3)
    got: list[int] = []
    with pytest.raises(ValueError, match="boom after 3 items") as excinfo:
        drain(it, got)
    assert got == [0, 1, 2]
    cause = excinfo.value.__cause__
    assert isinstance(cause, WorkerError)
    assert cause.traceback is not None
    assert "in fail_after" in cause.traceback
    assert "ValueError: boom after 3 items" in cause.traceback
    assert cause.exc_type == "ValueError"
    assert cause.pid == it.pid
    assert "in fail_after" in str(cause)
    assert gone(it.pid)
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver") if m in METHOD_NAMES])
def test_argument_that_cannot_be_rebuilt_in_the_worker_is_reported(method: str) -> None:
    it = MpQItr[int].with_options(start_method=method)(
        helpers.ignore_argument, helpers.RebuildFails()
    )
    with pytest.raises(RuntimeError, match="cannot be rebuilt in a worker") as excinfo:
        next(it)
    cause = excinfo.value.__cause__
    assert isinstance(cause, WorkerError)
    assert cause.traceback is not None
    assert "in _refuse_to_rebuild" in cause.traceback


@pytest.mark.parametrize("method", START_METHODS)
def test_objects_shared_at_process_start_can_be_arguments(method: str) -> None:
    value = multiprocessing.get_context(method).Value("i", 5)
    it = MpQItr[int].with_options(start_method=method)(helpers.read_shared, value, 3)
    assert list(it) == [5, 5, 5]


def test_exception_that_cannot_be_rebuilt_arrives_as_worker_error() -> None:
    with pytest.raises(WorkerError) as excinfo:
        list(MpQItr[int](helpers.fail_unpicklable))
    error = excinfo.value
    assert not isinstance(error, WorkerDiedError)
    assert error.exc_type == "_prefetch_helpers.NeedsTwoArgsError"
    assert error.traceback is not None
    assert "in fail_unpicklable" in error.traceback
    assert "left and right" in str(error)


def test_system_exit_in_the_generator_arrives_as_worker_error() -> None:
    with pytest.raises(WorkerError, match="SystemExit: 4"):
        list(MpQItr[int](helpers.exit_during, 2))


def test_unpicklable_item_raises_instead_of_vanishing() -> None:
    got: list[object] = []
    with pytest.raises(pickle.PicklingError, match="item 1 from unpicklable_item"):
        drain(MpQItr[object](helpers.unpicklable_item), got)
    assert got == [1]


@pytest.mark.parametrize("method", START_METHODS)
def test_killed_worker_raises_promptly(method: str) -> None:
    it = MpQItr[int].with_options(start_method=method)(helpers.kill_self_after, 3)
    got = [next(it) for _ in range(3)]
    assert got == [0, 1, 2]
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match="SIGKILL") as excinfo:
        next(it)
    assert time.monotonic() - started < 2.0
    assert excinfo.value.exitcode == -9
    assert "exit code -9" in str(excinfo.value)
    assert gone(it.pid)


def test_worker_exiting_early_raises_with_its_exit_code() -> None:
    it = MpQItr[int](helpers.exit_after, 2, 3)
    with pytest.raises(WorkerDiedError, match="exited with exit code 3") as excinfo:
        list(it)
    assert excinfo.value.exitcode == 3


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_worker_exits_when_its_consumer_is_killed() -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import _prefetch_helpers as helpers
        from splitdataloader import MpQItr, write_split_data
        if __name__ == "__main__":
            it = MpQItr(helpers.blobs, 10**6, 100_000)
            next(iter(it))
            print(it.pid, flush=True)
            time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as consumer:
        assert consumer.stdout is not None
        worker = int(consumer.stdout.readline())
        consumer.kill()
    deadline = time.monotonic() + 5
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(worker)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an orphan's new parent may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_break_then_garbage_collection_ends_the_worker() -> None:
    for pid in MpQItr[int](helpers.endless_pids):  # noqa: B007 - the loop's last item is used
        break
    # The iterator is unreachable now: its finalizer has already ended the worker.
    assert gone(pid)


def test_exception_in_the_loop_body_ends_the_worker() -> None:
    pids: list[int] = []

    def loop() -> None:
        for pid in MpQItr[int](helpers.endless_pids):
            pids.append(pid)
            raise KeyError(pid)

    with pytest.raises(KeyError):
        loop()
    assert gone(pids[0])


def test_dropping_a_started_iterator_ends_the_worker() -> None:
    it = MpQItr[int](helpers.endless_pids)
    pid = next(iter(it))
    del it
    gc.collect()
    assert gone(pid)


def test_close_ends_the_worker_and_lets_its_finally_run(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    it = MpQItr[int](helpers.count_with_cleanup, str(marker))
    assert next(iter(it)) == 0
    pid = it.pid
    it.close()
    assert gone(pid)
    assert marker.read_text() == "closed"
    with pytest.raises(StopIteration):
        next(it)
    it.close()  # a second close does nothing


def test_context_manager_ends_the_worker() -> None:
    with MpQItr[int](helpers.endless_pids) as it:
        pid = next(iter(it))
        assert not gone(pid)
    assert gone(pid)
    with pytest.raises(StopIteration):
        next(it)


def test_iterating_twice_starts_a_fresh_pass() -> None:
    it = MpQItr[int](helpers.count, 5)
    assert list(it) == [0, 1, 2, 3, 4]
    first = it.pid
    assert list(it) == [0, 1, 2, 3, 4]
    assert it.pid != first


def test_a_loop_after_break_goes_on_where_the_last_one_stopped() -> None:
    it = MpQItr[int](helpers.count, 1000)
    for item in it:
        if item == 9:
            break
    pid = it.pid
    assert next(it) == 10
    assert list(it) == list(range(11, 1000))
    assert gone(pid)


def test_close_then_iterate_starts_over() -> None:
    it = MpQItr[int](helpers.count, 1000)
    assert next(iter(it)) == 0
    assert next(it) == 1
    first = it.pid
    it.close()
    assert gone(first)
    assert list(it) == list(range(1000))
    assert it.pid != first


def test_next_after_the_end_keeps_raising_stop_iteration() -> None:
    it = iter(MpQItr[int](helpers.count, 2))
    assert list(it) == [0, 1]
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_next_without_iter_starts_a_pass() -> None:
    it = MpQItr[int](helpers.count, 3)
    assert next(it) == 0
    assert next(it) == 1
    it.close()


def test_qsize_bounds_how_far_the_worker_runs_ahead(tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    it = MpQItr[bytes](helpers.counted_blobs, 60, 256 * 1024, str(progress))
    it.qsize = 2
    with it:
        next(iter(it))
        time.sleep(0.5)
        made = int(progress.read_text())
    # One consumed, one in the pipe, two queued, one waiting to be queued; slack for the pipe.
    assert 2 <= made <= 2 + 5


def test_options_are_attributes_with_class_defaults() -> None:
    class Spawned(MpQItr[int]):
        start_method = "spawn"

    it = Spawned.with_options(qsize=2)(helpers.count, 3)
    assert isinstance(it, Spawned)
    assert (it.qsize, it.start_method, it.stop_timeout) == (2, "spawn", 2.0)
    assert list(it) == [0, 1, 2]
    plain = MpQItr[int](helpers.count, 3)
    assert (plain.qsize, plain.start_method) == (16, None)
    assert (plain.num_workers, plain.ordered, plain.shm_threshold) == (1, True, 1 << 20)
    off = MpQItr.with_options(shm_threshold=None, num_workers=2, ordered=False)(helpers.count, 3)
    assert (off.num_workers, off.ordered, off.shm_threshold) == (2, False, None)
    kept = Spawned.with_options(qsize=2)(helpers.count, 3)
    assert kept.shm_threshold == 1 << 20


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"qsize": 0}, ValueError),
        ({"qsize": "8"}, TypeError),
        ({"qsize": True}, TypeError),
        ({"start_method": "threads"}, ValueError),
        ({"stop_timeout": -1}, ValueError),
        ({"num_workers": 0}, ValueError),
        ({"num_workers": 2.0}, TypeError),
        ({"ordered": "yes"}, TypeError),
        ({"shm_threshold": -1}, ValueError),
        ({"shm_threshold": 1.5}, TypeError),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        MpQItr.with_options(**options)  # type: ignore[arg-type]
    it = MpQItr[int](helpers.count, 3)
    for name, value in options.items():
        setattr(it, name, value)
    with pytest.raises(error):
        iter(it)
    assert it.pid is None


def test_worker_errors_pickle_with_their_attributes() -> None:
    error = WorkerDiedError("died", pid=12, exitcode=-9, traceback="tb", exc_type="X")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is WorkerDiedError
    assert (copy.message, copy.pid, copy.exitcode, copy.traceback, copy.exc_type) == (
        "died",
        12,
        -9,
        "tb",
        "X",
    )
    assert isinstance(copy, SplitDataError)
    assert isinstance(copy, ChildProcessError)


@pytest.mark.parametrize("method", START_METHODS)
def test_a_loader_on_s3_reads_in_a_worker_process(method: str, s3_server: object) -> None:
    # The parent's S3 client is in use before the worker starts: a forked child must
    # build its own (s3fs refuses to run in a fork), spawn and forkserver unpickle one.
    url = f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex}"
    records = [bytes([k]) * (k + 1) for k in range(40)]
    write_split_data(url, records, 3)
    with SplitDataLoader(url) as loader:
        assert loader[0] == records[0]
        expected = [records[1], *loader.iterate_binwise()]
        it = MpQItr[bytes].with_options(start_method=method)(helpers.loader_records, loader)
        assert list(it) == expected
