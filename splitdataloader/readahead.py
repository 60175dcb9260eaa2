"""Read-ahead: fetch the byte ranges an iteration will ask for next, while it consumes.

A :class:`ReadAhead` is given the plan of an iteration (the ordered byte ranges it is
going to read: index ranges and whole segments) and keeps the next ones in flight,
up to a budget of bytes and a number of concurrent requests. The consumer calls
:meth:`ReadAhead.read` with the range it needs; it gets the prefetched bytes (waiting
only if they have not arrived yet), and the window moves on. A planned range that the
consumer reads in pieces (a whole index part, looked up bin by bin) stays resident
until the read-ahead closes. A range that no planned one covers is read directly, so a
plan that is wrong costs speed, never correctness.

Ranges larger than a part are fetched as several parts concurrently. On asynchronous
filesystems (s3fs and other fsspec ``AsyncFileSystem``) requests run as coroutines on
the filesystem's own event loop; on the others, in a small thread pool. Through a local
cache (``simplecache::``, ``filecache::``) requests run one at a time, whole: every
request for a file not yet cached downloads all of it into one cache file, and two
downloads of the same file at once would read each other's half-written bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import objectstore

if TYPE_CHECKING:
    from .storage import Storage

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_READ_AHEAD_BYTES",
    "PART_BYTES",
    "ByteRange",
    "ReadAhead",
]

#: Bytes of planned reads kept in flight or waiting to be consumed.
DEFAULT_READ_AHEAD_BYTES = 64 << 20
#: Requests in flight at once.
DEFAULT_CONCURRENCY = 16
#: Ranges larger than this are fetched as parts of this size, concurrently.
PART_BYTES = 8 << 20

ByteRange = tuple[str, int, int]  # name relative to the dataset root, start, end


class _Pending:
    __slots__ = ("futures", "key", "size")

    def __init__(self, key: ByteRange, futures: list[Future[bytes]]) -> None:
        self.key = key
        self.futures = futures
        self.size = key[2] - key[1]


class ReadAhead:
    """Prefetches the ranges of ``plan`` in order, within a budget.

    Parameters
    ----------
    storage
        Where the ranges are read from.
    plan
        The ranges the consumer will ask for, in the order it will ask (lazily consumed).
    max_bytes
        Most bytes requested ahead of the consumer (at least one range is always in
        flight, however large).
    concurrency
        Most requests in flight at once.
    """

    def __init__(
        self,
        storage: Storage,
        plan: Iterable[ByteRange],
        *,
        max_bytes: int = DEFAULT_READ_AHEAD_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._storage = storage
        self._plan: Iterator[ByteRange] | None = iter(plan)
        self._max_bytes = max_bytes
        self._concurrency = 1 if storage.is_cache else max(1, concurrency)
        self._part_bytes = (1 << 62) if storage.is_cache else PART_BYTES
        self._queue: deque[_Pending] = deque()
        self._resident: dict[str, tuple[int, bytes]] = {}
        self._ahead = 0
        self._requests = 0
        fs = storage.fs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        if (
            not storage.is_cache
            and getattr(fs, "async_impl", False)
            and getattr(fs, "loop", None) is not None
        ):
            self._loop = fs.loop
        else:
            self._pool = ThreadPoolExecutor(
                self._concurrency, thread_name_prefix="splitdataloader-readahead"
            )

    # ------------------------------------------------------------------ fetching

    def _submit(self, path: str, start: int, end: int) -> Future[bytes]:
        fs = self._storage.fs
        if self._loop is not None:
            coroutine = fs._cat_file(path, start=start, end=end)
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        assert self._pool is not None  # one of the two is set at construction
        return self._pool.submit(fs.cat_file, path, start=start, end=end)

    def _fill(self) -> None:
        while self._plan is not None and (
            not self._queue
            or (self._ahead < self._max_bytes and self._requests < self._concurrency)
        ):
            key = next(self._plan, None)
            if key is None:
                self._plan = None
                return
            name, start, end = key
            path = self._storage.path(name)
            part = self._part_bytes
            futures = [
                self._submit(path, lo, min(lo + part, end)) for lo in range(start, end, part)
            ] or [self._done(b"")]
            self._queue.append(_Pending(key, futures))
            self._ahead += end - start
            self._requests += len(futures)

    @staticmethod
    def _done(data: bytes) -> Future[bytes]:
        future: Future[bytes] = Future()
        future.set_result(data)
        return future

    def _collect(self, pending: _Pending) -> bytes:
        name, start, end = pending.key
        parts: list[bytes] = []
        for k, future in enumerate(pending.futures):
            lo = start + k * self._part_bytes
            try:
                parts.append(future.result())
            except FileNotFoundError as err:
                raise self._storage.missing(name) from err
            except Exception as err:
                if objectstore.http_status(err) == 416:
                    parts.append(b"")
                    continue
                raise self._storage.failed(
                    name, f"reading bytes {lo}-{min(lo + self._part_bytes, end)} of", err
                ) from err
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ------------------------------------------------------------------ consuming

    def read(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``name``: prefetched when planned, else read now."""
        resident = self._resident.get(name)
        if resident is not None:
            base, data = resident
            if base <= start and end - base <= len(data):
                return data[start - base : end - base]
        self._fill()
        found = -1
        for k, pending in enumerate(self._queue):
            other, lo, hi = pending.key
            if other == name and lo <= start and end <= hi:
                found = k
                break
        if found < 0:
            return self._storage.read_range(name, start, end)
        for _ in range(found):  # planned ranges the consumer skipped
            self._release(self._queue.popleft(), cancel=True)
        pending = self._queue.popleft()
        self._release(pending, cancel=False)
        self._fill()
        data = self._collect(pending)
        if pending.key == (name, start, end):
            return data
        base = pending.key[1]
        self._resident[name] = (base, data)
        return data[start - base : end - base]

    def _release(self, pending: _Pending, *, cancel: bool) -> None:
        self._ahead -= pending.size
        self._requests -= len(pending.futures)
        if cancel:
            self._cancel(pending)

    # ------------------------------------------------------------------ cleanup

    @staticmethod
    def _cancel(pending: _Pending) -> None:
        for future in pending.futures:
            future.cancel()

    def close(self) -> None:
        """Cancel everything still in flight and release the threads."""
        self._plan = None
        self._resident.clear()
        while self._queue:
            self._cancel(self._queue.popleft())
        self._ahead = self._requests = 0
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
