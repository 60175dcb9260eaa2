"""The exception tree of splitdataloader: every error the library raises on purpose.

Each class also inherits the built-in exception that callers would naturally catch, so
``except FileNotFoundError`` or ``except IndexError`` keeps working::

    SplitDataError
    ├── DatasetNotFoundError            (FileNotFoundError)
    │   └── UncommittedDatasetError     files exist but no commit was ever made
    ├── DatasetExistsError              (FileExistsError) a dataset is where a new one goes
    ├── DatasetFormatError              (ValueError) manifest or index is not valid
    │   ├── UnsupportedFormatError      unknown format name or version
    │   └── UnsafeDatasetError          a name escapes the dataset root, or a size is absurd
    ├── CorruptDataError                (OSError) stored bytes are damaged or missing
    │   ├── MissingDataFileError        (FileNotFoundError) a committed file is gone
    │   ├── TruncatedDataError          a file is shorter than its commit says
    │   ├── ChecksumMismatchError       a record's bytes do not match its checksum
    │   └── DecodeError                 a codec cannot decode a record (corrupt, tampered)
    │       └── DecryptionError         authentication failed: wrong key or altered record
    ├── PluginError                     (RuntimeError) the plugin system is misused
    │   ├── PluginConflictError         two plugins claim one name (names both)
    │   └── MissingPluginError          (ImportError) no plugin, or its dependency is missing
    ├── CodecConfigError                (ValueError) an invalid codec option or chain
    ├── KeyUnavailableError             (PermissionError) no key for a key id
    ├── RecordTypeError                 (TypeError) a record is not a contiguous bytes-like
    ├── RecordTooLargeError             (ValueError) a record does not fit the format
    ├── SourceFormatError               (ValueError) an input to pack is not of its kind
    ├── SampleFormatError               (ValueError) a record is not a valid sample record
    ├── CommitConflictError             (RuntimeError) another writer committed first
    │   └── PartConflictError           another writer took the part id (pending or joined)
    ├── PartNotFoundError               (FileNotFoundError) no written part has the id
    ├── PartMismatchError               (ValueError) parts written with other settings
    ├── PartAlreadyJoinedError          (RuntimeError) a part is in the dataset already
    ├── ReadOnlyDatasetError            (PermissionError) e.g. a 0.0.1 dataset
    ├── WriterClosedError               (RuntimeError) the writer was committed or aborted
    ├── SamplingError                   (ValueError) a bad seed, epoch, rank or worker split
    │   └── ResumeStateError            a resume state of another dataset, seed or split
    └── WorkerError                     (ChildProcessError) a prefetch worker failed
        └── WorkerDiedError             the worker process ended early (killed, crashed)

All exceptions pickle with their attributes, so they cross process boundaries intact.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChecksumMismatchError",
    "CodecConfigError",
    "CommitConflictError",
    "CorruptDataError",
    "DatasetExistsError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DecodeError",
    "DecryptionError",
    "KeyUnavailableError",
    "MissingDataFileError",
    "MissingPluginError",
    "PartAlreadyJoinedError",
    "PartConflictError",
    "PartMismatchError",
    "PartNotFoundError",
    "PluginConflictError",
    "PluginError",
    "ReadOnlyDatasetError",
    "RecordTooLargeError",
    "RecordTypeError",
    "ResumeStateError",
    "SampleFormatError",
    "SamplingError",
    "SourceFormatError",
    "SplitDataError",
    "StorageError",
    "TruncatedDataError",
    "UncommittedDatasetError",
    "UnsafeDatasetError",
    "UnsupportedFormatError",
    "WorkerDiedError",
    "WorkerError",
    "WriterClosedError",
]


class SplitDataError(Exception):
    """Base class of every error raised by splitdataloader.

    Parameters
    ----------
    message
        The human-readable explanation.
    path
        The file or dataset URL concerned, when there is one.
    record
        The global record index concerned, when there is one.
    offset
        The byte offset inside ``path`` concerned, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.record = record
        self.offset = offset

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes are not restored by BaseException's default reduce.
        return (
            _rebuild,
            (type(self), self.message, self.path, self.record, self.offset),
        )


def _rebuild(
    cls: type[SplitDataError],
    message: str,
    path: str | None,
    record: int | None,
    offset: int | None,
) -> SplitDataError:
    return cls(message, path=path, record=record, offset=offset)


class DatasetNotFoundError(SplitDataError, FileNotFoundError):
    """No dataset (no manifest and no 0.0.1 index) exists at the given location."""


class UncommittedDatasetError(DatasetNotFoundError):
    """Data files exist but no write ever committed: the writer crashed or was aborted."""


class DatasetExistsError(SplitDataError, FileExistsError):
    """A dataset already exists where a new one was to be created (neither appending to it
    nor replacing it was asked for)."""


class DatasetFormatError(SplitDataError, ValueError):
    """The manifest or an index part is malformed or inconsistent."""


class UnsupportedFormatError(DatasetFormatError):
    """The dataset declares a format or version this release cannot read."""


class UnsafeDatasetError(DatasetFormatError):
    """The dataset names a file outside its root, or declares sizes beyond sane bounds."""


class CorruptDataError(SplitDataError, OSError):
    """Stored bytes are damaged: a bad frame, a short file or a wrong checksum."""


class MissingDataFileError(CorruptDataError, FileNotFoundError):
    """A file that a commit lists does not exist."""


class TruncatedDataError(CorruptDataError):
    """A file is shorter than the commit that lists it says."""


class ChecksumMismatchError(CorruptDataError):
    """A record's stored bytes do not match the checksum recorded for them."""


class DecodeError(CorruptDataError):
    """A codec could not decode a stored record: it is corrupt or was altered."""


class DecryptionError(DecodeError):
    """A record failed authentication: the key is wrong, or the record was altered or moved."""


class PluginError(SplitDataError, RuntimeError):
    """The plugin system was used wrongly or a plugin misbehaved."""


class PluginConflictError(PluginError):
    """Two plugins registered the same codec, key provider or backend name."""


class MissingPluginError(PluginError, ImportError):
    """No plugin provides a name, or the plugin's optional dependency is not installed.

    The message carries the exact ``pip install`` command that fixes it.
    """


class CodecConfigError(SplitDataError, ValueError):
    """A codec option is invalid, or a codec chain is in an invalid order."""


class KeyUnavailableError(SplitDataError, PermissionError):
    """No key provider could supply the key a dataset names (by key id, never the key)."""


class RecordTypeError(SplitDataError, TypeError):
    """A record given to a writer is not a contiguous bytes-like object."""


class RecordTooLargeError(SplitDataError, ValueError):
    """A record is larger than the format can hold (4 GiB - 1 bytes)."""


class CommitConflictError(SplitDataError, RuntimeError):
    """Another writer committed to the dataset since this writer started."""


class PartConflictError(CommitConflictError):
    """A part with the same id was already written to the dataset, or already joined.

    Part ids name the parts of a dataset for its whole life: a second writer given an id
    that is taken fails, and the first writer's part is left untouched.
    """


class PartNotFoundError(SplitDataError, FileNotFoundError):
    """No written (and not yet joined) part has the id given to a join."""


class PartMismatchError(SplitDataError, ValueError):
    """A part was written with another bin count, codec chain or checksum than the other
    parts of a join or the dataset, or for another dataset."""


class PartAlreadyJoinedError(SplitDataError, RuntimeError):
    """A part given to a join is in the dataset already: joining it again would duplicate
    its records."""


class StorageError(SplitDataError, OSError):
    """Reading or writing an object failed, after the filesystem's own retries.

    Raised for transient failures that did not go away (throttling, server errors, reset
    connections, timeouts, truncated responses); ``path`` names the object and the
    original exception is the ``__cause__``.
    """


class SourceFormatError(SplitDataError, ValueError):
    """An input to pack is not of the kind given or detected: a line that is not JSON, a
    damaged tar file, a sample with a repeated field (names the file, line or member)."""


class SampleFormatError(SplitDataError, ValueError):
    """A record is not a valid sample record (see :mod:`splitdataloader.pack`)."""


class ReadOnlyDatasetError(SplitDataError, PermissionError):
    """The dataset cannot be written in place (a splitdataloader 0.0.1 dataset)."""


class WriterClosedError(SplitDataError, RuntimeError):
    """The writer was already committed and closed, or aborted."""


class SamplingError(SplitDataError, ValueError):
    """An epoch or split argument is invalid: a negative seed or epoch, a rank outside
    ``[0, world_size)``, no workers, a block size of 0, an unknown ``even`` mode."""


class ResumeStateError(SamplingError):
    """A resume state does not belong here: it was saved for another dataset, seed, world
    size or order, or it is malformed or past the end of its epoch."""


class WorkerError(SplitDataError, ChildProcessError):
    """A prefetch worker process failed: its generator raised, or the process ended early.

    When the generator raised an exception that pickles, the consumer gets that exception
    itself, with a ``WorkerError`` as its ``__cause__`` carrying the worker's traceback; when
    it does not pickle (or is not an :class:`Exception`, e.g. ``SystemExit``), the consumer
    gets the ``WorkerError``.

    Parameters
    ----------
    message
        The human-readable explanation.
    pid
        The worker's process id.
    exitcode
        The worker's exit code when it is known: negative for the signal that ended it.
    traceback
        The worker's formatted traceback, when its generator raised.
    exc_type
        The qualified name of the exception the generator raised, when it raised.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
        traceback: str | None = None,
        exc_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.traceback = traceback
        self.exc_type = exc_type

    def __reduce__(self) -> tuple[Any, ...]:
        state = {
            "pid": self.pid,
            "exitcode": self.exitcode,
            "traceback": self.traceback,
            "exc_type": self.exc_type,
        }
        return (_rebuild_worker_error, (type(self), self.message, state))


class WorkerDiedError(WorkerError):
    """The worker process ended before the end of its items, e.g. killed by a signal."""


def _rebuild_worker_error(
    cls: type[WorkerError], message: str, state: dict[str, Any]
) -> WorkerError:
    return cls(message, **state)
