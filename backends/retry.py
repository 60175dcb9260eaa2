"""The ``retry+`` storage backend: retries transient read errors with exponential backoff.

``retry+<inner url>`` opens ``<inner url>`` with fsspec (``retry+s3://bucket/train``,
``retry+memory://x``, ``retry+simplecache::s3://bucket/train``) and wraps the filesystem
so that reads and metadata calls that fail with a transient error (an ``OSError`` such as
a timeout or a reset connection, but not ``FileNotFoundError``, ``PermissionError`` and
the like) are retried after ``backoff * 2**n`` seconds (with jitter, at most
``max_backoff``), up to ``attempts`` calls in all; the last error is raised unchanged.
Writes are not retried: a write that failed half way is the writer's to abort.
Options go under ``storage_options["retry"]``, e.g. ``{"attempts": 5, "backoff": 0.1}``;
the other storage options go to the inner filesystem unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec.spec import AbstractFileSystem

from splitdataloader.hookspecs import RegisterBackend, hookimpl

__all__ = ["RetryFileSystem", "RetryPolicy", "is_transient", "retry_backend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: OSErrors that retrying cannot fix.
_PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may go away if the call is repeated.

    Parameters
    ----------
    error
        The exception a filesystem call raised.

    Returns
    -------
    bool
        ``True`` for an ``OSError`` (timeouts and connection errors included) that is not
        about the path itself (missing, exists, permission, type), and for
        ``asyncio.TimeoutError`` (not an ``OSError`` before Python 3.11).
    """
    if isinstance(error, _PERMANENT):
        return False
    return isinstance(error, (OSError, asyncio.TimeoutError))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes
    ----------
    attempts
        Calls in all, the first included (1 = no retry).
    backoff
        Seconds before the first retry; doubles with every further retry.
    max_backoff
        Upper bound of one wait, in seconds.
    """

    attempts: int = 5
    backoff: float = 0.1
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"retry attempts must be an integer, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, not {self.attempts}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"retry {name} must be a number of seconds, not {value!r}")
            if not 0 <= value < float("inf"):
                raise ValueError(f"retry {name} must be finite and >= 0, not {value}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> RetryPolicy:
        """Build a policy from ``storage_options["retry"]``.

        Raises
        ------
        TypeError, ValueError
            An unknown key or an invalid value.
        """
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise TypeError(f'storage_options["retry"] must be a dict, not {options!r}')
        unknown = sorted(set(options) - {"attempts", "backoff", "max_backoff"})
        if unknown:
            raise ValueError(
                f'unknown storage_options["retry"] keys {unknown}; '
                "known: attempts, backoff, max_backoff"
            )
        return cls(**options)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), with jitter."""
        ceiling = min(self.max_backoff, self.backoff * 2.0**retry)
        # Jitter keeps many workers that failed together from retrying together.
        return ceiling * random.uniform(0.5, 1.0)

    def call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``function(*args, **kwargs)``, retrying transient errors.

        Raises
        ------
        Exception
            The last error when every attempt failed, or the first non-transient one.
        """
        retry = 0
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as err:
                if not is_transient(err) or retry + 1 >= self.attempts:
                    raise
                self.wait(what, err, retry)
                retry += 1

    def wait(self, what: str, error: BaseException, retry: int) -> None:
        """Log a failed call and sleep before retry number ``retry`` (0-based)."""
        pause = self.delay(retry)
        logger.warning(
            "%s failed (%s: %s); retry %d of %d in %.3f s",
            what,
            type(error).__name__,
            error,
            retry + 1,
            self.attempts - 1,
            pause,
        )
        if pause > 0:
            time.sleep(pause)


class RetryFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """An fsspec filesystem that retries the transient errors of another one.

    Parameters
    ----------
    fs
        The filesystem to wrap; paths are its paths.
    attempts, backoff, max_backoff
        As in :class:`RetryPolicy`.
    """

    protocol = "retry"
    # Instances wrap a live filesystem object: fsspec's instance cache would key on its repr.
    cachable = False

    def __init__(
        self,
        fs: AbstractFileSystem,
        attempts: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.fs = fs
        self.policy = RetryPolicy(attempts, backoff, max_backoff)
        self.sep = fs.sep

    def __repr__(self) -> str:
        return f"RetryFileSystem({self.fs!r}, {self.policy})"

    def _retry(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.policy.call(what, function, *args, **kwargs)

    # -- reads and metadata: retried

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self._retry(f"ls {path}", self.fs.ls, path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        return self._retry(f"info {path}", self.fs.info, path, **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        # fsspec's exists() answers False on any error; a timeout must not mean "missing".
        try:
            self.info(path, **kwargs)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "directory")
        except (FileNotFoundError, NotADirectoryError):
            return False

    def isfile(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "file")
        except (FileNotFoundError, NotADirectoryError):
            return False

    def size(self, path: str) -> Any:
        return self._retry(f"size {path}", self.fs.size, path)

    def checksum(self, path: str) -> Any:
        return self._retry(f"checksum {path}", self.fs.checksum, path)

    def ukey(self, path: str) -> Any:
        return self._retry(f"ukey {path}", self.fs.ukey, path)

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._retry(f"find {path}", self.fs.find, path, *args, **kwargs)

    def glob(self, path: str, **kwargs: Any) -> Any:
        return self._retry(f"glob {path}", self.fs.glob, path, **kwargs)

    def du(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._retry(f"du {path}", self.fs.du, path, *args, **kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> Any:
        return self._retry(f"read {path}", self.fs.cat_file, path, start=start, end=end, **kwargs)

    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Any:
        return self._retry(
            f"cat {path}", self.fs.cat, path, recursive=recursive, on_error=on_error, **kwargs
        )

    def cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        count = len(paths)
        starts = starts if isinstance(starts, list) else [starts] * count
        ends = ends if isinstance(ends, list) else [ends] * count
        if max_gap is not None:
            kwargs["max_gap"] = max_gap
        results: list[Any] = list(
            self.fs.cat_ranges(paths, starts, ends, on_error="return", **kwargs)
        )
        retry = 0
        while True:
            # Re-request only the ranges that failed transiently.
            failed = [i for i, result in enumerate(results) if _transient_result(result)]
            if not failed or retry + 1 >= self.policy.attempts:
                break
            self.policy.wait(f"read of {len(failed)} ranges", results[failed[0]], retry)
            retry += 1
            again = self.fs.cat_ranges(
                [paths[i] for i in failed],
                [starts[i] for i in failed],
                [ends[i] for i in failed],
                on_error="return",
                **kwargs,
            )
            for i, result in zip(failed, again):
                results[i] = result
        if on_error != "return":
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def head(self, path: str, size: int = 1024) -> Any:
        return self._retry(f"head {path}", self.fs.head, path, size)

    def tail(self, path: str, size: int = 1024) -> Any:
        return self._retry(f"tail {path}", self.fs.tail, path, size)

    def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> Any:
        return self._retry(f"get {rpath}", self.fs.get_file, rpath, lpath, **kwargs)

    def modified(self, path: str) -> Any:
        return self._retry(f"modified {path}", self.fs.modified, path)

    def created(self, path: str) -> Any:
        return self._retry(f"created {path}", self.fs.created, path)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        # Only opening for reading is retried; reads on the open file are the inner
        # filesystem's (splitdataloader reads through cat_file and cat_ranges).
        if "r" in mode:
            return self._retry(f"open {path}", self.fs.open, path, mode=mode, **kwargs)
        return self.fs.open(path, mode=mode, **kwargs)

    # -- writes: not retried

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> Any:
        return self.fs.pipe_file(path, value, **kwargs)

    def pipe(self, path: Any, value: Any = None, **kwargs: Any) -> Any:
        return self.fs.pipe(path, value, **kwargs)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> Any:
        return self.fs.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> Any:
        return self.fs.makedirs(path, exist_ok=exist_ok)

    def rmdir(self, path: str) -> Any:
        return self.fs.rmdir(path)

    def rm_file(self, path: str) -> Any:
        return self.fs.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> Any:
        return self.fs.rm(path, recursive=recursive, maxdepth=maxdepth)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> Any:
        return self.fs.touch(path, truncate=truncate, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> Any:
        return self.fs.cp_file(path1, path2, **kwargs)

    def mv(self, path1: str, path2: str, **kwargs: Any) -> Any:
        return self.fs.mv(path1, path2, **kwargs)

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> Any:
        return self.fs.put_file(lpath, rpath, **kwargs)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(path)


def _transient_result(result: Any) -> bool:
    return isinstance(result, BaseException) and is_transient(result)


def retry_backend(url: str, storage_options: dict[str, Any]) -> tuple[RetryFileSystem, str]:
    """Open ``retry+<inner url>``: the inner URL through fsspec, wrapped in retries.

    Parameters
    ----------
    url
        ``retry+`` followed by any fsspec URL (chained ones included).
    storage_options
        Options of the inner filesystem, plus ``"retry"``: ``{"attempts": 5,
        "backoff": 0.1, "max_backoff": 10.0}`` (all optional).

    Returns
    -------
    tuple[RetryFileSystem, str]
        The wrapping filesystem and the inner root path.

    Raises
    ------
    ValueError, TypeError
        The URL does not start with ``retry+``, or the retry options are invalid.
    """
    prefix, plus, inner = url.partition("+")
    if prefix.lower() != "retry" or not plus or not inner:
        raise ValueError(f"a retry URL looks like retry+<fsspec url>, not {url!r}")
    options = dict(storage_options)
    policy = RetryPolicy.from_options(options.pop("retry", None))
    fs, root = fsspec.core.url_to_fs(inner, **options)
    wrapped = RetryFileSystem(fs, policy.attempts, policy.backoff, policy.max_backoff)
    return wrapped, root


@hookimpl
def splitdataloader_register_backends(register: RegisterBackend) -> None:
    """Register the ``retry`` scheme (``retry+<inner url>``)."""
    register("retry", retry_backend)
