"""Storage: turns a URL plus options into a filesystem and does every byte of I/O.

This is the only module that talks to fsspec. It resolves a dataset URL (local path,
``file://``, ``memory://``, ``s3://``, chained URLs) to a filesystem and a root, reads
whole files and byte ranges, writes files (durably on local disk), replaces the manifest
atomically, and maps lower-level exceptions to :mod:`splitdataloader.errors`. Local disk
gets a fast path through ``os`` (``pread``, ``mmap``, ``fsync``, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from . import plugins
from .errors import MissingDataFileError, TruncatedDataError

logger = logging.getLogger(__name__)

__all__ = ["Storage", "StorageSpec", "open_storage"]


@dataclass(frozen=True)
class StorageSpec:
    """A picklable description of a storage location: enough to rebuild it anywhere."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Storage:
        return open_storage(self.url, self.options)


class Writable(Protocol):
    """A file being written: bytes go in, ``close`` makes them whole, ``discard`` drops them."""

    def write(self, data: Any) -> int | None: ...

    def close(self) -> None: ...

    def discard(self) -> None: ...


class _LocalWriter:
    """An unbuffered local file, fsync'ed on close when durability is asked for."""

    def __init__(self, path: str, durable: bool) -> None:
        self._path = path
        self._durable = durable
        self._file: IO[bytes] | None = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()

    def write(self, data: Any) -> int | None:
        assert self._file is not None, "write after close"  # internal invariant
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += self._file.write(view[written:]) or 0
        return written

    def close(self) -> None:
        if self._file is None:
            return
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


class _FsspecWriter:
    """A file opened for writing through fsspec (object stores upload on close)."""

    def __init__(self, storage: Storage, path: str) -> None:
        self._storage = storage
        self._path = path
        self._file: Any = storage.fs.open(path, "wb")

    def write(self, data: Any) -> int | None:
        result: int | None = self._file.write(data)
        return result

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                if hasattr(self._file, "discard"):
                    self._file.discard()
                else:
                    self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._storage.fs.rm_file(self._path)


class Storage:
    """A dataset location: a filesystem, a root path, and the I/O the library needs.

    Parameters
    ----------
    url
        A local path or any fsspec URL, chained URLs included.
    options
        Storage options passed unchanged to fsspec.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        if not isinstance(url, (str, os.PathLike)):
            raise TypeError(f"dataset location must be a str or path, not {type(url).__name__}")
        self.spec = StorageSpec(os.fspath(url), dict(options or {}))
        scheme = url_scheme(self.spec.url)
        factory = plugins.backend_factory(scheme) if scheme else None
        if factory is not None:
            fs, root = factory(self.spec.url, dict(self.spec.options))
        else:
            fs, root = fsspec.core.url_to_fs(self.spec.url, **self.spec.options)
        self.fs: Any = fs
        self.root: str = root.rstrip("/") if root not in ("/", "") else root
        self.is_local = isinstance(fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.spec.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_storage, (self.spec.url, self.spec.options))

    # -- names

    def path(self, name: str) -> str:
        """The filesystem path of ``name``, a name relative to the dataset root."""
        return f"{self.root}/{name}" if self.root else name

    def display(self, name: str) -> str:
        """``name`` as users should see it in messages."""
        return f"{self.spec.url.rstrip('/')}/{name}"

    # -- reads

    def exists(self, name: str) -> bool:
        if self.is_local:
            return os.path.exists(self.path(name))
        return bool(self.fs.exists(self.path(name)))

    def root_exists(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.root)
        try:
            return bool(self.fs.exists(self.root)) or bool(self.fs.isdir(self.root))
        except FileNotFoundError:
            return False

    def size(self, name: str) -> int:
        try:
            if self.is_local:
                return os.stat(self.path(name)).st_size
            return int(self.fs.size(self.path(name)))
        except FileNotFoundError as err:
            raise self.missing(name) from err

    def read_file(self, name: str, max_size: int | None = None) -> bytes:
        """Read a whole file; ``FileNotFoundError`` propagates for the caller to map."""
        path = self.path(name)
        if self.is_local:
            with open(path, "rb") as handle:
                if max_size is None:
                    return handle.read()
                return handle.read(max_size + 1)
        if max_size is not None:
            data: bytes = self.fs.cat_file(path, start=0, end=max_size + 1)
            return data
        whole: bytes = self.fs.cat_file(path)
        return whole

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Read bytes ``[start, end)`` of ``name``; a short result means the file is short."""
        try:
            if self.is_local:
                with open(self.path(name), "rb", buffering=0) as handle:
                    return os.pread(handle.fileno(), end - start, start)
            data: bytes = self.fs.cat_file(self.path(name), start=start, end=end)
            return data
        except FileNotFoundError as err:
            raise self.missing(name) from err

    def read_ranges(
        self, names: Sequence[str], starts: Sequence[int], ends: Sequence[int]
    ) -> list[bytes]:
        """Read many ranges concurrently where the filesystem allows (``cat_ranges``)."""
        paths = [self.path(name) for name in names]
        results = self.fs.cat_ranges(paths, list(starts), list(ends), on_error="return")
        out: list[bytes] = []
        for name, result in zip(names, results):
            if isinstance(result, FileNotFoundError):
                raise self.missing(name) from result
            if isinstance(result, BaseException):
                raise result
            out.append(result)
        return out

    def open_fd(self, name: str) -> int:
        """An OS file descriptor for a local file (local storage only)."""
        try:
            return os.open(self.path(name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError as err:
            raise self.missing(name) from err

    def map_file(self, name: str, expected_size: int) -> mmap.mmap:
        """Memory-map a whole local file read-only, checking its size first."""
        try:
            with open(self.path(name), "rb") as handle:
                actual = os.fstat(handle.fileno()).st_size
                if actual < expected_size:
                    raise TruncatedDataError(
                        f"{self.display(name)} is {actual} bytes; its commit says {expected_size}",
                        path=self.display(name),
                        offset=actual,
                    )
                return mmap.mmap(handle.fileno(), expected_size, access=mmap.ACCESS_READ)
        except FileNotFoundError as err:
            raise self.missing(name) from err

    def missing(self, name: str) -> MissingDataFileError:
        return MissingDataFileError(
            f"{self.display(name)} is listed by the dataset's manifest but does not exist",
            path=self.display(name),
        )

    def list_names(self, directory: str) -> list[str]:
        """Names (relative to the root) of the files directly inside ``directory``."""
        base = self.path(directory)
        try:
            if self.is_local:
                return [f"{directory}/{entry}" for entry in sorted(os.listdir(base))]
            listed = self.fs.ls(base, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = base.rstrip("/") + "/"
        return sorted(
            f"{directory}/{item[len(prefix) :]}" for item in listed if item.startswith(prefix)
        )

    # -- writes

    def makedirs(self, *directories: str) -> None:
        for directory in directories:
            path = self.path(directory) if directory else self.root
            if self.is_local:
                os.makedirs(path, exist_ok=True)
            else:
                with contextlib.suppress(FileExistsError):
                    self.fs.makedirs(path, exist_ok=True)

    def open_writer(self, name: str, durable: bool) -> Writable:
        if self.is_local:
            return _LocalWriter(self.path(name), durable)
        return _FsspecWriter(self, self.path(name))

    def replace_file(self, name: str, data: bytes, durable: bool) -> None:
        """Write ``name`` in one atomic step: readers see the old or the new bytes, never a mix."""
        if not self.is_local:
            self.fs.pipe_file(self.path(name), data)
            return
        target = self.path(name)
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        if durable:
            self._sync_directory(os.path.dirname(target))

    def remove(self, names: Sequence[str]) -> None:
        """Delete files, ignoring those already gone."""
        for name in names:
            try:
                if self.is_local:
                    os.unlink(self.path(name))
                else:
                    self.fs.rm_file(self.path(name))
            except FileNotFoundError:
                continue
            except OSError as err:
                logger.warning("could not delete %s: %s", self.display(name), err)

    def sync_directories(self, *directories: str) -> None:
        if self.is_local:
            for directory in directories:
                self._sync_directory(self.path(directory) if directory else self.root)

    @staticmethod
    def _sync_directory(path: str) -> None:
        if os.name != "posix":
            return
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        """Serialise commits of writers on this machine (local disk); a no-op elsewhere."""
        if not self.is_local or os.name != "posix":
            yield
            return
        import fcntl  # noqa: PLC0415 - POSIX only

        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock


def url_scheme(url: str) -> str | None:
    """The scheme a backend plugin is looked up by: ``s3`` for ``s3://b/p``,
    ``simplecache`` for ``simplecache::s3://b/p``, ``None`` for a local path."""
    first = url.split("::", 1)[0]
    if "://" in first:
        return first.split("://", 1)[0].lower()
    if "::" in url:
        return first.lower()
    return None


def open_storage(url: str, options: dict[str, Any] | None = None) -> Storage:
    """Resolve ``url`` and fsspec ``options`` to a :class:`Storage`."""
    return Storage(url, options)
