"""Copying a dataset between any two locations, as files or re-encoded record by record.

Owns :func:`copy_dataset`. Without re-encoding, it copies the files a manifest lists, byte
for byte, and writes the manifest last, with the same conditional write a writer commits
with: an interrupted copy leaves the destination without a new commit, and running it
again skips the files already there (names are unique and files immutable, so a file of
the right size is the right file). It also brings a destination holding an older
generation of the same dataset up to date. Re-encoding (other codecs, another key,
another bin count, or a splitdataloader 0.0.1 source) reads the records in index order
and writes them through :class:`~splitdataloader.SplitWriter`, committing every
``commit_bytes`` so that an interrupted copy resumes where its last commit ended.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    CodecConfigError,
    CommitConflictError,
    DatasetExistsError,
    DatasetFormatError,
    DatasetNotFoundError,
    TruncatedDataError,
)
from .format import (
    DATA_DIR,
    INDEX_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    META_DIR,
    Manifest,
    parse_manifest,
)
from .loader import SplitDataLoader
from .storage import ManifestChangedError, Storage, open_storage
from .writer import SplitWriter

if TYPE_CHECKING:
    from .keys import KeyProvider

__all__ = ["DEFAULT_COMMIT_BYTES", "METADATA_KEY", "CopyReport", "copy_dataset"]

#: Record bytes a re-encoding copy writes between two commits (its resume points).
DEFAULT_COMMIT_BYTES = 1 << 30
#: The manifest key a re-encoded copy records its source under.
METADATA_KEY = "copied_from"
#: Bytes read at once when copying a file.
CHUNK_BYTES = 8 << 20
#: Files copied at once on remote storage.
FILE_CONCURRENCY = 8
#: Records read at once while re-encoding.
_BATCH_RECORDS = 1024
_BATCH_BYTES = 32 << 20

ProgressCallback = Callable[[int, int], object]


@dataclass
class CopyReport:
    """What :func:`copy_dataset` did.

    Attributes
    ----------
    source, dest
        The two datasets.
    mode
        ``"files"`` (copied byte for byte) or ``"records"`` (re-encoded).
    up_to_date
        True when the destination already held the source's current commit.
    files_copied, files_skipped
        Files copied, and files already at the destination (from an interrupted copy).
    bytes_copied
        Bytes copied (files mode) or record bytes read (records mode).
    records_copied
        Records written (records mode), or records in the copied commit (files mode).
    resumed_from
        Records mode: the records already at the destination when the copy started.
    records
        Records in the destination afterwards.
    """

    source: str
    dest: str
    mode: str
    up_to_date: bool = False
    files_copied: int = 0
    files_skipped: int = 0
    bytes_copied: int = 0
    records_copied: int = 0
    resumed_from: int = 0
    records: int = 0


def copy_dataset(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    dest_storage_options: dict[str, Any] | None = None,
    codecs: Sequence[Any] | None = None,
    bins: int | None = None,
    reencode: bool | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    overwrite: bool = False,
    durable: bool = False,
    commit_bytes: int = DEFAULT_COMMIT_BYTES,
    progress: ProgressCallback | None = None,
) -> CopyReport:
    """Copy a dataset to another location, optionally re-encoding it; resumable.

    Parameters
    ----------
    source, dest
        Local paths or any fsspec URLs.
    storage_options, dest_storage_options
        fsspec options for the source and the destination (the destination's default to
        the source's).
    codecs
        Re-encode with this codec chain (as for :class:`~splitdataloader.SplitWriter`;
        ``[]`` stores records as they are). ``None`` keeps the source's chain.
    bins
        Re-encode into this many bins.
    reencode
        Force (``True``) or forbid (``False``) re-encoding; by default it happens when
        ``codecs`` or ``bins`` ask for it or the source is a splitdataloader 0.0.1 dataset.
    keys, key_providers
        As for the loader and the writer: keys to read the source and to encrypt the copy.
    overwrite
        Replace another dataset at ``dest``; without it that is an error. A partial or
        older copy of the same source is always resumed or updated.
    durable
        ``fsync`` what is written on local disk before committing.
    commit_bytes
        Re-encoding: commit after about this many record bytes.
    progress
        Called as ``progress(records, nbytes)`` with the records and bytes copied since
        its previous call.

    Returns
    -------
    CopyReport

    Raises
    ------
    DatasetExistsError
        If ``dest`` holds another dataset and ``overwrite`` is false.
    CodecConfigError
        If re-encoding would keep a codec chain whose codecs store files (a zstd
        dictionary): name the codecs to re-encode with.
    CommitConflictError
        If another writer committed to ``dest`` during the copy.
    """
    if type(commit_bytes) is not int or commit_bytes < 1:
        raise ValueError(f"commit_bytes must be a positive integer, not {commit_bytes!r}")
    dest_options = dest_storage_options if dest_storage_options is not None else storage_options
    src = open_storage(os.fspath(source), storage_options)
    dst = open_storage(os.fspath(dest), dest_options)
    if src.spec.url.rstrip("/") == dst.spec.url.rstrip("/"):
        raise ValueError(f"source and destination are the same location: {src.spec.url}")
    raw, _ = src.read_manifest(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if raw is None:
        # A 0.0.1 dataset (or nothing: the loader says which).
        SplitDataLoader(src.spec.url, storage_options=storage_options).close()
        if reencode is False:
            raise ValueError(
                f"{src.spec.url} is a splitdataloader 0.0.1 dataset: it is converted as it "
                f"is copied, which re-encodes it"
            )
        reencode = True
    wanted = codecs is not None or bins is not None
    if reencode is False and wanted:
        raise ValueError("codecs and bins re-encode the copy; they contradict reencode=False")
    if reencode or wanted:
        return _copy_records(
            src,
            dst,
            codecs=codecs,
            bins=bins,
            keys=keys,
            key_providers=key_providers,
            overwrite=overwrite,
            durable=durable,
            commit_bytes=commit_bytes,
            progress=progress,
        )
    assert raw is not None  # a 0.0.1 source always re-encodes
    return _copy_files(src, dst, raw, overwrite=overwrite, durable=durable, progress=progress)


# ---------------------------------------------------------------------------- files


def _copy_files(
    src: Storage,
    dst: Storage,
    raw: bytes,
    *,
    overwrite: bool,
    durable: bool,
    progress: ProgressCallback | None,
) -> CopyReport:
    manifest = parse_manifest(raw, src.display(MANIFEST_NAME))
    report = CopyReport(src.spec.url, dst.spec.url, "files", records=manifest.records)
    dest_raw, version = dst.read_manifest(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if dest_raw == raw:
        report.up_to_date = True
        report.files_skipped = len(manifest.files())
        return report
    replacing = False
    if dest_raw is not None:
        if not _older_copy(dest_raw, dst, manifest):
            if not overwrite:
                raise DatasetExistsError(
                    f"{dst.spec.url} holds another dataset: overwrite it or choose another "
                    f"destination",
                    path=dst.spec.url,
                )
            replacing = True
    elif not overwrite and dst.exists("index.dat"):
        raise DatasetExistsError(
            f"{dst.spec.url} holds a splitdataloader 0.0.1 dataset: overwrite it or choose "
            f"another destination",
            path=dst.spec.url,
        )
    present: dict[str, int] = {}
    for directory in (DATA_DIR, INDEX_DIR, META_DIR):
        present.update({name: info.size for name, info in dst.list_files(directory).items()})
    sizes = _expected_sizes(src, manifest)
    todo = [name for name in sizes if present.get(name) != sizes[name]]
    report.files_skipped = len(sizes) - len(todo)
    report.records_copied = manifest.records
    records_of = {s.name: s.records for c in manifest.commits for s in c.segments}
    lock = threading.Lock()

    def advance(records: int, nbytes: int) -> None:
        with lock:
            report.bytes_copied += nbytes
            if progress is not None:
                progress(records, nbytes)

    dst.makedirs("", DATA_DIR, INDEX_DIR, META_DIR)
    if src.is_local and dst.is_local:
        for name in todo:
            _copy_file(src, dst, name, sizes[name], durable, records_of.get(name, 0), advance)
    else:
        with ThreadPoolExecutor(FILE_CONCURRENCY, thread_name_prefix="splitdata-cp") as pool:
            futures = [
                pool.submit(
                    _copy_file,
                    src,
                    dst,
                    name,
                    sizes[name],
                    durable,
                    records_of.get(name, 0),
                    advance,
                )
                for name in todo
            ]
            for future in futures:
                future.result()
    report.files_copied = len(todo)
    dst.sync_directories(DATA_DIR, INDEX_DIR, META_DIR)
    try:
        dst.commit_manifest(MANIFEST_NAME, raw, version, durable)
    except ManifestChangedError as err:
        raise CommitConflictError(
            f"another writer committed to {dst.spec.url} during the copy; the copied files "
            f"stay and the next copy skips them",
            path=dst.display(MANIFEST_NAME),
        ) from err
    if replacing:
        keep = set(manifest.files())
        dst.remove(
            [
                name
                for directory in (DATA_DIR, INDEX_DIR, META_DIR)
                for name in dst.list_names(directory)
                if name not in keep
            ]
        )
    return report


def _older_copy(dest_raw: bytes, dst: Storage, manifest: Manifest) -> bool:
    """True if the destination holds an earlier commit of the same dataset."""
    try:
        older = parse_manifest(dest_raw, dst.display(MANIFEST_NAME))
    except DatasetFormatError:
        return False
    return (
        older.dataset_id == manifest.dataset_id
        and older.generation <= manifest.generation
        and manifest.commits[: len(older.commits)] == older.commits
    )


def _expected_sizes(src: Storage, manifest: Manifest) -> dict[str, int]:
    """Every file of the commit by name, with its size (resources: as listed)."""
    sizes: dict[str, int] = {}
    if manifest.resources:
        listed = src.list_files(META_DIR)
        for name in manifest.resources:
            if name not in listed:
                raise src.missing(name)
            sizes[name] = listed[name].size
    for commit in manifest.commits:
        if commit.records:
            sizes[commit.index.name] = commit.index.size
        for segment in commit.segments:
            sizes[segment.name] = segment.size
    return sizes


def _copy_file(  # noqa: PLR0917 - internal, submitted to a pool
    src: Storage,
    dst: Storage,
    name: str,
    size: int,
    durable: bool,
    records: int,
    advance: ProgressCallback,
) -> None:
    writer = dst.open_writer(name, durable)
    try:
        for start in range(0, size, CHUNK_BYTES):
            end = min(start + CHUNK_BYTES, size)
            data = src.read_range(name, start, end)
            if len(data) != end - start:
                where = src.display(name)
                raise TruncatedDataError(
                    f"{where} is shorter than its commit says ({start + len(data)} bytes of "
                    f"{size})",
                    path=where,
                    offset=start + len(data),
                )
            writer.write(data)
            advance(0, len(data))
        writer.close()
    except BaseException:
        writer.discard()
        raise
    if records:
        advance(records, 0)


# ---------------------------------------------------------------------------- records


def _source_token(src: Storage, manifest: Manifest | None) -> str:
    """What identifies the source of a re-encoded copy: its dataset id (its URL for 0.0.1)."""
    return manifest.dataset_id if manifest is not None else f"0.0.1:{src.spec.url}"


def _kept_chain(manifest: Manifest | None, url: str) -> list[dict[str, Any]]:
    """The source's codec configs, to re-encode with the same chain."""
    if manifest is None:
        return []
    resources = set(manifest.resources)
    for config in manifest.codecs:
        if any(isinstance(value, str) and value in resources for value in config.values()):
            raise CodecConfigError(
                f"{url} stores records through codec {config['id']!r} with a file of its "
                f"own (e.g. a trained dictionary), which does not carry over to a re-encoded "
                f"copy: name the codecs to re-encode with (e.g. codecs=[{{'id': "
                f"{config['id']!r}, 'dictionary': True}}])",
                path=url,
            )
    return [dict(config) for config in manifest.codecs]


def _copy_records(
    src: Storage,
    dst: Storage,
    *,
    codecs: Sequence[Any] | None,
    bins: int | None,
    keys: Mapping[str, bytes] | None,
    key_providers: Sequence[KeyProvider] | None,
    overwrite: bool,
    durable: bool,
    commit_bytes: int,
    progress: ProgressCallback | None,
) -> CopyReport:
    loader = SplitDataLoader(
        src.spec.url, storage_options=src.spec.options, keys=keys, key_providers=key_providers
    )
    with loader:
        manifest = loader.manifest
        token = _source_token(src, manifest)
        report = CopyReport(src.spec.url, dst.spec.url, "records")
        start, replace = _resume_point(dst, token, len(loader), overwrite)
        report.resumed_from = start
        if start == len(loader) and not replace:
            report.up_to_date = True
            report.records = start
            return report
        chain = list(codecs) if codecs is not None else _kept_chain(manifest, src.spec.url)
        with SplitWriter(
            dst.spec.url,
            bins=bins or loader.num_bins or None,
            start_clean=replace,
            storage_options=dst.spec.options,
            durable=durable,
            codecs=chain if start == 0 or replace else None,
            keys=keys,
            key_providers=key_providers,
        ) as writer:
            if start == 0 or replace:
                _carry_metadata(src, manifest, writer, token)
            pending = 0
            position = start
            batch = 16  # records per read, adapted to their size
            while position < len(loader):
                records = loader.get_many(range(position, min(position + batch, len(loader))))
                writer.write_many(records)
                size = sum(len(record) for record in records)
                position += len(records)
                pending += size
                report.records_copied += len(records)
                report.bytes_copied += size
                if progress is not None:
                    progress(len(records), size)
                average = max(1, size // max(1, len(records)))
                batch = max(1, min(_BATCH_RECORDS, _BATCH_BYTES // average))
                if pending >= commit_bytes:
                    writer.commit()
                    pending = 0
            report.records = writer.commit()
    return report


def _resume_point(dst: Storage, token: str, total: int, overwrite: bool) -> tuple[int, bool]:
    """``(records already copied, replace the destination)``."""
    try:
        existing = SplitDataLoader(dst.spec.url, storage_options=dst.spec.options)
    except DatasetNotFoundError:
        return 0, False
    with existing:
        origin = existing.manifest.extra.get(METADATA_KEY) if existing.manifest else None
        same = isinstance(origin, dict) and origin.get("source") == token
        if same and len(existing) <= total:
            return len(existing), False
        if not overwrite:
            raise DatasetExistsError(
                f"{dst.spec.url} holds another dataset: overwrite it or choose another destination",
                path=dst.spec.url,
            )
        return 0, True


def _carry_metadata(
    src: Storage, manifest: Manifest | None, writer: SplitWriter, token: str
) -> None:
    """Copy the source's own metadata and the files it names (not the codecs')."""
    renamed: dict[str, str] = {}
    if manifest is not None:
        codec_files = {
            value
            for config in manifest.codecs
            for value in config.values()
            if isinstance(value, str)
        }
        for name in manifest.resources:
            if name not in codec_files:
                hint = name.rsplit("/", 1)[-1].split("-", 2)[-1]
                renamed[name] = writer.add_resource(hint, src.read_file(name))
        for key, value in manifest.extra.items():
            if key != METADATA_KEY:
                writer.set_metadata(key, _renamed(value, renamed))
    writer.set_metadata(METADATA_KEY, {"source": token, "url": src.spec.url})


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` with every string that names a copied resource replaced by its new name."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _renamed(item, names) for key, item in value.items()}
    return value
