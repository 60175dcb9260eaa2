"""Run a generator in a worker process and hand its items to the consumer through a pipe.

:class:`MpQItr` owns one worker process per pass, the pipe from it and the shutdown of both:
items cross as pickles, an exception in the generator is raised again in the consumer with the
worker's traceback, a worker that dies makes the consumer raise instead of wait, and leaving a
loop early ends the worker. It does not know what the items are, and it does no I/O of its own.

Items travel over a one-way :func:`multiprocessing.Pipe` rather than a
:class:`multiprocessing.Queue`, for two reasons. The worker pickles each item in the thread
that runs the generator, so an item that cannot be pickled raises there (a queue pickles in a
background thread that only prints the error and drops the item). And the consumer holds no
copy of the pipe's write end, so a worker that dies halfway through sending an item is seen as
end-of-file (a queue's reader would wait forever for the rest of the message).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import select
import signal
import threading
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from traceback import format_exception
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from splitdataloader.errors import WorkerDiedError, WorkerError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from types import FrameType
    from typing import TypeAlias

    _Call: TypeAlias = tuple[Callable[..., Iterable[Any]], tuple[Any, ...], dict[str, Any]]

__all__ = ["MpQItr", "WorkerDiedError", "WorkerError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_P = ParamSpec("_P")
_SelfT = TypeVar("_SelfT", bound="MpQItr[Any]")

# How often a blocked worker checks that its consumer is still there (seconds).
_WORKER_CHECK_INTERVAL = 0.5


class MpQItr(Generic[T]):
    """Iterate over ``itr_func(*args, **kwargs)`` run in a separate process.

    Iterating starts a *pass*: a daemon worker process that calls the generator function and
    sends each item it yields to this process, running up to about :attr:`qsize` items ahead
    of the consumer. While a pass is under way, ``iter()`` returns the iterator as it is, so a
    loop after a ``break`` goes on where the last one stopped, as with a generator; once a
    pass has ended, the next ``iter()`` (the next ``for`` loop) starts a fresh one. Items and
    the function with its arguments must pickle; under the ``spawn`` and ``forkserver`` start
    methods the function must also be importable by name (defined at the top level of a
    module).

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
        How many items the worker prepares ahead of the consumer, at least 1 (default 16),
        plus whatever fits in the operating system's pipe buffer (64 KiB on Linux).
    start_method : str or None
        ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``None`` (the default) uses the current
        default context of :mod:`multiprocessing`.
    stop_timeout : float
        Seconds a worker asked to stop gets to finish (its generator's ``finally`` blocks run)
        before it is killed (default 2.0).

    Notes
    -----
    Options are attributes with class-level defaults. Set them on an instance before iterating
    (``it.qsize = 64``, as in 0.0.1), pick them in one expression with :meth:`with_options`,
    or change the defaults in a subclass (``class Prefetch(MpQItr[T]): start_method =
    "spawn"``). A change takes effect at the next ``iter()``.

    The worker ends, and the pipe is closed, when the items run out, when the generator
    raises, on :meth:`close`, when a ``with`` block ends, and when the iterator is garbage
    collected (e.g. after ``break`` out of ``for x in MpQItr(...)``). After the end of a pass,
    ``next()`` keeps raising :class:`StopIteration` until the next ``iter()``; to start over
    before the end, call :meth:`close` and iterate again. An instance is not meant to be
    shared between threads.

    Raises
    ------
    WorkerDiedError
        From ``next()``, when the worker exits or is killed before the end of its items.
    WorkerError
        From ``next()``, when the generator raised an exception that cannot be sent back.
    Exception
        From ``next()``, the exception the generator raised, when it pickles, with a
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

    def __init__(
        self, itr_func: Callable[_P, Iterable[T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> None:
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
    ) -> Callable[..., _SelfT]:
        """Return a constructor that builds iterators with the given options set.

        Parameters
        ----------
        qsize, start_method, stop_timeout
            As the attributes of the same names; ``None`` keeps the class default.

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
        _check_options(
            cls.qsize if qsize is None else qsize,
            cls.start_method if start_method is None else start_method,
            cls.stop_timeout if stop_timeout is None else stop_timeout,
        )

        def build(itr_func: Callable[..., Any], *args: Any, **kwargs: Any) -> _SelfT:
            iterator = cls(itr_func, *args, **kwargs)
            if qsize is not None:
                iterator.qsize = qsize
            if start_method is not None:
                iterator.start_method = start_method
            if stop_timeout is not None:
                iterator.stop_timeout = stop_timeout
            return iterator

        return build

    @property
    def pid(self) -> int | None:
        """The process id of the current or last worker, ``None`` before the first pass."""
        return None if self._run is None else self._run.pid

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
            message = run.receive()
        except BaseException:
            self.close()
            raise
        if type(message) is _Done:
            run.finished = True
            self.close()
            raise StopIteration
        if type(message) is _Failure:
            run.finished = True
            self.close()
            raise message.to_exception(run.pid, run.label)
        return cast("T", message)

    def close(self) -> None:
        """Stop the worker of the current pass, if any, wait for it to exit and close the pipe.

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
        elif run.closed:
            state = f"ended, worker pid {run.pid}"
        else:
            state = f"running, worker pid {run.pid}"
        return (
            f"<{type(self).__name__} {_label(self.itr_func)} qsize={self.qsize} "
            f"start_method={self.start_method!r} {state}>"
        )

    def _start(self) -> _Run:
        _check_options(self.qsize, self.start_method, self.stop_timeout)
        run = _Run(
            multiprocessing.get_context(self.start_method),
            self.itr_func,
            self.args,
            self.kwargs,
            qsize=self.qsize,
            stop_timeout=self.stop_timeout,
        )
        self._run = run
        # The finalizer holds the run, never self, so that garbage collection can reach it.
        self._finalizer = weakref.finalize(self, run.close)
        return run


def _check_options(qsize: object, start_method: object, stop_timeout: object) -> None:
    if isinstance(qsize, bool) or not isinstance(qsize, int):
        raise TypeError(f"qsize must be an int, not {type(qsize).__name__}")
    if qsize < 1:
        raise ValueError(f"qsize must be at least 1, got {qsize}")
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(
            f"start_method must be None or one of {', '.join(methods)}; got {start_method!r}"
        )
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float):
        raise TypeError(f"stop_timeout must be a number, not {type(stop_timeout).__name__}")
    if not stop_timeout >= 0:
        raise ValueError(f"stop_timeout must be >= 0 seconds, got {stop_timeout}")


def _label(itr_func: object) -> str:
    name = getattr(itr_func, "__qualname__", None)
    return name if isinstance(name, str) else repr(itr_func)


def _qualified_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _dumps(obj: object) -> memoryview:
    return ForkingPickler.dumps(obj, pickle.HIGHEST_PROTOCOL)


class _Done:
    """Sent by the worker after the last item."""


class _Failure:
    """Sent by the worker when the generator raised: everything needed to raise it here."""

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
                data = bytes(_dumps(exc))
                # Loading here catches exceptions whose __init__ cannot be called again.
                pickle.loads(data)
            except Exception:
                logger.debug("%s does not pickle; sending its text only", type(exc))
            else:
                pickled = data
        return cls(_qualified_name(type(exc)), message, text, pickled)

    def to_exception(self, pid: int | None, label: str) -> BaseException:
        summary = f"{self.exc_type}: {self.message}" if self.message else self.exc_type
        error = WorkerError(
            f"{label} raised {summary}\nin prefetch worker process {pid}; "
            f"the worker's traceback:\n{self.traceback.rstrip()}",
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


class _Run:
    """One pass: a worker process and the read end of the pipe from it."""

    def __init__(
        self,
        ctx: BaseContext,
        itr_func: Callable[..., Iterable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        qsize: int,
        stop_timeout: float,
    ) -> None:
        self.label = _label(itr_func)
        self.stop_timeout = stop_timeout
        self.closed = False
        self.finished = False
        self.exitcode: int | None = None
        reader, writer = ctx.Pipe(duplex=False)
        self._conn = reader
        self._process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(reader, writer, qsize, _Job((itr_func, args, kwargs))),
            name=f"MpQItr-{self.label}",
            daemon=True,
        )
        try:
            self._process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            # Only the worker may hold the write end: then its death reads as end-of-file.
            writer.close()
        self.pid: int | None = self._process.pid
        # Waiting on the pipe and on the worker's exit together shows a dead worker at once,
        # even if another process still holds the write end. One poll object made here costs
        # far less per item than connection.wait(), which builds a selector on every call.
        self._fd = reader.fileno()
        self._poller: select.poll | None = None
        if hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)
            self._poller.register(self._process.sentinel, select.POLLIN)
        self._owner_pid = os.getpid()
        logger.debug("started prefetch worker %s (pid %s)", self.label, self.pid)

    def receive(self) -> Any:
        """Return the next message from the worker, waiting for it as long as the worker lives.

        Raises
        ------
        WorkerDiedError
            When the worker ended without sending its last message.
        """
        conn = self._conn
        if self._poller is not None:
            # Blocks until there is data or end-of-file, or the worker has exited; a worker
            # that wrote and then exited has its data ready in the same call.
            if not any(fd == self._fd for fd, _ in self._poller.poll()):
                raise self._died()
        elif not conn.poll():
            wait([conn, self._process.sentinel])
            if not conn.poll():
                raise self._died()
        try:
            data = conn.recv_bytes()
        except EOFError:
            raise self._died() from None
        return pickle.loads(data)

    def _died(self) -> WorkerDiedError:
        self._process.join(self.stop_timeout)
        code = self._process.exitcode
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
            f"prefetch worker process {self.pid} running {self.label} {how} "
            f"before the end of its items{hint}",
            pid=self.pid,
            exitcode=code,
        )

    def close(self) -> None:
        """End the worker (politely first) and close the pipe; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        self._conn.close()
        if os.getpid() != self._owner_pid:
            # A forked copy of the consumer: the worker is not this process's child.
            return
        process = self._process
        if self.finished:
            # It sent its last message and is exiting on its own.
            process.join(self.stop_timeout)
        if process.is_alive():
            logger.debug("stopping prefetch worker %s (pid %s)", self.label, self.pid)
            process.terminate()
            process.join(self.stop_timeout)
        if process.is_alive():
            logger.warning(
                "prefetch worker %s (pid %s) did not stop within %.1f s; killing it",
                self.label,
                self.pid,
                self.stop_timeout,
            )
            process.kill()
            process.join()
        self.exitcode = process.exitcode
        process.close()


# --- the worker side ------------------------------------------------------------------------


class _StopRequested(BaseException):
    """Raised in the worker by SIGTERM, so that the generator's ``finally`` blocks run."""


class _ConsumerGone(BaseException):
    """The consumer closed the pipe or exited: nobody will read what the worker makes."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested


class _Job:
    """The generator function and its arguments, on their way to a worker.

    Under ``spawn`` and ``forkserver`` they are pickled into bytes while :mod:`multiprocessing`
    pickles the worker's ``Process`` (so objects that may only cross at process start, such as
    locks, still can) and rebuilt by :meth:`load` inside the worker's error handling: a
    function or argument that cannot be rebuilt there (a module the worker cannot import, a
    dataset it cannot reopen) then reaches the consumer as an exception with the worker's
    traceback, not as an exit code. Under ``fork`` nothing is pickled.
    """

    def __init__(self, call: _Call | None, pickled: bytes | None = None) -> None:
        self._call = call
        self._pickled = pickled

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Job, (None, bytes(_dumps(self._call))))

    def load(self) -> _Call:
        if self._call is not None:
            return self._call
        call: _Call = pickle.loads(self._pickled or b"")
        return call


def _worker_main(reader: Connection, writer: Connection, qsize: int, job: _Job) -> None:
    """Run in the worker process: iterate, pickle each item, and queue it for the sender."""
    # Holding a read end here would keep the pipe open after the consumer has gone.
    reader.close()
    signal.signal(signal.SIGTERM, _on_sigterm)
    outbox: queue.Queue[memoryview | None] = queue.Queue(maxsize=qsize)
    sender = threading.Thread(
        target=_send_all, args=(writer, outbox), name="MpQItr-sender", daemon=True
    )
    sender.start()
    try:
        try:
            itr_func, args, kwargs = job.load()
            for index, item in enumerate(itr_func(*args, **kwargs)):
                try:
                    data = _dumps(item)
                except Exception as err:
                    raise pickle.PicklingError(
                        f"item {index} from {_label(itr_func)} cannot be pickled "
                        f"to reach the consumer: {err}"
                    ) from err
                _put(outbox, data, sender)
            last = _dumps(_Done())
        except (_StopRequested, _ConsumerGone):
            raise
        except BaseException as exc:
            last = _dumps(_Failure.from_exception(exc))
        _put(outbox, last, sender)
        _put(outbox, None, sender)
        # Exiting now would cut off what the sender has not written yet.
        sender.join(_WORKER_CHECK_INTERVAL)
        while sender.is_alive():
            _check_consumer(sender)
            sender.join(_WORKER_CHECK_INTERVAL)
    except (_StopRequested, _ConsumerGone):
        # Asked to stop, or nobody is reading: leave quietly; the consumer knows already.
        pass


def _put(
    outbox: queue.Queue[memoryview | None], data: memoryview | None, sender: threading.Thread
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


def _send_all(writer: Connection, outbox: queue.Queue[memoryview | None]) -> None:
    """Run in the worker's sender thread: write queued pickles to the pipe until ``None``."""
    while (data := outbox.get()) is not None:
        try:
            writer.send_bytes(data)
        except OSError:  # the consumer closed its end
            return
