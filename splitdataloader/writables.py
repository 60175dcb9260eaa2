"""Files being written: the :class:`Writable` protocol and the writers behind it.

Owns how a stream of bytes becomes a file: an unbuffered local file, fsync'ed on close
when durability is asked for, or a file opened through fsspec, which object stores
upload in parts of ``part_size`` bytes; and closing many such files at once (concurrently
on remote storage, where closing completes an upload). It does not name files, resolve
URLs or write whole files in one step: :class:`~splitdataloader.storage.Storage` does,
and its ``open_writer`` and ``close_writers`` are the entry points to this module.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .storage import Storage

__all__ = [
    "Writable",
    "close_writables",
    "create_local_file",
    "open_writable",
    "replace_local_file",
    "sync_directory",
]


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
        # No memoryview in this frame unless a write falls short: a sampling profiler
        # (Dask's workers run one) can keep the frame, and a view in it, alive after the
        # call, and the writer then could not clear its reused buffer.
        written = self._file.write(data) or 0
        if written < len(data):  # a short write (e.g. interrupted): write the rest
            with memoryview(data) as view:
                while written < len(view):
                    with view[written:] as rest:
                        written += self._file.write(rest) or 0
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
    """A file opened for writing through fsspec.

    Object stores buffer up to ``part_size`` bytes, then upload them as one part of a
    multipart upload; ``close`` completes the upload (a single PUT for small files).
    """

    def __init__(self, storage: Storage, name: str, part_size: int) -> None:
        self._storage = storage
        self._name = name
        self._path = storage.path(name)
        with storage.failures(name, "opening"):
            self._file: Any = storage.fs.open(self._path, "wb", block_size=part_size)

    def write(self, data: Any) -> int | None:
        with self._storage.failures(self._name, "writing"):
            result: int | None = self._file.write(data)
        return result

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with self._storage.failures(self._name, "uploading"):
                file.close()

    def discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):
                if hasattr(file, "discard"):
                    file.discard()  # drops the buffer, aborts a multipart upload
                    # A discarded buffered file must not flush again when collected.
                    file.closed = True
                else:
                    file.close()
        self._storage.remove([self._name])


def open_writable(storage: Storage, name: str, durable: bool, part_size: int) -> Writable:
    """Open ``name`` (relative to the root of ``storage``) for writing."""
    if storage.is_local:
        return _LocalWriter(storage.path(name), durable)
    return _FsspecWriter(storage, name, part_size)


def close_writables(storage: Storage, writers: Sequence[Writable], concurrency: int) -> None:
    """Close (complete the uploads of) many files, concurrently on remote storage."""
    if storage.is_local or len(writers) < 2:
        for writer in writers:
            writer.close()
        return
    with ThreadPoolExecutor(
        min(concurrency, len(writers)), thread_name_prefix="splitdataloader-upload"
    ) as pool:
        for future in [pool.submit(writer.close) for writer in writers]:
            future.result()


def _write_local(path: str, data: bytes, durable: bool, mode: str) -> None:
    """Write ``data`` to the local file ``path`` (``mode`` "wb" or "xb"), fsynced if
    ``durable``."""
    with open(path, mode) as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def replace_local_file(target: str, data: bytes, durable: bool) -> None:
    """Write the local file ``target`` in one atomic step: a temporary file, renamed over it."""
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        _write_local(temporary, data, durable, "wb")
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        sync_directory(os.path.dirname(target))


def create_local_file(target: str, data: bytes, durable: bool) -> None:
    """Write the local file ``target`` in one atomic step, only if it does not exist yet:
    a temporary file, hard-linked to ``target``.

    Raises
    ------
    FileExistsError
        If ``target`` exists; it is left as it was.
    """
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        _write_local(temporary, data, durable, "wb")
        try:
            os.link(temporary, target)  # atomic, and refuses an existing target
        except FileExistsError:
            raise
        except OSError:
            # No hard links here (some network and FAT filesystems): an exclusive
            # create still refuses an existing file, though its bytes appear in steps.
            _write_local(target, data, durable, "xb")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    if durable:
        sync_directory(os.path.dirname(target))


def sync_directory(path: str) -> None:
    """fsync the local folder ``path``, so that the names in it survive a power failure."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
