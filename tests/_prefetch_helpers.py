"""Generator functions that the prefetch tests run in worker processes.

They live in their own module, not in ``test_prefetch.py``, because a ``spawn`` or
``forkserver`` worker receives the function by name and imports it. That works because
pytest's default ``prepend`` import mode puts this folder on ``sys.path`` and
:mod:`multiprocessing` hands the parent's ``sys.path`` to every worker it starts. Keeping them
here also spares each worker the import of pytest and of the test module.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from splitdataloader import SplitDataLoader


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
