"""MpQItr with several workers, items through shared memory, bad input, and clean shutdown.

Every test starts real worker processes. The lifecycle tests run under each start method and
check what must be gone once a pass ends, however it ends: the worker processes, threads in
this process, and the pass's shared memory blocks in ``/dev/shm``.
"""

from __future__ import annotations

import copyreg
import gc
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _prefetch_helpers as helpers
import numpy as np
import pytest

from splitdataloader import MpQItr
from splitdataloader import shm as shm_module
from splitdataloader.prefetch import (
    PrefetchStats,
    WorkerDiedError,
    WorkerError,
    WorkerInfo,
    worker_info,
)

METHOD_NAMES = multiprocessing.get_all_start_methods()
START_METHODS = [pytest.param(method, id=method) for method in METHOD_NAMES]
DEV_SHM = Path("/dev/shm")
MiB = 1 << 20


def our_blocks() -> list[str]:
    """The shared memory blocks of this process's iterators (``sdl-<our pid>-…``)."""
    return sorted(p.name for p in DEV_SHM.iterdir() if p.name.startswith(f"sdl-{os.getpid()}-"))


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


@pytest.fixture
def clean_end() -> Iterator[Callable[[list[int | None]], None]]:
    """Checks that a pass left nothing behind: processes, threads, shared memory blocks."""
    threads_before = set(threading.enumerate())
    assert our_blocks() == []

    def check(pids: list[int | None]) -> None:
        assert pids
        assert all(gone(pid) for pid in pids)
        assert multiprocessing.active_children() == []
        assert set(threading.enumerate()) <= threads_before
        assert our_blocks() == []

    yield check
    # Whatever a test did, no block may survive it (nor fail the tests after it).
    left = our_blocks()
    for name in left:
        (DEV_SHM / name).unlink()
    assert left == []


# --- several workers ----------------------------------------------------------------------


def interleave(n: int, count: int) -> list[tuple[int, int, int]]:
    """What ``tagged(n)`` in ``count`` workers gives in order: one from each in turn."""
    out = []
    for i in range(n + count - 1):
        out += [(w, count, i) for w in range(count) if i < n + w]
    return out


@pytest.mark.parametrize("method", START_METHODS)
def test_ordered_output_is_the_round_robin_interleave(method: str) -> None:
    make = MpQItr[tuple[int, int, int]].with_options(num_workers=3, start_method=method)
    first = list(make(helpers.tagged, 20))
    assert first == interleave(20, 3)
    # Workers that run at different speeds change nothing.
    assert list(make(helpers.tagged_slowly, 20)) == first


def test_unordered_output_is_every_item_once() -> None:
    it = MpQItr[tuple[int, int, int]].with_options(num_workers=3, ordered=False)(
        helpers.tagged_slowly, 20
    )
    got = list(it)
    assert sorted(got) == sorted(interleave(20, 3))
    for w in range(3):
        mine = [i for (wid, _, i) in got if wid == w]
        assert mine == list(range(20 + w))  # each worker's own order is kept
    # Worker 0 sleeps between items: first come, first served lets the others go ahead.
    assert got != interleave(20, 3)
    assert got[-1][0] == 0


def test_each_worker_learns_its_id_and_the_count() -> None:
    assert worker_info() is None
    it = MpQItr[tuple[WorkerInfo | None, int]].with_options(num_workers=3, ordered=False)(
        helpers.identify
    )
    seen = list(it)
    assert sorted(info for info, _ in seen if info is not None) == [
        WorkerInfo(0, 3),
        WorkerInfo(1, 3),
        WorkerInfo(2, 3),
    ]
    assert sorted(pid for _, pid in seen) == sorted(p for p in it.pids if p is not None)
    assert len(set(it.pids)) == 3
    [(info, _)] = MpQItr[Any](helpers.identify)
    assert info == WorkerInfo(0, 1)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_failing_worker_raises_its_exception(
    ordered: bool, clean_end: Callable[[list[int | None]], None]
) -> None:
    it = MpQItr[tuple[int, int]].with_options(num_workers=3, ordered=ordered)(
        helpers.fail_in_worker, 1, 4
    )
    got: list[tuple[int, int]] = []
    with pytest.raises(ValueError, match="worker 1 fails after 4 items") as excinfo:
        got.extend(it)
    if ordered:
        assert got == [(w, i) for i in range(4) for w in range(3)] + [(0, 4)]
    assert [i for w, i in got if w == 1] == [0, 1, 2, 3]
    cause = excinfo.value.__cause__
    assert isinstance(cause, WorkerError)
    assert cause.pid == it.pids[1]
    assert "prefetch worker 1 of 3" in str(cause)
    assert cause.traceback is not None
    assert "in fail_in_worker" in cause.traceback
    clean_end(list(it.pids))


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_worker_that_kills_itself_raises_worker_died(
    ordered: bool, clean_end: Callable[[list[int | None]], None]
) -> None:
    it = MpQItr[tuple[int, int]].with_options(num_workers=2, ordered=ordered)(
        helpers.kill_worker_after, 1, 3
    )
    got: list[tuple[int, int]] = []
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match=r"worker 1 of 2 .* SIGKILL \(exit code -9\)") as e:
        got.extend(it)
    assert time.monotonic() - started < 2.0
    assert e.value.exitcode == -9
    assert e.value.pid == it.pids[1]
    assert [i for w, i in got if w == 1] == [0, 1, 2]
    clean_end(list(it.pids))


# --- shared memory ------------------------------------------------------------------------


def test_large_bytes_arrive_exactly_through_shared_memory() -> None:
    size = 3 * MiB + 5
    it = MpQItr[bytes | bytearray].with_options(qsize=2)(helpers.big_bytes, 6, size)
    got = list(it)
    assert [type(item) for item in got] == [bytes, bytearray, bytes] * 2  # memoryview: bytes
    assert got == [helpers.random_bytes(i, size) for i in range(6)]
    stats = it.stats
    assert (stats.items, stats.shm_items, stats.shm_bytes) == (6, 6, 6 * size)
    # Only descriptors went through the pipe.
    assert stats.pipe_bytes < 6 * 200 + 200


def test_numpy_arrays_arrive_exactly_and_own_their_memory() -> None:
    rows = 300  # 1.2 MiB of float32, 2.4 MiB of int64 per batch
    it = MpQItr[dict[str, Any]].with_options(num_workers=2)(helpers.batches_of_arrays, 3, rows)
    got = list(it)
    assert it.stats.shm_items == 6
    assert it.stats.pipe_bytes < 6 * 1000
    assert our_blocks() == []  # the pass is over: the arrays must not refer to a block
    expected = [helpers.batch(i, rows) for i in range(3) for _ in range(2)]
    for batch, want in zip(got, expected, strict=True):
        assert batch["name"] == want["name"]
        for key in ("images", "ids", "labels"):
            array = batch[key]
            assert array.dtype == want[key].dtype
            assert np.array_equal(array, want[key])
            assert array.flags.writeable
            assert array.ctypes.data % 16 == 0
        assert batch["images"].flags.f_contiguous
        owner = batch["images"].base
        while isinstance(owner, np.ndarray):
            owner = owner.base
        assert isinstance(owner, memoryview)
        assert isinstance(owner.obj, bytearray)
        batch["ids"][0, 0] = -1  # writable, and no one else's memory


def test_items_below_the_threshold_or_with_it_off_use_the_pipe() -> None:
    small = MpQItr[bytes].with_options(shm_threshold=4 * MiB)(helpers.blobs, 2, 3 * MiB)
    assert [len(b) for b in small] == [3 * MiB] * 2
    assert small.stats == PrefetchStats(2, 0, 0, small.stats.pipe_bytes)
    assert small.stats.pipe_bytes > 6 * MiB
    off = MpQItr[bytes].with_options(shm_threshold=None)(helpers.blobs, 2, 3 * MiB)
    assert [len(b) for b in off] == [3 * MiB] * 2
    assert off.stats.shm_items == 0
    zero = MpQItr[bytes](helpers.blobs, 2, 3 * MiB)
    zero.shm_threshold = 0
    assert len(list(zero)) == 2
    assert zero.stats.shm_items == 0


def test_a_consumer_that_stops_reading_holds_the_worker_back(tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    it = MpQItr[Any].with_options(qsize=2, shm_threshold=64 * 1024)(
        helpers.counted_arrays, 60, 256 * 1024, str(progress)
    )
    with it:
        next(iter(it))
        time.sleep(0.5)
        made = int(progress.read_text())
        blocks = our_blocks()
    # Descriptors are small: without its two blocks the worker would have filled the pipe
    # with all 60. One item read, two in blocks, one waiting for a block.
    assert 2 <= made <= 2 + 3
    assert 1 <= len(blocks) <= 2
    assert our_blocks() == []


def test_sweep_removes_blocks_under_a_prefix_only() -> None:
    prefix = shm_module.new_prefix()
    other = shm_module.new_prefix()
    assert prefix != other
    assert prefix.startswith(f"sdl-{os.getpid()}-")
    for name in (f"{prefix}-0-0", f"{prefix}-1-7", f"{other}-0-0"):
        (DEV_SHM / name).write_bytes(b"x")
    try:
        assert sorted(shm_module.sweep(prefix)) == [f"{prefix}-0-0", f"{prefix}-1-7"]
        assert our_blocks() == [f"{other}-0-0"]
    finally:
        shm_module.sweep(other)


# --- the end of a pass, however it comes ----------------------------------------------------


def consume_and_break(it: MpQItr[Any]) -> None:
    for _ in it:
        break


def consumer_raises(it: MpQItr[Any]) -> None:
    def loop() -> None:
        for _ in it:
            raise KeyError("consumer")

    with pytest.raises(KeyError):
        loop()


def with_block_raises(it: MpQItr[Any]) -> None:
    def loop() -> None:
        with it:
            for _ in it:
                raise KeyError("consumer")

    with pytest.raises(KeyError):
        loop()


def close_it(it: MpQItr[Any]) -> None:
    next(it)
    it.close()


def kill_a_worker(it: MpQItr[Any]) -> None:
    next(it)
    next(it)
    pid = it.pids[1]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match="exit code -9"):
        for _ in it:
            pass
    assert time.monotonic() - started < 2.0


def generator_raises(it: MpQItr[Any]) -> None:
    with pytest.raises(ValueError, match="worker 1 fails"):
        for _ in it:
            pass


def run_to_the_end(it: MpQItr[Any]) -> None:
    assert len(list(it)) == 6


# How each ending runs a pass, and the generator it runs: the arguments of arrays(), which
# makes 256 KiB arrays (through shared memory above the 64 KiB threshold set below).
ENDINGS: dict[str, tuple[Callable[[MpQItr[Any]], None], tuple[int | None, bool]]] = {
    "break_then_gc": (consume_and_break, (None, False)),
    "consumer_exception_then_gc": (consumer_raises, (None, False)),
    "consumer_exception_in_with": (with_block_raises, (None, False)),
    "close": (close_it, (None, False)),
    "worker_killed": (kill_a_worker, (None, False)),
    "generator_exception": (generator_raises, (3, True)),
    "normal_end": (run_to_the_end, (3, False)),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("method", START_METHODS)
def test_every_ending_leaves_nothing_behind(
    method: str, ending: str, clean_end: Callable[[list[int | None]], None]
) -> None:
    run, (count, fail) = ENDINGS[ending]
    it = MpQItr[Any].with_options(
        num_workers=2, start_method=method, qsize=4, shm_threshold=64 * 1024
    )(helpers.arrays, 256 * 1024, count, fail=fail)
    iter(it)
    pids = list(it.pids)
    # Shared memory is in use while the pass runs, so the check of /dev/shm can fail.
    deadline = time.monotonic() + 5
    while not our_blocks() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert our_blocks()
    run(it)
    if ending.endswith("then_gc"):
        # Leaving a loop ends nothing while the iterator is in reach (a loop may go on with
        # it); as in `for x in MpQItr(...)`, the last reference going does.
        assert not any(gone(pid) for pid in pids)
        del it
        gc.collect()
    clean_end(pids)


def test_blocks_go_when_the_consumer_is_killed() -> None:
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import _prefetch_helpers as helpers
from splitdataloader import MpQItr
if __name__ == "__main__":
    it = MpQItr.with_options(qsize=4, shm_threshold=1024)(helpers.arrays, 64 * 1024, None)
    next(iter(it))
    print(it.pid, flush=True)
    time.sleep(60)
"""
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as consumer:
        assert consumer.stdout is not None
        worker = int(consumer.stdout.readline())
        prefix = f"sdl-{consumer.pid}-"
        assert any(p.name.startswith(prefix) for p in DEV_SHM.iterdir())
        consumer.kill()
    # The worker sees within its check interval that its consumer is gone, and unlinks its
    # blocks before it exits.
    deadline = time.monotonic() + 5
    left = ["not looked yet"]
    while time.monotonic() < deadline:
        left = [p.name for p in DEV_SHM.iterdir() if p.name.startswith(prefix)]
        if not left and not running(worker):
            break
        time.sleep(0.05)
    assert left == []
    assert not running(worker)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an orphan's new parent may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- bad input ----------------------------------------------------------------------------


def test_a_function_that_is_not_callable_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="got int 42"):
        MpQItr(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got list \\[1, 2\\]"):
        MpQItr([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("method", START_METHODS)
def test_a_function_that_returns_no_iterable_raises_in_the_consumer(method: str) -> None:
    it = MpQItr[Any].with_options(start_method=method)(helpers.not_iterable)
    with pytest.raises(TypeError, match="not_iterable returned int, which is not iterable") as e:
        next(it)
    cause = e.value.__cause__
    assert isinstance(cause, WorkerError)
    assert cause.traceback is not None
    assert "_iterate" in cause.traceback


SPAWNING = [pytest.param(m, id=m) for m in ("spawn", "forkserver") if m in METHOD_NAMES]


@pytest.mark.parametrize("method", SPAWNING)
@pytest.mark.parametrize(
    ("call", "culprit"),
    [
        ((helpers.ignore_argument, threading.Lock()), "positional argument 0"),
        ((helpers.squares, 3), None),
        ((lambda: iter([1]),), "the function"),
    ],
    ids=["positional", "fine", "lambda"],
)
def test_what_cannot_be_pickled_is_named_before_any_worker_starts(
    method: str, call: tuple[Any, ...], culprit: str | None
) -> None:
    it = MpQItr[Any].with_options(start_method=method, num_workers=2)(*call)
    if culprit is None:
        assert list(it) == [0, 0, 1, 1, 4, 4]
        return
    with pytest.raises(pickle.PicklingError, match=culprit) as excinfo:
        iter(it)
    assert method in str(excinfo.value)
    assert it.pid is None
    assert multiprocessing.active_children() == []


def test_a_keyword_argument_that_cannot_be_pickled_is_named() -> None:
    it = MpQItr[int].with_options(start_method="spawn")(
        helpers.ignore_keyword, lock=threading.Lock()
    )
    with pytest.raises(pickle.PicklingError, match=r"keyword argument 'lock'.*_thread\.lock"):
        iter(it)
    assert it.pid is None


# --- the shared memory transport on its own, in this process -------------------------------


@pytest.fixture(params=["files", "maps"])
def transport(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[shm_module.Encoder, shm_module.Reader, str]]:
    """An encoder and a reader joined by a pipe, as in a worker and its consumer.

    ``maps`` copies through the blocks' memory maps, as off Linux, instead of reading and
    writing them as files.
    """
    if request.param == "maps":
        monkeypatch.setattr(shm_module, "_LINUX", False)
    prefix = f"{shm_module.new_prefix()}-0"
    returns, back = multiprocessing.Pipe(duplex=False)

    def must_not_wait() -> None:
        raise AssertionError("the encoder waited for a free block")

    encoder = shm_module.Encoder(
        prefix, threshold=1024, free=returns, slots=2, check=must_not_wait, wait_interval=0.01
    )
    reader = shm_module.Reader(back)
    yield encoder, reader, prefix
    encoder.abandon()
    reader.close()
    returns.close()
    assert our_blocks() == []


def test_blocks_are_reused_and_replaced_when_too_small(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, reader, prefix = transport
    first, second = encoder.encode(b"a" * 4096), encoder.encode(b"b" * 4096)
    assert bytes(first)[0] == shm_module.TAG
    assert our_blocks() == [f"{prefix}-0", f"{prefix}-1"]
    assert reader.decode(bytes(first)) == (b"a" * 4096, 4096)
    # Block 0 came back: the third item goes in it; a fourth would have to wait.
    third = encoder.encode(bytearray(b"c" * 3000))
    assert our_blocks() == [f"{prefix}-0", f"{prefix}-1"]
    assert reader.decode(bytes(second)) == (b"b" * 4096, 4096)
    assert reader.decode(bytes(third)) == (bytearray(b"c" * 3000), 3000)
    # Too small for this one: a new block takes the slot, and the reader unlinks the old.
    fourth = encoder.encode(b"d" * 100_000)
    item, size = reader.decode(bytes(fourth))
    assert (item, size) == (b"d" * 100_000, 100_000)
    assert len(our_blocks()) == 2
    assert f"{prefix}-2" in our_blocks()
    reader.close()
    assert our_blocks() == []


def test_what_the_reader_never_sees_is_unlinked_by_discard_or_abandon(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, _, prefix = transport
    message = encoder.encode(np.arange(1000, dtype=np.int64))
    assert our_blocks() == [f"{prefix}-0"]
    shm_module.discard(bytes(message))
    assert our_blocks() == []
    shm_module.discard(bytes(shm_module.dumps("a pickle: nothing to unlink")))
    encoder.encode(b"x" * 2000)
    encoder.abandon()
    assert our_blocks() == []


def test_strided_memoryviews_and_small_items_keep_their_values(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, reader, _ = transport
    strided = memoryview(np.arange(4000, dtype=np.int32))[::2]
    assert reader.decode(bytes(encoder.encode(strided))) == (strided.tobytes(), 8000)
    small = memoryview(b"tiny")
    assert reader.decode(bytes(encoder.encode(small))) == (b"tiny", 0)
    small_array = np.arange(10)
    item, size = reader.decode(bytes(encoder.encode(small_array)))
    assert size == 0
    assert np.array_equal(item, small_array)


def test_a_free_block_that_fits_is_taken_so_alternating_sizes_make_no_new_ones(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, reader, prefix = transport
    # Each of these is too small for the other's block: a block per size, then reuse.
    for size in (100_000, 20_000, 100_000, 20_000, 100_000, 20_000):
        item, got = reader.decode(bytes(encoder.encode(b"s" * size)))
        assert (item, got) == (b"s" * size, size)
    assert our_blocks() == [f"{prefix}-0", f"{prefix}-1"]


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def shifted(celsius: Celsius) -> tuple[type[Celsius], tuple[float]]:
    """A reducer that shows it was used: the copy is 1000 degrees warmer."""
    return (Celsius, (celsius.degrees + 1000,))


def test_a_reducer_registered_after_the_first_item_is_used(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, reader, _ = transport
    before, _ = reader.decode(bytes(encoder.encode(Celsius(20.0))))
    assert before.degrees == 20.0
    copyreg.pickle(Celsius, shifted)
    try:
        after, _ = reader.decode(bytes(encoder.encode(Celsius(20.0))))
        assert after.degrees == 1020.0
    finally:
        del copyreg.dispatch_table[Celsius]


def test_an_item_that_fails_to_pickle_leaves_nothing_for_the_next(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
) -> None:
    encoder, reader, _ = transport
    with pytest.raises(TypeError):
        encoder.encode([np.zeros(1000), threading.Lock()])  # its array went out of band
    assert reader.decode(bytes(encoder.encode([1, 2]))) == ([1, 2], 0)
    assert our_blocks() == []


def test_a_name_taken_by_someone_else_is_left_alone_and_the_pipe_used(
    transport: tuple[shm_module.Encoder, shm_module.Reader, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    encoder, reader, prefix = transport
    taken = DEV_SHM / f"{prefix}-0"
    taken.write_bytes(b"not ours")
    try:
        message = encoder.encode(b"z" * 5000)
        assert bytes(message)[0] != shm_module.TAG
        assert reader.decode(bytes(message)) == (b"z" * 5000, 0)
        assert "cannot use shared memory" in caplog.text
        assert taken.read_bytes() == b"not ours"
        # The next name is free: shared memory again.
        assert reader.decode(bytes(encoder.encode(b"y" * 5000))) == (b"y" * 5000, 5000)
    finally:
        taken.unlink()


# --- typing -------------------------------------------------------------------------------

TYPED_USE = """
from collections.abc import Iterator
from dataclasses import dataclass

from splitdataloader import MpQItr


@dataclass
class Batch:
    x: int


def batches(n: int, *, scale: int = 1) -> Iterator[Batch]:
    for i in range(n):
        yield Batch(i * scale)


for batch in MpQItr[Batch](batches, 3, scale=2):
    reveal_type(batch)
for batch in MpQItr[Batch].with_options(num_workers=2, ordered=False)(batches, 3):
    reveal_type(batch)
reveal_type(next(MpQItr(batches, 3)))
MpQItr[Batch](batches, "three")
"""


def test_a_type_checker_sees_the_item_type(tmp_path: Path) -> None:
    snippet = tmp_path / "typed_use.py"
    snippet.write_text(TYPED_USE)
    root = Path(__file__).resolve().parent.parent  # for the project's mypy settings
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(snippet)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line.split(": ", 1)[1] for line in result.stdout.splitlines()]
    assert lines == [
        'note: Revealed type is "typed_use.Batch"',
        'note: Revealed type is "typed_use.Batch"',
        'note: Revealed type is "typed_use.Batch"',
        'error: Argument 2 to "MpQItr" has incompatible type "str"; expected "int"  [arg-type]',
    ], result.stdout + result.stderr
