"""Packing inputs into a dataset, and unpacking a dataset back into files.

Owns :func:`pack`, which writes the records of one or more sources
(:mod:`splitdataloader.sources`) into a dataset in one commit through
:class:`~splitdataloader.SplitWriter`, and :func:`unpack`, which writes records back out as
files. What ``pack`` stored is described under the manifest key ``"pack"``:
``{"records": "raw" | "sample", "names": [{"first": i, "records": n, "file": "meta/…"}]}``,
each ``file`` a JSON list of the names of records ``i … i+n-1`` (a resource of the
dataset, so it is copied and kept with it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    SourceFormatError,
    UnsafeDatasetError,
)
from .loader import SplitDataLoader
from .samples import decode_sample
from .sources import KINDS, Item, detect_kind, iter_items
from .storage import open_storage
from .writer import SplitWriter

if TYPE_CHECKING:
    from .keys import KeyProvider

__all__ = ["METADATA_KEY", "PackReport", "UnpackReport", "pack", "record_names", "unpack"]

#: The manifest key describing what pack stored.
METADATA_KEY = "pack"
#: Records (or bytes) between two progress calls.
_PROGRESS_RECORDS = 1024
_PROGRESS_BYTES = 4 << 20
#: Records read at once when writing records out.
_BATCH_RECORDS = 512

ProgressCallback = Callable[[int, int], object]


@dataclass
class PackReport:
    """What :func:`pack` stored.

    Attributes
    ----------
    dest
        The dataset written.
    kinds
        The kind of each source.
    first
        The index of the first record added.
    records
        Records added.
    source_bytes
        Bytes of input they came from (files' contents, lines).
    total_records
        Records in the dataset afterwards.
    names_file
        The resource holding the added records' names, when names were stored.
    record_layout
        ``"raw"`` or ``"sample"`` (see the module docs).
    """

    dest: str
    kinds: list[str]
    first: int = 0
    records: int = 0
    source_bytes: int = 0
    total_records: int = 0
    names_file: str | None = None
    record_layout: str = "raw"


def _existing(dest: str, options: dict[str, Any] | None) -> SplitDataLoader | None:
    try:
        return SplitDataLoader(dest, storage_options=options)
    except DatasetNotFoundError:
        return None


def pack(
    sources: Sequence[str],
    dest: str,
    *,
    kind: str = "auto",
    paths: bool = False,
    names: bool = False,
    mode: str = "create",
    bins: int | None = None,
    codecs: Sequence[Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    storage_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    checksum: str | None = None,
    durable: bool = False,
    progress: ProgressCallback | None = None,
) -> PackReport:
    """Pack files into a dataset, in one commit.

    Parameters
    ----------
    sources
        Folders and files, read in the order given (see :func:`iter_source`).
    dest
        The dataset's URL.
    kind
        The kind of every source, or ``"auto"`` to tell each from its name.
    paths
        Folders: store each file as a sample record keyed by its relative path, so that
        :func:`unpack` restores the tree. Tar sources always store samples.
    names
        Also store the records' names (relative paths, sample keys, ``file:line``) as a
        JSON list in the dataset (a ``meta/`` resource named in the manifest).
    mode
        ``"create"`` (fail if ``dest`` holds a dataset), ``"append"`` or ``"overwrite"``.
    bins, codecs, keys, key_providers, shuffle, seed, durable
        As for :class:`~splitdataloader.SplitWriter`.
    storage_options, source_options
        fsspec options for the dataset and for remote source files.
    checksum
        Record checksum of a new dataset (``None``: the default).
    progress
        Called as ``progress(records, nbytes)`` with the records and source bytes packed
        since its previous call.

    Returns
    -------
    PackReport

    Raises
    ------
    DatasetExistsError
        With ``mode="create"``, if ``dest`` holds a dataset.
    SourceFormatError
        If a source is not of its kind; nothing is committed then.
    """
    if mode not in ("create", "append", "overwrite"):
        raise ValueError(f"mode must be 'create', 'append' or 'overwrite', not {mode!r}")
    kinds = [detect_kind(source) if kind == "auto" else kind for source in sources]
    for this in kinds:
        if this not in KINDS:
            raise ValueError(f"unknown source kind {this!r}; known: auto, {', '.join(KINDS)}")
    layout = "sample" if paths or "tar" in kinds else "raw"
    if layout == "sample" and any(k in ("jsonl", "text", "legacy") for k in kinds):
        raise SourceFormatError(
            "tar sources and --paths store sample records; pack line and dataset sources "
            "into another dataset"
        )
    existing = _existing(dest, storage_options)
    if existing is not None:
        with existing:
            if mode == "create":
                raise DatasetExistsError(
                    f"{dest} already holds a dataset of {len(existing)} records: append to "
                    f"it or overwrite it",
                    path=dest,
                )
            if mode == "append" and existing.is_legacy:
                raise DatasetExistsError(
                    f"{dest} is a splitdataloader 0.0.1 dataset: convert it before appending",
                    path=dest,
                )
            before = existing.manifest.extra.get(METADATA_KEY) if existing.manifest else None
            stored = before.get("records", "raw") if isinstance(before, dict) else "raw"
            if mode == "append" and len(existing) and stored != layout:
                raise SourceFormatError(
                    f"{dest} holds {stored} records; these sources make {layout} records",
                    path=dest,
                )
    report = PackReport(dest=dest, kinds=kinds, record_layout=layout)
    collected: list[str] | None = [] if names else None
    options: dict[str, Any] = {}
    if checksum is not None:
        options["checksum"] = checksum
    with SplitWriter(
        dest,
        bins=bins,
        shuffle=shuffle,
        start_clean=mode == "overwrite",
        storage_options=storage_options,
        seed=seed,
        durable=durable,
        codecs=codecs,
        keys=keys,
        key_providers=key_providers,
        **options,
    ) as writer:
        items = _all_items(sources, kinds, paths, source_options, keys, key_providers)
        counted = _counting(items, report, collected, progress)
        first = next(counted, None)
        if first is not None:
            report.first = writer.write(first)
            writer.write_many(counted)
        metadata = dict(writer.metadata.get(METADATA_KEY) or {}) if mode != "overwrite" else {}
        metadata["records"] = layout
        if collected is not None and report.records:
            report.names_file = writer.add_resource(
                "names.json", json.dumps(collected, ensure_ascii=False).encode("utf-8")
            )
            listed = list(metadata.get("names", []))
            listed.append(
                {"first": report.first, "records": report.records, "file": report.names_file}
            )
            metadata["names"] = listed
        writer.set_metadata(METADATA_KEY, metadata)
        report.total_records = writer.commit()
    return report


def _all_items(  # noqa: PLR0917 - internal
    sources: Sequence[str],
    kinds: Sequence[str],
    paths: bool,
    options: dict[str, Any] | None,
    keys: Mapping[str, bytes] | None,
    key_providers: Sequence[KeyProvider] | None,
) -> Iterator[Item]:
    for source, this in zip(sources, kinds):
        yield from iter_items(source, this, paths, options, keys, key_providers)


def _counting(
    items: Iterator[Item],
    report: PackReport,
    names: list[str] | None,
    progress: ProgressCallback | None,
) -> Iterator[bytes]:
    """The records of ``items``, counted into ``report`` (and ``names``) as they pass."""
    pending_records = pending_bytes = 0
    for item in items:
        report.records += 1
        report.source_bytes += item.size
        if names is not None:
            names.append(item.name)
        if progress is not None:
            pending_records += 1
            pending_bytes += item.size
            if pending_records >= _PROGRESS_RECORDS or pending_bytes >= _PROGRESS_BYTES:
                progress(pending_records, pending_bytes)
                pending_records = pending_bytes = 0
        yield item.record
    if progress is not None and pending_records:
        progress(pending_records, pending_bytes)


def record_names(
    url: str, *, storage_options: dict[str, Any] | None = None, manifest_extra: Mapping[str, Any]
) -> dict[int, str]:
    """The names a dataset stores for its records (see :func:`pack`), by record index.

    Raises
    ------
    UnsafeDatasetError
        If a names file is malformed.
    """
    metadata = manifest_extra.get(METADATA_KEY)
    if not isinstance(metadata, dict):
        return {}
    storage = open_storage(url, storage_options)
    found: dict[int, str] = {}
    for entry in metadata.get("names", []):
        try:
            first, count, name = int(entry["first"]), int(entry["records"]), str(entry["file"])
            listed = json.loads(storage.read_file(name).decode("utf-8"))
        except (KeyError, TypeError, ValueError, FileNotFoundError) as err:
            raise UnsafeDatasetError(
                f"{url}: the names list {entry!r} cannot be read: {err}", path=url
            ) from None
        if not isinstance(listed, list) or len(listed) != count:
            raise UnsafeDatasetError(f"{url}: names file {name} does not list {count} names")
        for k, text in enumerate(listed):
            found[first + k] = str(text)
    return found


@dataclass
class UnpackReport:
    """What :func:`unpack` wrote.

    Attributes
    ----------
    folder
        Where.
    records
        Records read.
    files
        Files written.
    nbytes
        Bytes written.
    named_by
        How files were named: ``"sample"`` (sample keys and fields), ``"names"`` (the
        stored names list) or ``"index"`` (record numbers).
    """

    folder: str
    records: int = 0
    files: int = 0
    nbytes: int = 0
    named_by: str = "index"


def _safe_path(folder: Path, name: str, index: int) -> Path:
    parts = PurePosixPath(name).parts
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafeDatasetError(
            f"record {index} is named {name!r}, which is not a plain relative path",
            record=index,
        )
    return folder.joinpath(*parts)


def unpack(
    url: str,
    folder: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> UnpackReport:
    """Write a dataset's records out as files: the reverse of :func:`pack` from a folder.

    Sample records become their files (``key.field``, or ``key``); otherwise a record is
    named by the stored names list when there is one, else by its index (zero-padded).

    Parameters
    ----------
    url
        The dataset.
    folder
        A local folder; created if missing.
    storage_options, keys, key_providers
        As for :class:`~splitdataloader.SplitDataLoader`.
    overwrite
        Replace files that exist; otherwise an existing file is an error.
    progress
        Called as ``progress(records, nbytes)`` as records are written.

    Raises
    ------
    UnsafeDatasetError
        If a record's name is not a plain relative path, or two records share a name.
    FileExistsError
        If a file exists and ``overwrite`` is false.
    SampleFormatError
        If a dataset said to hold sample records holds something else.
    """
    target = Path(folder)
    report = UnpackReport(folder=str(target))
    with SplitDataLoader(
        url, storage_options=storage_options, keys=keys, key_providers=key_providers
    ) as loader:
        extra = loader.manifest.extra if loader.manifest is not None else {}
        metadata = extra.get(METADATA_KEY)
        samples = isinstance(metadata, dict) and metadata.get("records") == "sample"
        names = (
            {}
            if samples
            else record_names(url, storage_options=storage_options, manifest_extra=extra)
        )
        report.named_by = "sample" if samples else ("names" if names else "index")
        width = len(str(max(0, len(loader) - 1)))
        seen: dict[Path, int] = {}
        for lo in range(0, len(loader), _BATCH_RECORDS):
            indices = range(lo, min(lo + _BATCH_RECORDS, len(loader)))
            written = 0
            for index, record in zip(indices, loader.get_many(indices)):
                if samples:
                    sample = decode_sample(record, index)
                    files = list(zip(sample.file_names(), sample.fields.values()))
                else:
                    files = [(names.get(index, f"{index:0{width}d}"), record)]
                for name, data in files:
                    path = _safe_path(target, name, index)
                    if path in seen:
                        raise UnsafeDatasetError(
                            f"records {seen[path]} and {index} are both named {name!r}",
                            record=index,
                        )
                    seen[path] = index
                    _write_file(path, data, overwrite, index)
                    report.files += 1
                    report.nbytes += len(data)
                    written += len(data)
                report.records += 1
            if progress is not None:
                progress(len(indices), written)
    return report


def _write_file(path: Path, data: bytes, overwrite: bool, index: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb" if overwrite else "xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists (record {index}); unpack into an empty folder or overwrite"
        ) from None
    except OSError as err:
        raise OSError(
            err.errno, f"cannot write record {index} to {path}: {err.strerror or err}"
        ) from err
