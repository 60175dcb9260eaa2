"""Generator functions that the prefetch tests run in worker processes.

They live in their own module, not in ``test_prefetch.py``, because a ``spawn`` or
``forkserver`` worker receives the function by name and imports it. That works because
pytest's default ``prepend`` import mode puts this folder on ``sys.path`` and
:mod:`multiprocessing` hands the parent's ``sys.path`` to every worker it starts. Keeping them
here also spares each worker the import of pytest and of the test module.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from splitdataloader import SplitDataLoader
from splitdataloader.prefetch import WorkerInfo, worker_info


def count(n: int) -> Iterator[int]:
    yield from range(n)


def squares(n: int, *, offset: int = 0) -> Iterator[int]:
    for i in range(n):
        yield i * i + offset


def pids(n: int) -> Iterator[int]:
    for _ in range(n):
        yield os.getpid()


def endless_pids() -> Iterator[int]:
    while True:
        yield os.getpid()


def blobs(n: int, size: int) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * size


def fail_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"boom after {n} items")


class NeedsTwoArgsError(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` wants two arguments, ``args`` has one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def fail_unpicklable() -> Iterator[int]:
    yield 1
    raise NeedsTwoArgsError("left", "right")


def exit_during(n: int) -> Iterator[int]:
    yield from range(n)
    raise SystemExit(4)


def unpicklable_item() -> Iterator[object]:
    yield 1
    yield threading.Lock()
    yield 3


def kill_self_after(n: int) -> Iterator[int]:
    yield from range(n)
    # Give the sender thread time to pass the items on: a killed worker loses what it holds.
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
    yield -1  # not reached


def exit_after(n: int, code: int) -> Iterator[int]:
    yield from range(n)
    os._exit(code)


def count_with_cleanup(marker: str) -> Iterator[int]:
    """Yield forever; write ``marker`` when closed, which shows that ``finally`` ran."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        Path(marker).write_text("closed")


def counted_blobs(n: int, size: int, progress: str) -> Iterator[bytes]:
    """Yield ``n`` blobs, recording in ``progress`` how many have been made so far."""
    for i in range(n):
        blob = bytes(size)
        Path(progress).write_text(str(i + 1))
        yield blob


def _refuse_to_rebuild() -> object:
    raise RuntimeError("this argument cannot be rebuilt in a worker")


class RebuildFails:
    """Pickles fine; unpickling it (which only a spawn or forkserver worker does) raises."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_rebuild, ())


def ignore_argument(argument: object) -> Iterator[int]:
    yield 1


def read_shared(value: Any, n: int) -> Iterator[int]:
    """Yield a ``multiprocessing.Value``'s value ``n`` times."""
    for _ in range(n):
        with value.get_lock():
            yield value.value


def batches(path: str, batch_size: int) -> Iterator[list[bytes]]:
    """The README's example generator, as written there."""
    loader = SplitDataLoader(path)
    batch = []
    for record in loader.iterate_binwise(shuffle=True, seed=0):
        batch.append(record)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def loader_records(loader: SplitDataLoader) -> Iterator[bytes]:
    """One record by index, then every record bin-wise: both read paths, in the worker."""
    yield loader[1]
    yield from loader.iterate_binwise()


# --- several workers and shared memory (test_prefetch_workers.py) ---------------------------


def tagged(n: int) -> Iterator[tuple[int, int, int]]:
    """Worker ``w`` of ``c`` yields ``(w, c, i)`` for ``i`` below ``n + w``: uneven lengths."""
    info = worker_info()
    assert info is not None
    for i in range(n + info.id):
        yield (info.id, info.count, i)


def tagged_slowly(n: int) -> Iterator[tuple[int, int, int]]:
    """As :func:`tagged`, with worker 0 much slower than the others."""
    info = worker_info()
    assert info is not None
    for item in tagged(n):
        if info.id == 0:
            time.sleep(0.02)
        yield item


def identify() -> Iterator[tuple[WorkerInfo | None, int]]:
    yield worker_info(), os.getpid()


def fail_in_worker(bad: int, n: int) -> Iterator[tuple[int, int]]:
    """Worker ``bad`` raises after ``n`` items; the others yield without end."""
    info = worker_info()
    assert info is not None
    for i in itertools.count():
        if info.id == bad and i == n:
            raise ValueError(f"worker {bad} fails after {n} items")
        yield (info.id, i)


def kill_worker_after(bad: int, n: int) -> Iterator[tuple[int, int]]:
    """Worker ``bad`` kills itself with SIGKILL after ``n`` items; the others stall there."""
    info = worker_info()
    assert info is not None
    for i in range(n):
        yield (info.id, i)
    if info.id == bad:
        time.sleep(0.3)  # let the sender pass the items on
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def random_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def big_bytes(n: int, size: int) -> Iterator[bytes | bytearray | memoryview]:
    """``random_bytes(i, size)`` for each ``i``, as bytes, bytearray and memoryview in turn."""
    for i in range(n):
        data = random_bytes(i, size)
        yield (data, bytearray(data), memoryview(data))[i % 3]


def batch(seed: int, rows: int) -> dict[str, Any]:
    """A batch of numpy arrays of several layouts and dtypes, about ``rows`` * 12 KiB."""
    rng = np.random.default_rng(seed)
    return {
        "images": np.asfortranarray(rng.random((rows, 1024), dtype=np.float32)),
        "ids": np.arange(seed, seed + rows * 1024, dtype=np.int64).reshape(rows, 1024),
        "labels": rng.integers(0, 10, rows, dtype=np.int8),
        "name": f"batch {seed}",
    }


def batches_of_arrays(n: int, rows: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield batch(i, rows)


def arrays(size: int, n: int | None, *, fail: bool = False) -> Iterator[Any]:
    """Arrays of ``size`` bytes filled with the worker's pid: ``n`` of them, or without end.

    With ``fail``, worker 1 raises after its ``n`` arrays.
    """
    info = worker_info()
    for _ in range(n) if n is not None else itertools.count():
        yield np.full(size // 8, os.getpid(), dtype=np.int64)
    if fail and info is not None and info.id == 1:
        raise ValueError("worker 1 fails")


def counted_arrays(n: int, size: int, progress: str) -> Iterator[Any]:
    """``n`` arrays of ``size`` bytes, recording in ``progress`` how many have been made."""
    for i in range(n):
        array = np.zeros(size // 8, dtype=np.int64)
        Path(progress).write_text(str(i + 1))
        yield array


def not_iterable() -> int:
    return 42


def ignore_keyword(*, lock: object) -> Iterator[int]:
    yield 1


# --- frames of small items and large pickles (test_prefetch_outbox.py) ----------------------


def records(count: int, size: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct records of ``size`` bytes: a list whose pickle is large."""
    return [(seed * 1_000_003 + i).to_bytes(8, "little") * (size // 8) for i in range(count)]


def record_lists(n: int, count: int, size: int) -> Iterator[list[bytes]]:
    for seed in range(n):
        yield records(count, size, seed)


def shared_twice(count: int) -> Iterator[list[list[bytes]]]:
    """An item holding the same list twice, small and then large."""
    for size in (8, 800):
        inner = records(count, size)
        yield [inner, inner]


def mixed_item(kind: int, size: int, seed: int) -> Any:
    """An item of one of four kinds, about ``size`` bytes, made from ``seed``."""
    if kind == 0:
        return random_bytes(seed, size)
    if kind == 1:
        return records(max(1, size // 64), 64, seed)
    if kind == 2:
        return np.arange(seed, seed + max(1, size // 8), dtype=np.int64)
    return (seed, "x" * (size % 100))


def mixed(specs: list[tuple[int, int, int]]) -> Iterator[Any]:
    for kind, size, seed in specs:
        yield mixed_item(kind, size, seed)
