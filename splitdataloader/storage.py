"""Storage: turns a URL plus options into a filesystem and does every byte of I/O.

This is the only module that opens fsspec filesystems. It resolves a dataset URL (local
path, ``file://``, ``memory://``, ``s3://``, chained URLs) to a filesystem and a root,
reads whole files and byte ranges, lists folders, opens files for writing, writes whole
files and replaces the manifest atomically, and maps lower-level exceptions to
:mod:`splitdataloader.errors`. Local disk gets a fast path through ``os`` (``pread``,
``mmap``). It chooses how each file is written; the writing itself (the files that
:meth:`Storage.open_writer` returns, and atomic, durable whole-file writes on local disk)
is :mod:`splitdataloader.writables`'.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from . import objectstore, plugins
from .errors import (
    ChecksumMismatchError,
    CorruptDataError,
    MissingDataFileError,
    StorageError,
    TruncatedDataError,
)
from .writables import (
    Writable,
    close_writables,
    create_local_file,
    open_writable,
    replace_local_file,
    sync_directory,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PART_SIZE",
    "FileInfo",
    "ManifestChangedError",
    "ManifestVersion",
    "Storage",
    "StorageSpec",
    "open_input",
    "open_storage",
]

#: Bytes an object-store writer buffers per open file before it uploads them as one part
#: of a multipart upload (S3's smallest part size): a writer holds at most this much per
#: bin in memory, whatever the dataset size.
DEFAULT_PART_SIZE = 5 << 20


@dataclass(frozen=True)
class ManifestVersion:
    """Which version of the manifest a writer started from: its bytes and, on S3, its
    ETag; ``raw is None`` when there was none."""

    raw: bytes | None
    etag: str | None = None


@dataclass(frozen=True)
class FileInfo:
    """A stored file's size in bytes and when it was last written (POSIX seconds, or
    ``None`` when the filesystem does not say)."""

    size: int
    modified: float | None


def _modified(item: dict[str, Any]) -> float | None:
    """The modification time in an fsspec listing entry, whatever the filesystem calls it."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = item.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        timestamp = getattr(value, "timestamp", None)  # a datetime (S3's LastModified)
        if callable(timestamp):
            return float(timestamp())
    return None


class ManifestChangedError(Exception):
    """The manifest is no longer the version a writer started from (internal signal)."""


@dataclass(frozen=True)
class StorageSpec:
    """A picklable description of a storage location: enough to rebuild it anywhere."""

    url: str
    #: Left out of the repr: options hold credentials.
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    def open(self) -> Storage:
        return open_storage(self.url, self.options)


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
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"storage_options must be a dict, not {type(options).__name__}")
        self.spec = StorageSpec(os.fspath(url), dict(options or {}))
        scheme = url_scheme(self.spec.url)
        fs, root = self._resolve(scheme)
        self._fs: Any = fs
        self._pid = os.getpid()
        self.root: str = root.rstrip("/") if root not in ("/", "") else root
        self.is_local = isinstance(fs, LocalFileSystem)
        #: True when reads go through a local cache of another filesystem.
        self.is_cache = scheme in objectstore.CACHE_PROTOCOLS
        self.is_s3 = objectstore.is_s3(fs)

    def _resolve(self, scheme: str | None) -> tuple[Any, str]:
        factory = plugins.backend_factory(scheme) if scheme else None
        if factory is not None:
            return factory(self.spec.url, dict(self.spec.options))
        fs_options = self.spec.options
        if scheme in ("s3", "s3a"):
            fs_options = objectstore.with_s3_defaults(fs_options)
        resolved: tuple[Any, str] = fsspec.core.url_to_fs(self.spec.url, **fs_options)
        return resolved

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, rebuilt once in a forked child: clients such as s3fs
        hold an event loop and connections that must not be shared across a fork."""
        if self._pid != os.getpid():
            self._fs, _ = self._resolve(url_scheme(self.spec.url))
            self._pid = os.getpid()
        return self._fs

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

    @contextlib.contextmanager
    def failures(self, name: str, action: str) -> Iterator[None]:
        """Turn a failed remote call on ``name`` into a :class:`StorageError` naming it.

        ``FileNotFoundError`` and the library's own errors pass through for the caller.
        """
        try:
            yield
        except (
            FileNotFoundError,
            StorageError,
            CorruptDataError,
            objectstore.PreconditionFailedError,
        ):
            raise
        except Exception as err:
            raise self.failed(name, action, err) from err

    def failed(
        self, name: str, action: str, error: BaseException
    ) -> StorageError | CorruptDataError:
        """The error for ``action`` on ``name`` failing with ``error``, naming the object.

        A response that the client's own integrity check rejected (botocore's
        ``FlexibleChecksumError``) is corrupt data, not an unreachable object.
        """
        where = self.display(name)
        detail = str(error) or type(error).__name__
        if type(error).__name__ == "FlexibleChecksumError":
            return ChecksumMismatchError(
                f"{action} {where}: the response does not match its checksum ({detail})",
                path=where,
            )
        return StorageError(f"{action} {where} failed: {detail}", path=where)

    def exists(self, name: str) -> bool:
        if self.is_local:
            return os.path.exists(self.path(name))
        with self.failures(name, "checking"):
            return bool(self.fs.exists(self.path(name)))

    def root_exists(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.root)
        try:
            with self.failures("", "checking"):
                return bool(self.fs.exists(self.root)) or bool(self.fs.isdir(self.root))
        except FileNotFoundError:
            return False

    def size(self, name: str) -> int:
        try:
            if self.is_local:
                return os.stat(self.path(name)).st_size
            with self.failures(name, "checking the size of"):
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
                # read(n) allocates n bytes first: ask for no more than the file holds.
                size = os.fstat(handle.fileno()).st_size
                return handle.read(min(size, max_size) + 1)
        with self.failures(name, "reading"):
            if max_size is not None:
                return self._cat_range(path, 0, max_size + 1)
            whole: bytes = self.fs.cat_file(path)
            return whole

    def _cat_range(self, path: str, start: int, end: int) -> bytes:
        if end <= start:  # an empty range: S3 would answer an invalid one with everything
            return b""
        try:
            data: bytes = self.fs.cat_file(path, start=start, end=end)
        except OSError as err:
            if objectstore.http_status(err) == 416:  # the range starts past the end
                return b""
            raise
        return data

    def read_manifest(self, name: str, max_size: int) -> tuple[bytes | None, ManifestVersion]:
        """The manifest's bytes (``None`` if there is none) and the version they are."""
        if not self.is_s3:
            try:
                raw = self.read_file(name, max_size)
            except FileNotFoundError:
                return None, ManifestVersion(None)
            return raw, ManifestVersion(raw)
        try:
            with self.failures(name, "reading"):
                raw, etag = objectstore.read_with_etag(self.fs, self.path(name))
        except FileNotFoundError:
            return None, ManifestVersion(None)
        return raw, ManifestVersion(raw, etag)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Read bytes ``[start, end)`` of ``name``; a short result means the file is short."""
        try:
            if self.is_local:
                with open(self.path(name), "rb", buffering=0) as handle:
                    return os.pread(handle.fileno(), end - start, start)
            return self._cat_range(self.path(name), start, end)
        except FileNotFoundError as err:
            raise self.missing(name) from err
        except StorageError:
            raise
        except Exception as err:
            raise self.failed(name, f"reading bytes {start}-{end} of", err) from err

    def read_ranges(
        self,
        names: Sequence[str],
        starts: Sequence[int],
        ends: Sequence[int],
        concurrency: int | None = None,
    ) -> list[bytes]:
        """Read many ranges, up to ``concurrency`` at once where the filesystem allows
        (``cat_ranges``); a short result means the file is short."""
        if any(end <= start for start, end in zip(starts, ends)):
            wanted = [k for k, (start, end) in enumerate(zip(starts, ends)) if end > start]
            found = (
                self.read_ranges(
                    [names[k] for k in wanted],
                    [starts[k] for k in wanted],
                    [ends[k] for k in wanted],
                    concurrency,
                )
                if wanted
                else []
            )
            filled = [b""] * len(names)
            for k, data in zip(wanted, found):
                filled[k] = data
            return filled
        paths = [self.path(name) for name in names]
        options: dict[str, Any] = {"on_error": "return"}
        if concurrency is not None and getattr(self.fs, "async_impl", False):
            options["batch_size"] = concurrency
        try:
            results = self.fs.cat_ranges(paths, list(starts), list(ends), **options)
        except Exception as err:
            raise self.failed(names[0], "reading", err) from err
        out: list[bytes] = []
        for name, start, end, result in zip(names, starts, ends, results):
            if isinstance(result, FileNotFoundError):
                raise self.missing(name) from result
            if isinstance(result, BaseException):
                if objectstore.http_status(result) == 416:
                    out.append(b"")
                    continue
                raise self.failed(name, f"reading bytes {start}-{end} of", result) from result
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
            with self.failures(directory, "listing"):
                self.fs.invalidate_cache(base)
                listed = self.fs.ls(base, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = base.rstrip("/") + "/"
        return sorted(
            f"{directory}/{item[len(prefix) :]}" for item in listed if item.startswith(prefix)
        )

    def file_sizes(self, directory: str) -> dict[str, int]:
        """Sizes of the files directly inside ``directory`` by name (one listing)."""
        base = self.path(directory) if directory else self.root
        prefix = base.rstrip("/") + "/"
        try:
            with self.failures(directory, "listing"):
                self.fs.invalidate_cache(base)
                listed = self.fs.ls(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {
            f"{directory}/{item['name'][len(prefix) :]}".lstrip("/"): int(item.get("size") or 0)
            for item in listed
            if item.get("type") == "file" and item["name"].startswith(prefix)
        }

    def list_files(self, directory: str) -> dict[str, FileInfo]:
        """Size and modification time of the files directly inside ``directory`` (``""``:
        the root), by name relative to the root; one listing."""
        base = self.path(directory) if directory else self.root
        found: dict[str, FileInfo] = {}
        if self.is_local:
            try:
                with os.scandir(base) as entries:
                    for entry in entries:
                        if entry.is_file(follow_symlinks=False):
                            info = entry.stat(follow_symlinks=False)
                            name = f"{directory}/{entry.name}" if directory else entry.name
                            found[name] = FileInfo(info.st_size, info.st_mtime)
            except (FileNotFoundError, NotADirectoryError):
                return {}
            return found
        prefix = base.rstrip("/") + "/"
        try:
            with self.failures(directory, "listing"):
                self.fs.invalidate_cache(base)
                listed = self.fs.ls(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        for item in listed:
            if item.get("type") != "file" or not item["name"].startswith(prefix):
                continue
            relative = item["name"][len(prefix) :]
            name = f"{directory}/{relative}" if directory else relative
            found[name] = FileInfo(int(item.get("size") or 0), _modified(item))
        return found

    def pending_uploads(self) -> list[tuple[str, objectstore.PendingUpload]]:
        """Unfinished multipart uploads under the root, with the name each would create
        (relative to the root); none where the store has no such thing."""
        if not self.is_s3:
            return []
        with self.failures("", "listing the unfinished uploads under"):
            uploads = objectstore.pending_uploads(self.fs, self.root)
        prefix = self.root.rstrip("/") + "/"
        return [(u.path[len(prefix) :], u) for u in uploads if u.path.startswith(prefix)]

    def abort_uploads(self, uploads: Sequence[tuple[str, objectstore.PendingUpload]]) -> None:
        """Abort unfinished multipart uploads found by :meth:`pending_uploads`."""
        for name, upload in uploads:
            with self.failures(name, "aborting the upload of"):
                objectstore.abort_upload(self.fs, upload)

    # -- writes

    def makedirs(self, *directories: str) -> None:
        if self.is_s3:  # an object store has no folders to create
            return
        for directory in directories:
            path = self.path(directory) if directory else self.root
            if self.is_local:
                os.makedirs(path, exist_ok=True)
            else:
                with contextlib.suppress(FileExistsError):
                    self.fs.makedirs(path, exist_ok=True)

    def open_writer(self, name: str, durable: bool, part_size: int = DEFAULT_PART_SIZE) -> Writable:
        """Open ``name`` for writing: an unbuffered local file, or a file that an object
        store uploads in parts of ``part_size`` bytes."""
        return open_writable(self, name, durable, part_size)

    def close_writers(self, writers: Sequence[Writable], concurrency: int = 16) -> None:
        """Close (complete the uploads of) many files, concurrently on remote storage."""
        close_writables(self, writers, concurrency)

    def commit_manifest(
        self, name: str, data: bytes, expected: ManifestVersion, durable: bool
    ) -> ManifestVersion:
        """Replace the manifest with ``data`` if it is still the ``expected`` version.

        On S3 this is one conditional PUT (``If-Match`` the expected ETag, or
        ``If-None-Match: *`` for a new dataset), so that of two writers committing at
        once exactly one wins. On local disk a lock serialises the check and the
        replacement. Elsewhere the check and the write are two steps. Returns the
        version now current (what the writer's next commit must find).

        Raises
        ------
        ManifestChangedError
            If another writer replaced the manifest since ``expected`` was read.
        """
        if self.is_s3 and (expected.raw is None or expected.etag is not None):
            try:
                with self.failures(name, "committing"):
                    etag = objectstore.put_if(self.fs, self.path(name), data, expected.etag)
            except objectstore.PreconditionFailedError as err:
                raise ManifestChangedError(self.display(name)) from err
            return ManifestVersion(data, etag)
        with self.commit_lock():
            try:
                current = self.read_file(name, len(expected.raw or b""))
            except FileNotFoundError:
                current = None
            if current != expected.raw:
                raise ManifestChangedError(self.display(name))
            self.replace_file(name, data, durable)
        return ManifestVersion(data)

    def create_file(self, name: str, data: bytes, durable: bool) -> None:
        """Write ``name`` in one atomic step, only if it does not exist yet.

        On S3 this is one conditional PUT (``If-None-Match: *``): of two writers creating
        the same object at once exactly one succeeds. On local disk the file is written
        under a temporary name and hard-linked to ``name``, which fails if ``name``
        exists. Elsewhere the check and the write are two steps.

        Raises
        ------
        FileExistsError
            If ``name`` exists; it is left as it was.
        """
        if self.is_s3:
            try:
                with self.failures(name, "creating"):
                    objectstore.put_if(self.fs, self.path(name), data, None)
            except objectstore.PreconditionFailedError as err:
                raise FileExistsError(self.display(name)) from err
            return
        if not self.is_local:
            with self.commit_lock():
                if self.exists(name):
                    raise FileExistsError(self.display(name))
                self.replace_file(name, data, durable)
            return
        create_local_file(self.path(name), data, durable)

    def read_files(self, names: Sequence[str], max_size: int) -> dict[str, bytes | None]:
        """Read small whole files, concurrently where the filesystem allows.

        Returns the bytes of each name (at most ``max_size + 1`` of them, so that a caller
        can tell an oversized file), or ``None`` for a file that does not exist.
        """
        if self.is_local or len(names) < 2:
            found: dict[str, bytes | None] = {}
            for name in names:
                try:
                    found[name] = self.read_file(name, max_size)
                except FileNotFoundError:
                    found[name] = None
            return found
        paths = [self.path(name) for name in names]
        try:
            results = self.fs.cat(paths, on_error="return")
        except Exception as err:
            raise self.failed(names[0], "reading", err) from err
        out: dict[str, bytes | None] = {}
        for name, path in zip(names, paths):
            result = results.get(path, FileNotFoundError(path))
            if isinstance(result, FileNotFoundError):
                out[name] = None
            elif isinstance(result, BaseException):
                raise self.failed(name, "reading", result) from result
            else:
                out[name] = result[: max_size + 1]
        return out

    def replace_file(self, name: str, data: bytes, durable: bool) -> None:
        """Write ``name`` in one atomic step: readers see the old or the new bytes, never a mix."""
        if not self.is_local:
            with self.failures(name, "writing"):
                self.fs.pipe_file(self.path(name), data)
            return
        replace_local_file(self.path(name), data, durable)

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
                sync_directory(self.path(directory) if directory else self.root)

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


def open_input(url: str, options: dict[str, Any] | None = None) -> IO[bytes]:
    """Open one file, a local path or any fsspec URL, for reading as a binary stream.

    For input that is not a dataset (files to pack); the caller closes the stream.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    StorageError
        If the filesystem fails to open it.
    """
    if url_scheme(url) is None:
        return open(url, "rb")  # the caller closes it
    try:
        fs, path = fsspec.core.url_to_fs(url, **(options or {}))
        stream: IO[bytes] = fs.open(path, "rb")
    except FileNotFoundError:
        raise
    except Exception as err:
        raise StorageError(f"opening {url} failed: {err}", path=url) from err
    return stream
