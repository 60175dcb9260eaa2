"""The consumer's side of a prefetch pass: start the workers, receive their items, end them.

A :class:`Run` is one pass of an :class:`~splitdataloader.prefetch.MpQItr`: it starts the
worker processes (:func:`splitdataloader.prefetch_worker.worker_main`) with a one-way pipe
from each, reads their frames (:mod:`splitdataloader.prefetch_messages`), decodes each item only
when it is handed out, hands out items in turn (``ordered``) or as they come, raises a generator's
exception with the worker's traceback, raises :class:`~splitdataloader.errors.WorkerDiedError`
when a worker ends without its last message, and on :meth:`Run.close` stops the workers
(politely first), frees their shared memory and closes the pipes. It knows nothing of the
options' defaults or of what the items are.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from splitdataloader import shm
from splitdataloader.errors import WorkerDiedError
from splitdataloader.prefetch_messages import Done, Failure, label, split
from splitdataloader.prefetch_worker import MAX_SLOTS, Job, Setup, WorkerInfo, worker_main

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

__all__ = ["END", "Counts", "Run"]

logger = logging.getLogger(__name__)


class _End:
    """Returned by :meth:`Run.receive` when every worker has sent its last item."""


#: What :meth:`Run.receive` returns once every worker has sent its last item.
END = _End()


class Counts:
    """The running totals behind :class:`PrefetchStats`."""

    def __init__(self) -> None:
        self.items = 0
        self.shm_items = 0
        self.shm_bytes = 0
        self.pipe_bytes = 0


class _Waiter:
    """Waits until some of a set of pipes and process sentinels can be read."""

    def __init__(self) -> None:
        # One poll object kept up to date costs far less per item than connection.wait(),
        # which builds a selector on every call; wait() remains for systems without poll.
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._objects: dict[int, object] = {}

    def add(self, key: int, obj: object) -> None:
        """Watch ``obj`` (a connection or a sentinel), known by the file descriptor ``key``."""
        self._objects[key] = obj
        if self._poll is not None:
            self._poll.register(key, select.POLLIN)

    def discard(self, key: int) -> None:
        if self._objects.pop(key, None) is not None and self._poll is not None:
            self._poll.unregister(key)

    def wait(self) -> set[int]:
        """Block until something is ready; the keys of what is (data, end-of-file or exit)."""
        if self._poll is not None:
            return {fd for fd, _ in self._poll.poll()}
        objects: list[Any] = list(self._objects.values())
        ready = wait(objects)
        return {key for key, obj in self._objects.items() if obj in ready}


class _Worker:
    """The consumer's side of one worker: its process, the read end of its pipe, its state."""

    def __init__(
        self, wid: int, process: BaseProcess, conn: Connection, reader: shm.Reader
    ) -> None:
        self.id = wid
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()
        self.sentinel: int = process.sentinel
        self.pid: int | None = process.pid
        # Turns messages into items; owns the shared memory blocks it has opened.
        self.reader = reader
        # Its last message (the end of its items, or its exception) has been read.
        self.done = False
        # Its process was seen to end while waiting for another worker (ordered passes).
        self.exited = False
        # Ordered passes: waits for this worker's pipe and for the exit of any worker.
        self.waiter = _Waiter()
        # The messages of the last frame read that are not decoded yet, last first.
        self.pending: list[bytes | memoryview] = []


class Run:
    """One pass: the worker processes and the read ends of their pipes."""

    def __init__(
        self,
        ctx: BaseContext,
        itr_func: Callable[..., Iterable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        qsize: int,
        stop_timeout: float,
        num_workers: int,
        ordered: bool,
        shm_threshold: int | None,
    ) -> None:
        self.label = label(itr_func)
        self.stop_timeout = stop_timeout
        self.ordered = ordered
        self.closed = False
        self.counts = Counts()
        self.workers: list[_Worker] = []
        self.shm_prefix = shm.new_prefix() if shm_threshold and shm.SUPPORTED else None
        self._owner_pid = os.getpid()
        # The workers whose items have not run out, and where the round stands among them.
        self._active: list[_Worker] = []
        self._turn = 0
        self._by_sentinel: dict[int, _Worker] = {}
        self._waiter = _Waiter()  # unordered passes: every pipe and every sentinel
        method = ctx.get_start_method()
        job = Job((itr_func, args, kwargs), method=method)
        if self.shm_prefix is not None:
            shm.prepare()
        try:
            for wid in range(num_workers):
                self.workers.append(
                    self._start_worker(
                        ctx, job, WorkerInfo(wid, num_workers), qsize, shm_threshold or 0
                    )
                )
        except BaseException:
            self.close()
            raise
        self._active = list(self.workers)
        for worker in self.workers:
            self._by_sentinel[worker.sentinel] = worker
            if ordered:
                worker.waiter.add(worker.fd, worker.conn)
                for other in self.workers:
                    worker.waiter.add(other.sentinel, other.sentinel)
            else:
                self._waiter.add(worker.fd, worker.conn)
                self._waiter.add(worker.sentinel, worker.sentinel)
        logger.debug("started prefetch workers %s (pids %s)", self.label, self.pids)

    @property
    def pid(self) -> int | None:
        return self.workers[0].pid if self.workers else None

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid for worker in self.workers]

    def _start_worker(
        self, ctx: BaseContext, job: Job, info: WorkerInfo, qsize: int, shm_threshold: int
    ) -> _Worker:
        reader, writer = ctx.Pipe(duplex=False)
        # The pipe on which the consumer returns shared memory blocks to the worker.
        free_reader = free_writer = None
        if self.shm_prefix is not None:
            free_reader, free_writer = ctx.Pipe(duplex=False)
        # A forked worker inherits this process's ends of the pipes of the workers started
        # before it; it closes them, so that only this process reads (or, by closing, ends)
        # those pipes.
        inherited: list[int] = []
        if ctx.get_start_method() == "fork":
            for started in self.workers:
                inherited.append(started.fd)
                inherited.extend(started.reader.fds())
        setup = Setup(
            info=info,
            qsize=qsize,
            shm_prefix=None if self.shm_prefix is None else f"{self.shm_prefix}-{info.id}",
            shm_threshold=shm_threshold,
            free=free_reader,
            slots=min(qsize, MAX_SLOTS),
            close_fds=tuple(inherited),
        )
        suffix = f"-{info.id}" if info.count > 1 else ""
        process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(reader, writer, setup, job),
            name=f"MpQItr-{self.label}{suffix}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            reader.close()
            if free_writer is not None:
                free_writer.close()
            raise
        finally:
            # Only the worker may hold the write end: then its death reads as end-of-file.
            writer.close()
            if free_reader is not None:
                free_reader.close()
        return _Worker(info.id, process, reader, shm.Reader(free_writer))

    def receive(self) -> Any:
        """Return the next item, or ``END`` once every worker has sent its last item.

        Raises
        ------
        WorkerDiedError
            When a worker ended without sending its last message.
        Exception
            What a generator raised.
        """
        active = self._active
        while active:
            index = self._turn
            worker = active[index]
            pending = worker.pending
            if not pending:
                index = self._wait_and_read(index)
                worker = active[index]
                pending = worker.pending
            message = pending.pop()
            counts = self.counts
            if message[0] == shm.TAG:
                item, size = worker.reader.decode(message)
                counts.shm_items += 1
                counts.shm_bytes += size
            else:
                item = pickle.loads(message)
                kind = type(item)
                if kind is Done or kind is Failure:
                    self._retire(index)
                    if kind is Failure:
                        raise item.to_exception(self._where(worker), worker.pid, self.label)
                    continue
            counts.items += 1
            index += 1
            self._turn = index if index < len(active) else 0
            return item
        return END

    def _wait_and_read(self, index: int) -> int:
        """Make pending messages of the worker whose turn it is (ordered passes) or of the
        next one that has some or sends some (unordered), waiting; its index in ``_active``."""
        if self.ordered:
            self._ready_in_turn()
        else:
            index = self._ready_any()
        worker = self._active[index]
        if not worker.pending:
            self._read(worker)
        return index

    def _read(self, worker: _Worker) -> None:
        """Read the next frame of ``worker`` into its pending messages."""
        try:
            frame = worker.conn.recv_bytes()
        except (EOFError, OSError):  # OSError: end-of-file in the middle of a message
            raise self._died(worker) from None
        self.counts.pipe_bytes += len(frame)
        worker.pending = split(frame)

    def _ready_in_turn(self) -> None:
        """Wait until the worker whose turn it is can be read (it has no pending messages)."""
        worker = self._active[self._turn]
        if worker.exited:
            # Everything it sent is in its pipe, followed by end-of-file: poll() sees either.
            if not worker.conn.poll(0):
                raise self._died(worker)
            return
        while True:
            ready = worker.waiter.wait()
            readable = worker.fd in ready
            for key in ready:
                other = self._by_sentinel.get(key)
                if other is None:
                    continue
                if other is worker:
                    if not readable:
                        raise self._died(worker)
                    continue
                # Another worker ended: an error now, not when its turn comes, if it failed.
                other.exited = True
                for each in self.workers:
                    each.waiter.discard(other.sentinel)
                other.process.join(self.stop_timeout)
                if other.process.exitcode != 0:
                    raise self._died(other)
            if readable:
                return

    def _ready_any(self) -> int:
        """The index in ``_active`` of the next worker, in turn, with pending messages, or
        else of the next one that can be read, waiting for one."""
        active = self._active
        count = len(active)
        for step in range(1, count):
            index = (self._turn + step) % count
            if active[index].pending:
                return index
        while True:
            ready = self._waiter.wait()
            for key in ready:
                other = self._by_sentinel.get(key)
                # Data a worker sent before it exited is ready in the same call.
                if other is not None and other.fd not in ready:
                    raise self._died(other)
            for step in range(count):
                index = (self._turn + step) % count
                if active[index].fd in ready:
                    return index

    def _retire(self, index: int) -> None:
        worker = self._active.pop(index)
        worker.done = True
        worker.reader.close()
        self._turn = index % len(self._active) if self._active else 0
        self._waiter.discard(worker.fd)
        self._waiter.discard(worker.sentinel)
        for each in self.workers:
            each.waiter.discard(worker.sentinel)

    def _where(self, worker: _Worker) -> str:
        if len(self.workers) == 1:
            return f"prefetch worker process {worker.pid}"
        return f"prefetch worker {worker.id} of {len(self.workers)} (process {worker.pid})"

    def _died(self, worker: _Worker) -> WorkerDiedError:
        worker.process.join(self.stop_timeout)
        code = worker.process.exitcode
        if code is None:
            how = "closed its pipe but is still running"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name} (exit code {code})"
        else:
            how = f"exited with exit code {code}"
        hint = ""
        if code is not None and -code == getattr(signal, "SIGKILL", None):
            hint = "; SIGKILL often comes from the out-of-memory killer"
        return WorkerDiedError(
            f"{self._where(worker)} running {self.label} {how} before the end of its items{hint}",
            pid=worker.pid,
            exitcode=code,
        )

    def close(self) -> None:
        """End the workers (politely first), free their shared memory and close the pipes.

        Safe to call more than once.
        """
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self._owner_pid:
            # A forked copy of the consumer: the workers are not this process's children, and
            # what is in the pipes is not this process's to read.
            for worker in self.workers:
                worker.conn.close()
            return
        self._stop_workers()
        for worker in self.workers:
            if self.shm_prefix is not None:
                for message in worker.pending:
                    shm.discard(message)
                _drain(worker.conn)
            worker.pending = []
            worker.reader.close()
            worker.conn.close()
            worker.process.close()
        if self.shm_prefix is not None:
            # The blocks of workers killed between making a block and sending its descriptor.
            swept = shm.sweep(self.shm_prefix)
            if swept:
                logger.debug("unlinked %d shared memory blocks left by %s", len(swept), self.label)

    def _stop_workers(self) -> None:
        processes = [worker.process for worker in self.workers]
        for worker in self.workers:
            # One that sent its last message is exiting on its own.
            if not worker.done and worker.process.is_alive():
                logger.debug("stopping prefetch worker %s (pid %s)", self.label, worker.pid)
                worker.process.terminate()
        deadline = time.monotonic() + self.stop_timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                logger.warning(
                    "prefetch worker %s (pid %s) did not stop within %.1f s; killing it",
                    self.label,
                    process.pid,
                    self.stop_timeout,
                )
                process.kill()
                process.join()


def _drain(conn: Connection) -> None:
    """Unlink the blocks of the descriptors still in a pipe whose writer has exited."""
    # Non-blocking: a message cut short by a killed worker, or a write end that some other
    # process inherited, must not make close() wait.
    try:
        os.set_blocking(conn.fileno(), False)
        while True:
            for message in split(conn.recv_bytes()):
                shm.discard(message)
    except (EOFError, OSError):
        pass
