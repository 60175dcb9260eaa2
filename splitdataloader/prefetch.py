"""Run a generator in worker processes and hand its items to the consumer through pipes.

:class:`MpQItr` owns the worker processes of a pass, a pipe from each, and the shutdown of
all of them: items cross as pickles (large ones through shared memory, see
:mod:`splitdataloader.shm`), an exception in a generator is raised again in the consumer with
the worker's traceback, a worker that dies makes the consumer raise instead of wait, and
leaving a loop early ends the workers and frees their shared memory. It does not know what the
items are, and it does no I/O of its own.

Items travel over one-way :func:`multiprocessing.Pipe` s rather than a
:class:`multiprocessing.Queue`, for two reasons. A worker pickles each item in the thread that
runs the generator, so an item that cannot be pickled raises there (a queue pickles in a
background thread that only prints the error and drops the item). And the consumer holds no
copy of a pipe's write end, so a worker that dies halfway through sending an item is seen as
end-of-file (a queue's reader would wait forever for the rest of the message).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import reprlib
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from traceback import format_exception
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, cast

from splitdataloader import shm
from splitdataloader.errors import WorkerDiedError, WorkerError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from types import FrameType
    from typing import TypeAlias

    _Call: TypeAlias = tuple[Callable[..., Iterable[Any]], tuple[Any, ...], dict[str, Any]]

__all__ = [
    "MpQItr",
    "PrefetchStats",
    "WorkerDiedError",
    "WorkerError",
    "WorkerInfo",
    "worker_info",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_P = ParamSpec("_P")
_SelfT = TypeVar("_SelfT", bound="MpQItr[Any]")

# How often a blocked worker checks that its consumer is still there (seconds).
_WORKER_CHECK_INTERVAL = 0.5
# The most shared memory blocks a worker has in flight, whatever qsize: the slots the
# consumer returns must fit in the pipe buffer (64 KiB on Linux, 16 KiB on macOS).
_MAX_SLOTS = 1024


class WorkerInfo(NamedTuple):
    """Which worker of a pass the calling code runs in; see :func:`worker_info`."""

    #: From 0 to ``count - 1``.
    id: int
    #: The number of workers of the pass (the ``num_workers`` option). The name hides
    #: ``tuple.count``, which nobody counts on here.
    count: int  # type: ignore[assignment]


_worker_info: WorkerInfo | None = None


def worker_info() -> WorkerInfo | None:
    """In an :class:`MpQItr` worker, its id and the number of workers; elsewhere ``None``.

    Every worker of a pass calls the same generator function with the same arguments; the
    function calls this to take its share of the work.

    Examples
    --------
    >>> def shard(n):
    ...     info = worker_info() or WorkerInfo(0, 1)
    ...     yield from range(info.id, n, info.count)
    >>> sorted(MpQItr[int].with_options(num_workers=2)(shard, 6))  # doctest: +SKIP
    [0, 1, 2, 3, 4, 5]
    """
    return _worker_info


class PrefetchStats(NamedTuple):
    """What the consumer has received in the current or last pass; see :attr:`MpQItr.stats`."""

    #: Items handed to the consumer.
    items: int
    #: How many of them came through shared memory.
    shm_items: int
    #: Bytes copied out of shared memory.
    shm_bytes: int
    #: Bytes read from the pipes: pickled items, shared memory descriptors, end messages.
    pipe_bytes: int


class _Keep:
    """The default of :meth:`MpQItr.with_options` arguments for which ``None`` means "off"."""

    def __repr__(self) -> str:
        return "<class default>"


_KEEP = _Keep()


class MpQItr(Generic[T]):
    """Iterate over ``itr_func(*args, **kwargs)`` run in separate processes.

    Iterating starts a *pass*: :attr:`num_workers` daemon worker processes that each call the
    generator function and send each item it yields to this process, each running up to
    about :attr:`qsize` items ahead of the consumer. While a pass is under way, ``iter()``
    returns the iterator as it is, so a loop after a ``break`` goes on where the last one
    stopped, as with a generator; once a pass has ended, the next ``iter()`` (the next ``for``
    loop) starts a fresh one. Items and the function with its arguments must pickle; under the
    ``spawn`` and ``forkserver`` start methods the function must also be importable by name
    (defined at the top level of a module).

    Parameters
    ----------
    itr_func
        A function returning an iterable, typically a generator function.
    *args, **kwargs
        Passed to ``itr_func`` unchanged, which is why the options below are not keyword
        arguments of the constructor.

    Attributes
    ----------
    qsize : int
        How many items each worker prepares ahead of the consumer, at least 1 (default 16),
        plus whatever fits in the operating system's pipe buffer (64 KiB on Linux). Items in
        shared memory count against it until the consumer has taken them.
    start_method : str or None
        ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``None`` (the default) uses the current
        default context of :mod:`multiprocessing`.
    stop_timeout : float
        Seconds a worker asked to stop gets to finish (its generator's ``finally`` blocks run)
        before it is killed (default 2.0).
    num_workers : int
        How many worker processes run the generator function (default 1). Each calls it with
        the same arguments and learns which share of the work is its own from
        :func:`worker_info`; the items of all of them make up the pass.
    ordered : bool
        With several workers, ``True`` (the default) takes one item from worker 0, then one
        from worker 1, and so on round, skipping workers whose items have run out: the order
        depends only on what each generator yields. ``False`` takes whichever item is ready
        first, so a slow item holds up nothing else.
    shm_threshold : int or None
        Items of at least this many bytes (default 1 MiB) travel through shared memory rather
        than the pipe: ``bytes``, ``bytearray`` and ``memoryview`` items (a memoryview arrives
        as bytes), and objects whose pickle has out-of-band buffers of that size in total, such
        as numpy arrays. The consumer copies each payload into a fresh object and frees the
        block at once, so items never refer to shared memory (the arrays of one item share one
        bytearray). ``0`` or ``None`` turns it off; so does Windows. Blocks are named
        ``sdl-<consumer pid>-<random>-…`` and live in ``/dev/shm`` on Linux; when /dev/shm is
        full or missing, items go through the pipe and the worker logs a warning.

    Notes
    -----
    Options are attributes with class-level defaults. Set them on an instance before iterating
    (``it.qsize = 64``, as in 0.0.1), pick them in one expression with :meth:`with_options`,
    or change the defaults in a subclass (``class Prefetch(MpQItr[T]): start_method =
    "spawn"``). A change takes effect at the next ``iter()``.

    The workers end, the pipes are closed and the shared memory is freed when the items run
    out, when a generator raises, on :meth:`close`, when a ``with`` block ends, and when the
    iterator is garbage collected (e.g. after ``break`` out of ``for x in MpQItr(...)``).
    After the end of a pass, ``next()`` keeps raising :class:`StopIteration` until the next
    ``iter()``; to start over before the end, call :meth:`close` and iterate again. An
    instance is not meant to be shared between threads.

    Raises
    ------
    TypeError
        From the constructor, when ``itr_func`` is not callable; from ``next()``, when it
        returned something that is not iterable.
    pickle.PicklingError
        From ``iter()`` under ``spawn`` and ``forkserver``, before any worker starts, when the
        function or an argument cannot be pickled; the message names which.
    WorkerDiedError
        From ``next()``, when a worker exits or is killed before the end of its items.
    WorkerError
        From ``next()``, when a generator raised an exception that cannot be sent back.
    Exception
        From ``next()``, the exception a generator raised, when it pickles, with a
        :class:`WorkerError` as its ``__cause__``.

    Examples
    --------
    >>> def squares(n, *, offset=0):
    ...     for i in range(n):
    ...         yield i * i + offset
    >>> list(MpQItr[int](squares, 4, offset=1))  # doctest: +SKIP
    [1, 2, 5, 10]
    >>> for batch in MpQItr[int].with_options(qsize=4)(squares, 100):  # doctest: +SKIP
    ...     pass
    """

    qsize: int = 16
    start_method: str | None = None
    stop_timeout: float = 2.0
    num_workers: int = 1
    ordered: bool = True
    shm_threshold: int | None = 1 << 20

    def __init__(
        self, itr_func: Callable[_P, Iterable[T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> None:
        if not callable(itr_func):
            raise TypeError(
                "MpQItr needs a function that returns an iterable, such as a generator "
                f"function; got {type(itr_func).__name__} {reprlib.repr(itr_func)}"
            )
        self.itr_func = itr_func
        self.args = args
        self.kwargs = kwargs
        self._run: _Run | None = None
        self._finalizer: weakref.finalize[[], MpQItr[T]] | None = None

    @classmethod
    def with_options(
        cls: type[_SelfT],
        *,
        qsize: int | None = None,
        start_method: str | None = None,
        stop_timeout: float | None = None,
        num_workers: int | None = None,
        ordered: bool | None = None,
        shm_threshold: int | _Keep | None = _KEEP,
    ) -> Callable[..., _SelfT]:
        """Return a constructor that builds iterators with the given options set.

        Parameters
        ----------
        qsize, start_method, stop_timeout, num_workers, ordered
            As the attributes of the same names; ``None`` keeps the class default.
        shm_threshold
            As the attribute: ``None`` or ``0`` turns shared memory off; left out, the class
            default stays.

        Returns
        -------
        Callable
            Takes ``(itr_func, *args, **kwargs)`` like the class itself.

        Raises
        ------
        TypeError, ValueError
            When an option is of the wrong type or out of range.

        Examples
        --------
        >>> spawned = MpQItr.with_options(start_method="spawn", qsize=64)  # doctest: +SKIP
        >>> for batch in spawned(make_batches, "train", batch_size=32):  # doctest: +SKIP
        ...     train(batch)
        """
        options: dict[str, Any] = {
            "qsize": qsize,
            "start_method": start_method,
            "stop_timeout": stop_timeout,
            "num_workers": num_workers,
            "ordered": ordered,
        }
        options = {name: value for name, value in options.items() if value is not None}
        if not isinstance(shm_threshold, _Keep):
            options["shm_threshold"] = shm_threshold
        _check_options(**{**_options_of(cls), **options})

        def build(itr_func: Callable[..., Any], *args: Any, **kwargs: Any) -> _SelfT:
            iterator = cls(itr_func, *args, **kwargs)
            for name, value in options.items():
                setattr(iterator, name, value)
            return iterator

        return build

    @property
    def pid(self) -> int | None:
        """The process id of the (first) worker of the current or last pass, ``None`` before."""
        return None if self._run is None else self._run.pid

    @property
    def pids(self) -> tuple[int | None, ...]:
        """The process ids of the workers of the current or last pass, ``()`` before."""
        return () if self._run is None else tuple(w.pid for w in self._run.workers)

    @property
    def stats(self) -> PrefetchStats:
        """Counts of what the current or last pass has delivered, all 0 before the first."""
        if self._run is None:
            return PrefetchStats(0, 0, 0, 0)
        counts = self._run.counts
        return PrefetchStats(counts.items, counts.shm_items, counts.shm_bytes, counts.pipe_bytes)

    def __iter__(self: _SelfT) -> _SelfT:
        run = self._run
        if run is None or run.closed:
            self._start()
        return self

    def __next__(self) -> T:
        run = self._run
        if run is None:
            # next() without iter(), as on a fresh 0.0.1 object: start the first pass.
            run = self._start()
        if run.closed:
            raise StopIteration
        try:
            item = run.receive()
        except BaseException:
            self.close()
            raise
        if item is _END:
            self.close()
            raise StopIteration
        return cast("T", item)

    def close(self) -> None:
        """Stop the workers of the current pass, if any, wait for them to exit, close the pipes.

        Calling it again, or after the end of a pass, does nothing.
        """
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def __enter__(self: _SelfT) -> _SelfT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        run = self._run
        if run is None:
            state = "not started"
        else:
            pids = ", ".join(str(w.pid) for w in run.workers)
            plural = "s" if len(run.workers) > 1 else ""
            state = f"{'ended' if run.closed else 'running'}, worker pid{plural} {pids}"
        workers = f" num_workers={self.num_workers}" if self.num_workers != 1 else ""
        return (
            f"<{type(self).__name__} {_label(self.itr_func)} qsize={self.qsize}{workers} "
            f"start_method={self.start_method!r} {state}>"
        )

    def _start(self) -> _Run:
        options = _options_of(self)
        _check_options(**options)
        ctx = multiprocessing.get_context(options.pop("start_method"))
        run = _Run(ctx, self.itr_func, self.args, self.kwargs, **options)
        self._run = run
        # The finalizer holds the run, never self, so that garbage collection can reach it.
        self._finalizer = weakref.finalize(self, run.close)
        return run


def _options_of(source: object) -> dict[str, Any]:
    """The option attributes of an :class:`MpQItr` class or instance."""
    names = ("qsize", "start_method", "stop_timeout", "num_workers", "ordered", "shm_threshold")
    return {name: getattr(source, name) for name in names}


def _check_options(
    *,
    qsize: object,
    start_method: object,
    stop_timeout: object,
    num_workers: object,
    ordered: object,
    shm_threshold: object,
) -> None:
    for name, value, least in (("qsize", qsize, 1), ("num_workers", num_workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(
            f"start_method must be None or one of {', '.join(methods)}; got {start_method!r}"
        )
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float):
        raise TypeError(f"stop_timeout must be a number, not {type(stop_timeout).__name__}")
    if not stop_timeout >= 0:
        raise ValueError(f"stop_timeout must be >= 0 seconds, got {stop_timeout}")
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, not {type(ordered).__name__}")
    if shm_threshold is not None:
        if isinstance(shm_threshold, bool) or not isinstance(shm_threshold, int):
            raise TypeError(
                f"shm_threshold must be an int or None, not {type(shm_threshold).__name__}"
            )
        if shm_threshold < 0:
            raise ValueError(f"shm_threshold must be >= 0 bytes (0: off), got {shm_threshold}")


def _label(itr_func: object) -> str:
    name = getattr(itr_func, "__qualname__", None)
    return name if isinstance(name, str) else repr(itr_func)


def _qualified_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class _End:
    """Returned by :meth:`_Run.receive` when every worker has sent its last item."""


_END = _End()


class _Done:
    """Sent by a worker after its last item."""


class _Failure:
    """Sent by a worker when its generator raised: everything needed to raise it here."""

    def __init__(self, exc_type: str, message: str, traceback: str, pickled: bytes | None) -> None:
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        # The exception itself, when it survived a pickle round trip in the worker.
        self.pickled = pickled

    @classmethod
    def from_exception(cls, exc: BaseException) -> _Failure:
        text = "".join(format_exception(type(exc), exc, exc.__traceback__))
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not hide the original error
            message = "<str() failed>"
        pickled: bytes | None = None
        if isinstance(exc, Exception):
            try:
                data = bytes(shm.dumps(exc))
                # Loading here catches exceptions whose __init__ cannot be called again.
                pickle.loads(data)
            except Exception:
                logger.debug("%s does not pickle; sending its text only", type(exc))
            else:
                pickled = data
        return cls(_qualified_name(type(exc)), message, text, pickled)

    def to_exception(self, where: str, pid: int | None, label: str) -> BaseException:
        summary = f"{self.exc_type}: {self.message}" if self.message else self.exc_type
        error = WorkerError(
            f"{label} raised {summary}\nin {where}; the worker's traceback:\n"
            f"{self.traceback.rstrip()}",
            pid=pid,
            traceback=self.traceback,
            exc_type=self.exc_type,
        )
        if self.pickled is None:
            return error
        try:
            original = pickle.loads(self.pickled)
        except Exception:  # e.g. its class cannot be imported in this process
            return error
        if not isinstance(original, Exception):
            return error
        original.__cause__ = error
        return original


class _Counts:
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


class _Run:
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
        self.label = _label(itr_func)
        self.stop_timeout = stop_timeout
        self.ordered = ordered
        self.closed = False
        self.counts = _Counts()
        self.workers: list[_Worker] = []
        self.shm_prefix = shm.new_prefix() if shm_threshold and shm.SUPPORTED else None
        self._owner_pid = os.getpid()
        # The workers whose items have not run out, and where the round stands among them.
        self._active: list[_Worker] = []
        self._turn = 0
        self._by_sentinel: dict[int, _Worker] = {}
        self._waiter = _Waiter()  # unordered passes: every pipe and every sentinel
        method = ctx.get_start_method()
        job = _Job((itr_func, args, kwargs), method=method)
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
        self, ctx: BaseContext, job: _Job, info: WorkerInfo, qsize: int, shm_threshold: int
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
        setup = _Setup(
            info=info,
            qsize=qsize,
            shm_prefix=None if self.shm_prefix is None else f"{self.shm_prefix}-{info.id}",
            shm_threshold=shm_threshold,
            free=free_reader,
            slots=min(qsize, _MAX_SLOTS),
            close_fds=tuple(inherited),
        )
        suffix = f"-{info.id}" if info.count > 1 else ""
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
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
        """Return the next item, or ``_END`` once every worker has sent its last item.

        Raises
        ------
        WorkerDiedError
            When a worker ended without sending its last message.
        Exception
            What a generator raised.
        """
        counts = self.counts
        while self._active:
            index = self._ready_in_turn() if self.ordered else self._ready_any()
            worker = self._active[index]
            try:
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):  # OSError: end-of-file in the middle of a message
                raise self._died(worker) from None
            counts.pipe_bytes += len(data)
            item, from_shm = worker.reader.decode(data)
            if from_shm:
                counts.shm_items += 1
                counts.shm_bytes += from_shm
            elif type(item) is _Done:
                self._retire(index)
                continue
            elif type(item) is _Failure:
                self._retire(index)
                raise item.to_exception(self._where(worker), worker.pid, self.label)
            counts.items += 1
            self._turn = (index + 1) % len(self._active)
            return item
        return _END

    def _ready_in_turn(self) -> int:
        """Wait until the worker whose turn it is can be read; its index in ``_active``."""
        index = self._turn
        worker = self._active[index]
        if worker.exited:
            # Everything it sent is in its pipe, followed by end-of-file: poll() sees either.
            if not worker.conn.poll(0):
                raise self._died(worker)
            return index
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
                return index

    def _ready_any(self) -> int:
        """Wait until any worker can be read, taking them in turn; its index in ``_active``."""
        active = self._active
        while True:
            ready = self._waiter.wait()
            for key in ready:
                other = self._by_sentinel.get(key)
                # Data a worker sent before it exited is ready in the same call.
                if other is not None and other.fd not in ready:
                    raise self._died(other)
            count = len(active)
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
                _drain(worker.conn)
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
            shm.discard(conn.recv_bytes())
    except (EOFError, OSError):
        pass


# --- the worker side ------------------------------------------------------------------------


class _StopRequested(BaseException):
    """Raised in the worker by SIGTERM, so that the generator's ``finally`` blocks run."""


class _ConsumerGone(BaseException):
    """The consumer closed the pipe or exited: nobody will read what the worker makes."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested


class _Setup(NamedTuple):
    """What a worker needs to know besides its job."""

    info: WorkerInfo
    qsize: int
    shm_prefix: str | None
    shm_threshold: int
    free: Connection | None
    slots: int
    close_fds: tuple[int, ...]


class _Job:
    """The generator function and its arguments, on their way to a worker.

    Under ``spawn`` and ``forkserver`` they are pickled into bytes while :mod:`multiprocessing`
    pickles the worker's ``Process``, before the worker starts (so objects that may only cross
    at process start, such as locks, still can, and one that cannot be pickled stops ``iter()``
    with an error that names it), and rebuilt by :meth:`load` inside the worker's error
    handling: a function or argument that cannot be rebuilt there (a module the worker cannot
    import, a dataset it cannot reopen) then reaches the consumer as an exception with the
    worker's traceback, not as an exit code. Under ``fork`` nothing is pickled.
    """

    def __init__(
        self, call: _Call | None, pickled: bytes | None = None, *, method: str = "spawn"
    ) -> None:
        self._call = call
        self._pickled = pickled
        self._method = method

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            data = shm.dumps(self._call)
        except Exception as err:
            raise self._cannot_pickle(err) from err
        return (_Job, (None, bytes(data)))

    def _cannot_pickle(self, err: Exception) -> pickle.PicklingError:
        if self._call is None:  # pragma: no cover - a rebuilt job is never pickled again
            return pickle.PicklingError(str(err))
        itr_func, args, kwargs = self._call
        parts: list[tuple[str, object]] = [("the function", itr_func)]
        parts += [(f"positional argument {i}", arg) for i, arg in enumerate(args)]
        parts += [(f"keyword argument {name!r}", arg) for name, arg in kwargs.items()]
        what: str = "the function and its arguments together"
        culprit: object = self._call
        for part, obj in parts:
            try:
                shm.dumps(obj)
            except Exception as part_err:
                what, culprit, err = part, obj, part_err
                break
        method = self._method
        return pickle.PicklingError(
            f"cannot start a {method!r} worker for {_label(itr_func)}: {what} "
            f"({type(culprit).__name__}) cannot be pickled ({type(err).__name__}: {err}). "
            f"The {method!r} start method pickles the function and its arguments to reach "
            "the worker: pass what a worker can rebuild them from (a path, a spec), make the "
            "function importable (defined at the top level of a module), or use "
            "start_method='fork'."
        )

    def load(self) -> _Call:
        if self._call is not None:
            return self._call
        call: _Call = pickle.loads(self._pickled or b"")
        return call


def _iterate(itr_func: Callable[..., Iterable[Any]], args: Any, kwargs: Any) -> Iterator[Any]:
    result = itr_func(*args, **kwargs)
    try:
        return iter(result)
    except TypeError:
        if hasattr(type(result), "__iter__") or hasattr(type(result), "__getitem__"):
            raise  # iterable, but its __iter__ failed: that error says more
        raise TypeError(
            f"{_label(itr_func)} returned {type(result).__name__}, which is not iterable; "
            "MpQItr needs a function that returns an iterable, such as a generator function"
        ) from None


def _worker_main(reader: Connection, writer: Connection, setup: _Setup, job: _Job) -> None:
    """Run in a worker process: iterate, encode each item, and queue it for the sender."""
    # Holding a read end here would keep a pipe open after the consumer has gone.
    reader.close()
    for fd in setup.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    global _worker_info  # noqa: PLW0603 - set once per worker process, read by worker_info()
    _worker_info = setup.info
    outbox: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=setup.qsize)
    sender = threading.Thread(
        target=_send_all, args=(writer, outbox), name="MpQItr-sender", daemon=True
    )
    encoder = shm.Encoder(
        setup.shm_prefix,
        threshold=setup.shm_threshold,
        free=setup.free,
        slots=setup.slots,
        check=lambda: _check_consumer(sender),
        wait_interval=_WORKER_CHECK_INTERVAL,
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    sender.start()
    try:
        try:
            itr_func, args, kwargs = job.load()
            for index, item in enumerate(_iterate(itr_func, args, kwargs)):
                try:
                    message = encoder.encode(item)
                except Exception as err:
                    raise pickle.PicklingError(
                        f"item {index} from {_label(itr_func)} cannot be pickled "
                        f"to reach the consumer: {err}"
                    ) from err
                _put(outbox, message, sender)
            last = shm.dumps(_Done())
        except (_StopRequested, _ConsumerGone):
            raise
        except BaseException as exc:
            last = shm.dumps(_Failure.from_exception(exc))
        _put(outbox, last, sender)
        _put(outbox, None, sender)
        # Exiting now would cut off what the sender has not written yet.
        sender.join(_WORKER_CHECK_INTERVAL)
        while sender.is_alive():
            _check_consumer(sender)
            sender.join(_WORKER_CHECK_INTERVAL)
    except (_StopRequested, _ConsumerGone):
        # Asked to stop, or nobody is reading: leave quietly; the consumer knows already.
        encoder.abandon()


def _put(
    outbox: queue.Queue[bytes | memoryview | None],
    data: bytes | memoryview | None,
    sender: threading.Thread,
) -> None:
    while True:
        try:
            outbox.put(data, timeout=_WORKER_CHECK_INTERVAL)
        except queue.Full:
            _check_consumer(sender)
        else:
            return


def _check_consumer(sender: threading.Thread) -> None:
    parent = multiprocessing.parent_process()
    if not sender.is_alive() or (parent is not None and not parent.is_alive()):
        raise _ConsumerGone


def _send_all(writer: Connection, outbox: queue.Queue[bytes | memoryview | None]) -> None:
    """Run in the worker's sender thread: write queued messages to the pipe until ``None``."""
    while (data := outbox.get()) is not None:
        try:
            writer.send_bytes(data)
        except OSError:  # the consumer closed its end
            return
