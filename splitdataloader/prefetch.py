"""Run a generator in worker processes and hand its items to the consumer through pipes.

:class:`MpQItr` is the public face of prefetching: its options and their checks, the start of
a pass, ``iter()``/``next()``/``close()`` and the statistics. Each pass is a
:class:`~splitdataloader.prefetch_consumer.Run`, which owns the worker processes
(:mod:`splitdataloader.prefetch_worker`), a pipe from each, and the shutdown of all of them:
items cross as pickles (large ones through shared memory, see :mod:`splitdataloader.shm`), an
exception in a generator is raised again in the consumer with the worker's traceback
(:mod:`splitdataloader.prefetch_messages`), a worker that dies makes the consumer raise instead
of wait, and leaving a loop early ends the workers and frees their shared memory. It does not
know what the items are, and it does no I/O of its own.

Items travel over one-way :func:`multiprocessing.Pipe` s rather than a
:class:`multiprocessing.Queue`, for two reasons. A worker pickles each item in the thread that
runs the generator, so an item that cannot be pickled raises there (a queue pickles in a
background thread that only prints the error and drops the item). And the consumer holds no
copy of a pipe's write end, so a worker that dies halfway through sending an item is seen as
end-of-file (a queue's reader would wait forever for the rest of the message).
"""

from __future__ import annotations

import multiprocessing
import reprlib
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar

from splitdataloader.errors import WorkerDiedError, WorkerError
from splitdataloader.prefetch_consumer import END, Run
from splitdataloader.prefetch_messages import label
from splitdataloader.prefetch_worker import WorkerInfo, worker_info

__all__ = [
    "MpQItr",
    "PrefetchStats",
    "WorkerDiedError",
    "WorkerError",
    "WorkerInfo",
    "worker_info",
]

T = TypeVar("T")
_P = ParamSpec("_P")
_SelfT = TypeVar("_SelfT", bound="MpQItr[Any]")


class PrefetchStats(NamedTuple):
    """What the consumer has received in the current or last pass; see :attr:`MpQItr.stats`."""

    #: Items handed to the consumer.
    items: int
    #: How many of them came through shared memory.
    shm_items: int
    #: Bytes copied out of shared memory.
    shm_bytes: int
    #: Bytes read from the pipes: pickled items, shared memory descriptors, end messages,
    #: and the headers of the writes that carry several of them.
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
        plus whatever fits in the operating system's pipe buffer (64 KiB on Linux). Small items
        travel many to a pipe write, so more of them may be ahead: up to 64 KiB of them queued
        in the worker, and the rest of the last 64 KiB the consumer has read. Items in shared
        memory count against it until the consumer has taken them.
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
        as bytes), objects whose pickle has out-of-band buffers of that size in total, such
        as numpy arrays, and objects whose pickle is that large (a list of many records, say).
        The consumer copies each payload into a fresh object and frees the
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
        self._run: Run | None = None
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
            item: T = run.receive()
        except BaseException:
            self.close()
            raise
        if item is END:
            self.close()
            raise StopIteration
        return item

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
            f"<{type(self).__name__} {label(self.itr_func)} qsize={self.qsize}{workers} "
            f"start_method={self.start_method!r} {state}>"
        )

    def _start(self) -> Run:
        options = _options_of(self)
        _check_options(**options)
        ctx = multiprocessing.get_context(options.pop("start_method"))
        run = Run(ctx, self.itr_func, self.args, self.kwargs, **options)
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
