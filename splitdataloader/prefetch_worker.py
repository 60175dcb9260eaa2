"""The worker process of a prefetch pass: run the generator and send what it yields.

:func:`worker_main` is the target of every worker process that
:class:`~splitdataloader.prefetch.MpQItr` starts. It rebuilds the generator function and its
arguments from a :class:`Job`, iterates, encodes each item (:class:`splitdataloader.shm.Encoder`)
in the generator's own thread, so that an item that cannot be pickled raises there, and queues
it in an :class:`~splitdataloader.prefetch_outbox.Outbox`, whose thread writes to the pipe; it
ends with a
:class:`~splitdataloader.prefetch_messages.Done` or a
:class:`~splitdataloader.prefetch_messages.Failure`. SIGTERM stops it with the generator's
``finally`` blocks run; a consumer that has gone makes it leave quietly. It also holds what
:func:`worker_info` returns. Everything a child process runs or unpickles lives at the top
level of this module, so that ``spawn`` and ``forkserver`` workers can import it by name.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from splitdataloader import shm
from splitdataloader.prefetch_messages import Done, Failure, label
from splitdataloader.prefetch_outbox import Outbox

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from types import FrameType
    from typing import TypeAlias

    Call: TypeAlias = tuple[Callable[..., Iterable[Any]], tuple[Any, ...], dict[str, Any]]

__all__ = ["MAX_SLOTS", "Job", "Setup", "WorkerInfo", "worker_info", "worker_main"]

#: How often a blocked worker checks that its consumer is still there (seconds).
CHECK_INTERVAL = 0.5
#: The most shared memory blocks a worker has in flight, whatever qsize: the slots the
#: consumer returns must fit in the pipe buffer (64 KiB on Linux, 16 KiB on macOS).
MAX_SLOTS = 1024


class WorkerInfo(NamedTuple):
    """Which worker of a pass the calling code runs in; see :func:`worker_info`."""

    #: From 0 to ``count - 1``.
    id: int
    #: The number of workers of the pass (the ``num_workers`` option). The name hides
    #: ``tuple.count``, which nobody counts on here.
    count: int  # type: ignore[assignment]


_worker_info: WorkerInfo | None = None


def worker_info() -> WorkerInfo | None:
    """In an :class:`~splitdataloader.MpQItr` worker, its id and the number of workers;
    elsewhere ``None``.

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


class Setup(NamedTuple):
    """What a worker needs to know besides its job."""

    info: WorkerInfo
    qsize: int
    shm_prefix: str | None
    shm_threshold: int
    free: Connection | None
    slots: int
    close_fds: tuple[int, ...]


class Job:
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
        self, call: Call | None, pickled: bytes | None = None, *, method: str = "spawn"
    ) -> None:
        self._call = call
        self._pickled = pickled
        self._method = method

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            data = shm.dumps(self._call)
        except Exception as err:
            raise self._cannot_pickle(err) from err
        return (Job, (None, bytes(data)))

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
            f"cannot start a {method!r} worker for {label(itr_func)}: {what} "
            f"({type(culprit).__name__}) cannot be pickled ({type(err).__name__}: {err}). "
            f"The {method!r} start method pickles the function and its arguments to reach "
            "the worker: pass what a worker can rebuild them from (a path, a spec), make the "
            "function importable (defined at the top level of a module), or use "
            "start_method='fork'."
        )

    def load(self) -> Call:
        """The function and its arguments, rebuilt from their pickle if they came as one."""
        if self._call is not None:
            return self._call
        call: Call = pickle.loads(self._pickled or b"")
        return call


class _StopRequested(BaseException):
    """Raised in the worker by SIGTERM, so that the generator's ``finally`` blocks run."""


class _ConsumerGone(BaseException):
    """The consumer closed the pipe or exited: nobody will read what the worker makes."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested


def _iterate(itr_func: Callable[..., Iterable[Any]], args: Any, kwargs: Any) -> Iterator[Any]:
    result = itr_func(*args, **kwargs)
    try:
        return iter(result)
    except TypeError:
        if hasattr(type(result), "__iter__") or hasattr(type(result), "__getitem__"):
            raise  # iterable, but its __iter__ failed: that error says more
        raise TypeError(
            f"{label(itr_func)} returned {type(result).__name__}, which is not iterable; "
            "MpQItr needs a function that returns an iterable, such as a generator function"
        ) from None


def worker_main(reader: Connection, writer: Connection, setup: Setup, job: Job) -> None:
    """Run in a worker process: iterate, encode each item, and queue it for the sender."""
    # Holding a read end here would keep a pipe open after the consumer has gone.
    reader.close()
    for fd in setup.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    global _worker_info  # noqa: PLW0603 - set once per worker process, read by worker_info()
    _worker_info = setup.info
    outbox = Outbox(writer, setup.qsize)
    encoder = shm.Encoder(
        setup.shm_prefix,
        threshold=setup.shm_threshold,
        free=setup.free,
        slots=setup.slots,
        check=lambda: _check_consumer(outbox),
        wait_interval=CHECK_INTERVAL,
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    outbox.start()
    try:
        try:
            itr_func, args, kwargs = job.load()
            for index, item in enumerate(_iterate(itr_func, args, kwargs)):
                try:
                    message = encoder.encode(item)
                except Exception as err:
                    raise pickle.PicklingError(
                        f"item {index} from {label(itr_func)} cannot be pickled "
                        f"to reach the consumer: {err}"
                    ) from err
                while not outbox.put(message, CHECK_INTERVAL):
                    _check_consumer(outbox)
            last = shm.dumps(Done())
        except (_StopRequested, _ConsumerGone):
            raise
        except BaseException as exc:
            last = shm.dumps(Failure.from_exception(exc))
        while not outbox.put(last, CHECK_INTERVAL):
            _check_consumer(outbox)
        outbox.close()
        # Exiting now would cut off what the sender has not written yet.
        while not outbox.join(CHECK_INTERVAL):
            _check_consumer(outbox)
    except (_StopRequested, _ConsumerGone):
        # Asked to stop, or nobody is reading: leave quietly; the consumer knows already.
        encoder.abandon()


def _check_consumer(outbox: Outbox) -> None:
    parent = multiprocessing.parent_process()
    if not outbox.sending or (parent is not None and not parent.is_alive()):
        raise _ConsumerGone
