"""Checking a dataset against its manifest.

Owns :func:`verify` and its :class:`VerifyReport`. ``verify`` reads every file a dataset's
manifest lists and checks it at every level the format has: each segment's header, each
frame's length check and payload checksum (frames are self-delimiting, ``docs/format.md``
§5), each index entry against the frame it points at, the counts against the layout, and
optionally each record through the codec chain. It reports every damaged record by file,
record index and reason instead of stopping at the first, and lists the files nothing
references and the unfinished uploads. It changes nothing: :func:`repair` (which lives in
:mod:`splitdataloader.repair` and is re-exported here, with :class:`RepairReport` and
:data:`DEFAULT_GRACE_PERIOD`) is what fixes what can be fixed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checking import (
    DEFAULT_MAX_PROBLEMS,
    Checker,
    Problem,
    ProblemList,
    ProgressCallback,
    committed_records,
    read_ahead,
)
from .checking_legacy import check_legacy
from .errors import SplitDataError
from .format import MANIFEST_NAME, Manifest, parse_manifest
from .inventory import dataset_files, part_files, raise_missing, read_manifest
from .legacy import LEGACY_INDEX_NAME
from .repair import DEFAULT_GRACE_PERIOD, RebuiltIndex, RepairReport, repair
from .storage import open_storage

if TYPE_CHECKING:
    from .keys import KeyProvider
    from .storage import Storage

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "Problem",
    "RebuiltIndex",
    "RepairReport",
    "VerifyReport",
    "repair",
    "verify",
]


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    Attributes
    ----------
    url
        The dataset checked.
    format_version
        ``2``, or ``"0.0.1"`` for a splitdataloader 0.0.1 dataset.
    records
        Records the dataset holds.
    records_checked
        Records whose stored bytes were read and checked.
    files_checked
        Files read (segments, index parts, resources; a 0.0.1 dataset's bins and index).
    bytes_checked
        Bytes read from them.
    problems
        The problems found, in file order (at most ``max_problems`` of them).
    problem_count
        How many problems there were in all.
    unreferenced
        Files under ``data/``, ``index/`` and ``meta/`` that nothing references: leftovers
        of interrupted writes (or the files of a writer still writing), which
        :func:`repair` removes. Not a problem: readers ignore them.
    unfinished_uploads
        Object stores: files under the dataset whose multipart upload was started and
        neither completed nor aborted (a writer that died, or one still writing); their
        parts are stored, unseen, until :func:`repair` aborts them.
    decoded
        Whether every record was also decoded through the dataset's codecs.
    notes
        Remarks on what was not checked, and why.
    """

    url: str
    format_version: int | str
    records: int = 0
    records_checked: int = 0
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    unreferenced: list[str] = field(default_factory=list)
    unfinished_uploads: list[str] = field(default_factory=list)
    decoded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return self.problem_count == 0

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        document = dataclasses.asdict(self)
        document["ok"] = self.ok
        return document


def verify(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    decode: bool | None = None,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check every record, frame and index entry of a dataset against its manifest.

    Every file the manifest lists is read once: segment headers and sizes, each frame's
    length check, each record's checksum, each index entry against the frame it points
    at, and the record counts against the commit's layout; resources must exist. A
    splitdataloader 0.0.1 dataset gets the checks its format allows (every index entry
    points at a packet of its length; bins end on a packet boundary). Problems are
    collected, not raised: one damaged record does not hide the next.

    Parameters
    ----------
    url
        A local path or any fsspec URL of the dataset.
    storage_options
        Options for the fsspec filesystem.
    keys, key_providers
        As for :class:`~splitdataloader.SplitDataLoader`: keys by key id and the key
        providers to ask, for decoding the records of a dataset with codecs.
    decode
        Also decode every record through the dataset's codecs (decryption authenticates
        each record). ``None`` (the default) decodes when the dataset has codecs and
        their plugins and keys are available, and says so in ``notes`` when not;
        ``True`` requires it; ``False`` checks the stored bytes only.
    max_problems
        Problems kept in the report (all are counted).
    progress
        Called as ``progress(records, nbytes)`` with the records and bytes checked since
        its previous call.

    Returns
    -------
    VerifyReport
        ``report.ok`` is true when nothing is wrong.

    Raises
    ------
    DatasetNotFoundError
        If there is no dataset at ``url`` (:class:`UncommittedDatasetError` when there
        are files but no commit).
    DatasetFormatError
        If the manifest itself is unreadable: nothing else can be checked then.
    MissingPluginError, KeyUnavailableError
        With ``decode=True``, if a codec or a key is not available.
    """
    storage = open_storage(os.fspath(url), storage_options)
    listing = dataset_files(storage)
    raw, _ = read_manifest(storage)
    if raw is None:
        if storage.exists(LEGACY_INDEX_NAME):
            return _verify_legacy(storage, max_problems, progress)
        raise_missing(storage, listing)
    manifest = parse_manifest(raw, storage.display(MANIFEST_NAME))
    report = VerifyReport(url=storage.spec.url, format_version=2, records=manifest.records)
    decoder = None
    if manifest.codecs and decode is not False:
        try:
            decoder = _decoder(storage, manifest, keys, key_providers)
        except SplitDataError as err:
            if decode:
                raise
            report.notes.append(f"records were not decoded: {err}")
    problems = ProblemList(max_problems)
    for name in manifest.resources:
        if name not in listing:
            problems.add(Problem(name, None, "resource is missing"))
    checker = Checker(storage, manifest, listing, problems, decode=decoder, progress=progress)
    checker.decode_required = bool(decode)
    commits = list(committed_records(manifest))
    with read_ahead(storage, checker, checker.plan(commits)):
        for _, commit, first in commits:
            checker.check_commit(commit, first)
    report.decoded = checker.decode is not None
    report.notes.extend(checker.notes)
    parts, unreadable = part_files(storage)
    referenced = set(manifest.files()) | parts
    report.unreferenced = sorted(name for name in listing if name not in referenced)
    report.unfinished_uploads = sorted(name for name, _ in storage.pending_uploads())
    if unreadable:
        report.notes.append(f"part manifests that cannot be read: {', '.join(unreadable)}")
    report.records_checked = checker.counters.records
    report.bytes_checked = checker.counters.nbytes
    report.files_checked = checker.counters.files + len(manifest.resources)
    report.problems = problems.found
    report.problem_count = problems.count
    return report


def _verify_legacy(
    storage: Storage, max_problems: int, progress: ProgressCallback | None
) -> VerifyReport:
    problems = ProblemList(max_problems)
    counters = check_legacy(storage, problems, progress)
    return VerifyReport(
        url=storage.spec.url,
        format_version="0.0.1",
        records=counters.total,
        records_checked=counters.records,
        files_checked=counters.files,
        bytes_checked=counters.nbytes,
        problems=problems.found,
        problem_count=problems.count,
    )


def _decoder(
    storage: Storage,
    manifest: Manifest,
    keys: Mapping[str, bytes] | None,
    key_providers: Sequence[KeyProvider] | None,
) -> Callable[[bytes, int], bytes]:
    from .chain import environment, key_ring, open_pipeline  # noqa: PLC0415 - codecs on use
    from .codecs import RecordContext  # noqa: PLC0415

    pipeline = open_pipeline(
        manifest.codecs, environment(storage, manifest.dataset_id, key_ring(keys, key_providers))
    )
    dataset_id = manifest.dataset_id

    def decode(data: bytes, index: int) -> bytes:
        record: bytes = pipeline.decode(data, RecordContext(dataset_id, index))
        return record

    return decode
