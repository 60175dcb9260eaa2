"""Repairing what the format can repair: index parts, leftovers, unfinished uploads.

Owns :func:`repair` and its :class:`RepairReport`. ``repair`` rebuilds index parts that are
lost or damaged from their segments' frames and commits them in a new manifest, deletes
files that neither the manifest nor a part waiting to be joined references, and on object
stores aborts the multipart uploads a dead writer left unfinished, each only once it is
older than the grace period. It never modifies a committed file; damaged records themselves
cannot be repaired and are reported. Checking is :mod:`splitdataloader.verify`'s job, and
the record-by-record walk both use is :mod:`splitdataloader.checking`'s.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .byte_layout import INDEX_ENTRY_DTYPE, encode_index_header
from .checking import (
    DEFAULT_MAX_PROBLEMS,
    Checker,
    Problem,
    ProblemList,
    ProgressCallback,
    committed_records,
    read_ahead,
)
from .errors import CommitConflictError, DatasetFormatError, ReadOnlyDatasetError
from .format import (
    INDEX_DIR,
    MANIFEST_NAME,
    Commit,
    IndexRef,
    Manifest,
    dump_manifest,
    parse_manifest,
)
from .inventory import dataset_files, part_files, raise_missing, read_manifest
from .legacy import LEGACY_INDEX_NAME
from .storage import ManifestChangedError, open_storage

if TYPE_CHECKING:
    from . import objectstore
    from .storage import FileInfo, Storage

__all__ = ["DEFAULT_GRACE_PERIOD", "RebuiltIndex", "RepairReport", "repair"]

#: Unreferenced files younger than this (seconds) are left alone by :func:`repair`: they
#: may be the in-flight files of a writer that has not committed yet.
DEFAULT_GRACE_PERIOD = 24 * 3600.0


@dataclass(frozen=True)
class RebuiltIndex:
    """An index part that :func:`repair` rebuilt from its commit's frames.

    Attributes
    ----------
    commit
        The position of the commit in the manifest's ``commits`` list.
    old
        The index part the commit named before.
    new
        The rebuilt index part it names now (``None`` in a dry run).
    records
        Entries in it.
    """

    commit: int
    old: str
    new: str | None
    records: int


@dataclass
class RepairReport:
    """What :func:`repair` did (or, in a dry run, would do).

    Attributes
    ----------
    url
        The dataset repaired.
    dry_run
        True when nothing was changed.
    grace_period
        Seconds: unreferenced files younger than this were kept.
    removed
        Files deleted because no commit and no pending part references them (including
        index parts replaced by rebuilt ones).
    kept
        Unreferenced files left alone because they are younger than ``grace_period``
        (possibly a running writer's), or because their age is unknown.
    aborted_uploads
        Object stores: names of files whose unfinished multipart upload (started more
        than ``grace_period`` ago, by a writer that died or was aborted) was aborted,
        deleting the parts it had stored.
    kept_uploads
        Object stores: names of files whose unfinished upload is younger than
        ``grace_period`` (possibly a running writer's), or of unknown age.
    rebuilt
        Index parts rebuilt from their segments' frames.
    committed
        True when a new manifest was written (pointing at rebuilt index parts).
    unrepaired
        Problems that repair cannot fix: damaged or missing record bytes, index parts
        whose segments' frames are themselves damaged.
    records_checked, bytes_checked
        Work done by the check that preceded the repair.
    notes
        Remarks on what was left alone, and why.
    """

    url: str
    dry_run: bool
    grace_period: float
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    kept_uploads: list[str] = field(default_factory=list)
    rebuilt: list[RebuiltIndex] = field(default_factory=list)
    committed: bool = False
    unrepaired: list[Problem] = field(default_factory=list)
    records_checked: int = 0
    bytes_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is left that repair could not fix."""
        return not self.unrepaired

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        document = dataclasses.asdict(self)
        document["ok"] = self.ok
        return document


def repair(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    dry_run: bool = False,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    check_data: bool = True,
    rebuild: Collection[str] = (),
    durable: bool = True,
    progress: ProgressCallback | None = None,
) -> RepairReport:
    """Rebuild lost or damaged index parts from their frames, and delete unreferenced files.

    Index parts are immutable, so a rebuilt one gets a new name and the dataset a new
    manifest that names it (one conditional write, as a writer commits: a concurrent
    commit makes the repair fail rather than be lost). Files under ``data/``, ``index/``
    and ``meta/`` (and temporary manifests) that neither the manifest nor a part waiting
    to be joined references are deleted, once they are older than ``grace_period``.

    Safety with writers: a writer's files become referenced only when it commits, and
    until then they look exactly like leftovers of a crash. Files younger than
    ``grace_period`` are therefore kept; the files listed are compared with the manifest
    read *after* the listing, and again just before deleting, so a commit made meanwhile
    keeps its files. Only a writer that keeps one commit open longer than
    ``grace_period`` (on object stores: more than that between finishing a segment and
    committing) can lose files to a concurrent repair; use ``grace_period=0`` only when no
    writer is running.

    Parameters
    ----------
    url
        A local path or any fsspec URL of a version-2 dataset.
    storage_options
        Options for the fsspec filesystem.
    dry_run
        Report what would be done; change nothing.
    grace_period
        Seconds; unreferenced files younger than this are kept.
    check_data
        Read every segment and compare its frames with the index (as
        :func:`~splitdataloader.verify.verify` does), rebuilding every index part that
        disagrees and reporting damaged records. With ``False``, only index parts that are
        missing, of the wrong size or with a bad header are found (no segment is read unless
        one is rebuilt), plus ``rebuild``.
    rebuild
        Names of index parts (``index/…``) to rebuild in any case.
    durable
        ``fsync`` the rebuilt index parts and the manifest on local disk.
    progress
        Called as ``progress(records, nbytes)`` while segments are read.

    Returns
    -------
    RepairReport

    Raises
    ------
    ReadOnlyDatasetError
        If ``url`` is a splitdataloader 0.0.1 dataset (convert it instead).
    DatasetNotFoundError
        If there is no dataset and no leftover file at ``url``.
    DatasetFormatError
        If the manifest itself is unreadable.
    CommitConflictError
        If another writer committed while rebuilt index parts were being written; run
        the repair again.
    """
    if grace_period < 0:
        raise ValueError(f"grace_period must be >= 0 seconds, not {grace_period!r}")
    storage = open_storage(os.fspath(url), storage_options)
    report = RepairReport(url=storage.spec.url, dry_run=dry_run, grace_period=grace_period)
    # List first, read the manifest second: a file committed in between is referenced.
    listing = dataset_files(storage)
    uploads = storage.pending_uploads()
    raw, version = read_manifest(storage)
    manifest: Manifest | None = None
    if raw is None:
        if storage.exists(LEGACY_INDEX_NAME):
            raise ReadOnlyDatasetError(
                f"{storage.spec.url} is a splitdataloader 0.0.1 dataset, which has no "
                f"index to rebuild: convert it (splitdata convert) to repair it",
                path=storage.spec.url,
            )
        if not listing and not uploads:
            raise_missing(storage, listing)
        report.notes.append("no commit: every file under data/, index/ and meta/ is a leftover")
    else:
        manifest = parse_manifest(raw, storage.display(MANIFEST_NAME))
        manifest = _rebuild_indexes(
            storage, manifest, listing, report, check_data, set(rebuild), durable, progress
        )
        if report.rebuilt and not dry_run:
            data = dump_manifest(manifest)
            try:
                storage.commit_manifest(MANIFEST_NAME, data, version, durable)
            except ManifestChangedError as err:
                storage.remove([r.new for r in report.rebuilt if r.new is not None])
                raise CommitConflictError(
                    f"another writer committed to {storage.spec.url} during the repair; "
                    f"nothing was changed: run the repair again",
                    path=storage.display(MANIFEST_NAME),
                ) from err
            report.committed = True
    _remove_unreferenced(storage, manifest, listing, report)
    _abort_stale_uploads(storage, uploads, report)
    return report


def _abort_stale_uploads(
    storage: Storage,
    uploads: Sequence[tuple[str, objectstore.PendingUpload]],
    report: RepairReport,
) -> None:
    """Abort unfinished multipart uploads older than the grace period.

    An unfinished upload creates no object, so no commit can name it: once no writer can
    still be finishing it, its stored parts are only a cost.
    """
    now = time.time()
    stale: list[tuple[str, objectstore.PendingUpload]] = []
    for name, upload in uploads:
        started = upload.initiated
        if started is None or now - started < report.grace_period:
            report.kept_uploads.append(name)
        else:
            stale.append((name, upload))
    report.aborted_uploads = sorted(name for name, _ in stale)
    report.kept_uploads.sort()
    if report.kept_uploads:
        report.notes.append(
            f"{len(report.kept_uploads)} unfinished uploads are younger than the grace "
            f"period of {report.grace_period:g} s (or of unknown age) and were left running: "
            f"they may belong to a writer that is still writing"
        )
    if not report.dry_run and stale:
        storage.abort_uploads(stale)


def _rebuild_indexes(  # noqa: PLR0917 - internal, called from one place
    storage: Storage,
    manifest: Manifest,
    listing: Mapping[str, FileInfo],
    report: RepairReport,
    check_data: bool,
    wanted: set[str],
    durable: bool,
    progress: ProgressCallback | None,
) -> Manifest:
    """Check the commits, rebuild the index parts that need it; the manifest to commit."""
    problems = ProblemList(DEFAULT_MAX_PROBLEMS)
    checker = Checker(storage, manifest, listing, problems, decode=None, progress=progress)
    commits = list(committed_records(manifest))
    to_rebuild: list[tuple[int, Commit, int]] = []
    if check_data:
        with read_ahead(storage, checker, checker.plan(commits)):
            for number, commit, first in commits:
                outcome = checker.check_commit(commit, first)
                if outcome.index_damaged or commit.index.name in wanted:
                    to_rebuild.append((number, commit, first))
    else:
        for number, commit, first in commits:
            if not checker.index_usable(commit) or commit.index.name in wanted:
                to_rebuild.append((number, commit, first))
    session = secrets.token_hex(8)
    commits_now = list(manifest.commits)
    unrepaired: list[Problem] = []
    for number, commit, first in to_rebuild:
        new_name = None if report.dry_run else f"{INDEX_DIR}/{session}-r{number:04d}.idx"
        if not _rebuild_one(storage, checker, commit, first, new_name, durable):
            unrepaired.append(
                Problem(
                    commit.index.name,
                    None,
                    "cannot be rebuilt: the frames of its segments are damaged or missing",
                )
            )
            continue
        report.rebuilt.append(RebuiltIndex(number, commit.index.name, new_name, commit.records))
        if new_name is not None:
            commits_now[number] = dataclasses.replace(
                commit, index=IndexRef(new_name, commit.index.size)
            )
    report.unrepaired = [p for p in problems.found if not p.repairable] + unrepaired
    report.records_checked = checker.counters.records
    report.bytes_checked = checker.counters.nbytes
    if problems.count > len(problems.found):
        report.notes.append(f"{problems.count} problems in all; the first {problems.limit} shown")
    if not report.rebuilt or report.dry_run:
        return manifest
    return dataclasses.replace(
        manifest, generation=manifest.generation + 1, commits=tuple(commits_now)
    )


def _rebuild_one(  # noqa: PLR0917 - internal, called from one place
    storage: Storage,
    checker: Checker,
    commit: Commit,
    first: int,
    name: str | None,
    durable: bool,
) -> bool:
    """Write index part ``name`` for ``commit`` from its frames (only check that it can be
    done when ``name`` is None); False when the frames do not allow it."""
    columns = (array.array("I"), array.array("I"), array.array("Q"), array.array("Q"))

    def collect(segment: int, length: int, offset: int, checksum: int) -> None:
        columns[0].append(segment)
        columns[1].append(length)
        columns[2].append(offset)
        columns[3].append(checksum)

    # Problems were reported by the check; this pass only gathers the entries, bin by bin
    # (the order of the index part), 24 bytes a record.
    walker = Checker(
        storage,
        checker.manifest,
        checker.sizes,
        ProblemList(checker.problems.limit),
        decode=None,
        progress=checker.progress,
    )
    with read_ahead(storage, walker, walker.plan([(0, commit, first)])):
        outcome = walker.check_commit(commit, first, rebuild=collect)
    checker.counters.records += walker.counters.records
    checker.counters.nbytes += walker.counters.nbytes
    # The walk checked the records' bytes too: what it found damaged stays damaged.
    for problem in walker.problems.found:
        if problem not in checker.problems.found:
            checker.problems.add(problem)
    if not outcome.frames_intact or len(columns[0]) != commit.records:
        return False
    if name is None:
        return True
    entries = np.empty(commit.records, dtype=INDEX_ENTRY_DTYPE)
    for column, key in zip(columns, ("segment", "length", "offset", "checksum")):
        entries[key] = np.frombuffer(column, dtype=entries.dtype[key])
    storage.makedirs(INDEX_DIR)
    writer = storage.open_writer(name, durable)
    try:
        writer.write(encode_index_header(commit.records))
        writer.write(entries.tobytes())
        writer.close()
    except BaseException:
        writer.discard()
        raise
    return True


def _remove_unreferenced(
    storage: Storage,
    manifest: Manifest | None,
    listing: Mapping[str, FileInfo],
    report: RepairReport,
) -> None:
    parts, unreadable = part_files(storage)
    if unreadable:
        report.notes.append(
            f"nothing was removed: part manifests that cannot be read may reference files "
            f"({', '.join(unreadable)})"
        )
        return
    referenced = parts | set(manifest.files() if manifest is not None else ())
    # Read the manifest again: a writer that committed since keeps its files.
    raw, _ = read_manifest(storage)
    if raw is not None:
        with contextlib.suppress(DatasetFormatError):
            referenced |= set(parse_manifest(raw, storage.display(MANIFEST_NAME)).files())
    # Index parts replaced by rebuilt ones (in a dry run: that would be) were damaged, and
    # the manifest no longer names them.
    replaced = {r.old for r in report.rebuilt}
    referenced -= replaced
    now = time.time()
    remove: list[str] = []
    for name in sorted(listing):
        if name in referenced:
            continue
        modified = listing[name].modified
        if name in replaced:
            remove.append(name)  # was damaged, and no commit names it any more
        elif modified is None or now - modified < report.grace_period:
            report.kept.append(name)
        else:
            remove.append(name)
    if report.kept:
        report.notes.append(
            f"{len(report.kept)} unreferenced files are younger than the grace period of "
            f"{report.grace_period:g} s (or of unknown age) and were kept: they may belong "
            f"to a writer that has not committed yet"
        )
    report.removed = remove
    if not report.dry_run and remove:
        storage.remove(remove)
