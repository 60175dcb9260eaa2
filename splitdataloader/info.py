"""A dataset at a glance: what :func:`dataset_info` reports from its manifest.

Owns the summary ``splitdata info`` prints: format version, records, bins, segments,
bytes stored against the records' own size, the codec chain and key ids, the commits,
and the tools' metadata. It reads the manifest (one request) and, for a dataset with
codecs, decodes a sample of records to estimate their size before encoding; it never
writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .byte_layout import FRAME_HEADER, SEGMENT_HEADER
from .errors import SplitDataError
from .format import MANIFEST_NAME, Manifest
from .legacy import LEGACY_INDEX_NAME, legacy_bin_names
from .loader import SplitDataLoader
from .storage import open_storage

if TYPE_CHECKING:
    from .keys import KeyProvider

__all__ = ["CommitInfo", "DatasetInfo", "dataset_info"]

#: Records decoded to estimate the size of the records before encoding.
DEFAULT_RAW_SAMPLE = 64


@dataclass(frozen=True)
class CommitInfo:
    """One commit of a dataset.

    Attributes
    ----------
    generation, session, created, records, bins
        As in the manifest (``docs/format.md`` §2).
    segments
        Segments it added.
    stored_bytes
        Bytes of its segments and index part.
    part
        The id of the part it was written as, if any.
    """

    generation: int
    session: str
    created: str
    records: int
    bins: int
    segments: int
    stored_bytes: int
    part: str | None = None


@dataclass
class DatasetInfo:
    """What :func:`dataset_info` found.

    Attributes
    ----------
    url
        The dataset.
    format_version
        ``2``, or ``"0.0.1"`` for a splitdataloader 0.0.1 dataset.
    dataset_id, generation
        The manifest's (``None`` for 0.0.1).
    records, bins, segments
        Records, bins and data files (a 0.0.1 dataset's bin files count as segments).
    stored_bytes
        Bytes of every file the dataset consists of (manifest, segments, index parts,
        resources).
    payload_bytes
        Bytes of the records as stored (after codecs), without framing.
    raw_bytes
        Bytes of the records as written (before codecs): exact when there are no codecs
        or when every record was decoded, else estimated from ``raw_sample`` records;
        ``None`` when they could not be decoded (see ``notes``).
    raw_exact
        Whether ``raw_bytes`` is exact.
    raw_sample
        Records decoded to estimate ``raw_bytes``.
    checksum
        The record checksum algorithm.
    codecs
        The codec chain's configs, in encode order.
    key_ids
        The key ids that encrypting codecs name.
    resources
        Files codecs and tools keep under ``meta/``.
    commits
        The commits, oldest first.
    metadata
        The manifest's other top-level keys (what tools recorded).
    notes
        Remarks, e.g. why records could not be decoded.
    """

    url: str
    format_version: int | str
    dataset_id: str | None = None
    generation: int | None = None
    records: int = 0
    bins: int = 0
    segments: int = 0
    stored_bytes: int = 0
    payload_bytes: int = 0
    raw_bytes: int | None = None
    raw_exact: bool = True
    raw_sample: int = 0
    checksum: str | None = None
    codecs: list[dict[str, Any]] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    commits: list[CommitInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dataclasses.asdict(self)


def dataset_info(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    raw_sample: int | None = DEFAULT_RAW_SAMPLE,
) -> DatasetInfo:
    """Summarise a dataset from its manifest.

    Parameters
    ----------
    url
        A local path or any fsspec URL of the dataset.
    storage_options
        Options for the fsspec filesystem.
    keys, key_providers
        As for :class:`~splitdataloader.SplitDataLoader`, to decode records of a dataset
        with codecs.
    raw_sample
        Records (evenly spread) to decode to estimate the size of the records before
        encoding, for a dataset with codecs; ``0`` skips it, ``None`` decodes every
        record for the exact size.

    Returns
    -------
    DatasetInfo

    Raises
    ------
    DatasetNotFoundError
        If there is no dataset at ``url``.
    DatasetFormatError
        If the manifest is malformed.
    """
    loader = SplitDataLoader(
        url, storage_options=storage_options, keys=keys, key_providers=key_providers
    )
    with loader:
        manifest = loader.manifest
        if manifest is None:
            return _legacy_info(loader, storage_options)
        info = _manifest_info(loader.url, manifest)
        storage = open_storage(os.fspath(url), storage_options)
        info.stored_bytes += storage.size(MANIFEST_NAME) + sum(
            storage.size(name) for name in manifest.resources
        )
        if not manifest.codecs:
            info.raw_bytes = info.payload_bytes
        elif raw_sample != 0 and info.records:
            _measure_raw(loader, info, raw_sample)
    return info


def _manifest_info(url: str, manifest: Manifest) -> DatasetInfo:
    info = DatasetInfo(
        url=url,
        format_version=2,
        dataset_id=manifest.dataset_id,
        generation=manifest.generation,
        records=manifest.records,
        bins=manifest.bins,
        checksum=manifest.checksum,
        codecs=[dict(config) for config in manifest.codecs],
        key_ids=sorted(
            {str(c["key_id"]) for c in manifest.codecs if isinstance(c.get("key_id"), str)}
        ),
        resources=list(manifest.resources),
        metadata=dict(manifest.extra),
    )
    for commit in manifest.commits:
        segment_bytes = sum(segment.size for segment in commit.segments)
        info.segments += len(commit.segments)
        info.payload_bytes += sum(
            segment.size - SEGMENT_HEADER.size - FRAME_HEADER.size * segment.records
            for segment in commit.segments
        )
        stored = segment_bytes + (commit.index.size if commit.records else 0)
        info.stored_bytes += stored
        info.commits.append(
            CommitInfo(
                generation=commit.generation,
                session=commit.session,
                created=commit.created,
                records=commit.records,
                bins=commit.bins,
                segments=len(commit.segments),
                stored_bytes=stored,
                part=commit.part,
            )
        )
    return info


def _measure_raw(loader: SplitDataLoader, info: DatasetInfo, sample: int | None) -> None:
    try:
        if sample is None or sample >= info.records:
            info.raw_bytes = sum(len(record) for record in loader.iterate_binwise())
            info.raw_sample = info.records
            info.raw_exact = True
            return
        picked = np.unique(np.linspace(0, info.records - 1, sample).astype(np.int64))
        sizes = [len(record) for record in loader.get_many(picked.tolist())]
    except SplitDataError as err:
        info.raw_bytes = None
        info.raw_exact = False
        info.notes.append(f"the records' size before encoding is unknown: {err}")
        return
    info.raw_sample = len(sizes)
    info.raw_exact = False
    info.raw_bytes = round(sum(sizes) / len(sizes) * info.records)


def _legacy_info(loader: SplitDataLoader, options: dict[str, Any] | None) -> DatasetInfo:
    storage = open_storage(loader.url, options)
    names = legacy_bin_names(storage)
    sizes = storage.list_files("")
    index_size = sizes[LEGACY_INDEX_NAME].size if LEGACY_INDEX_NAME in sizes else 0
    stored = index_size + sum(sizes[name].size for name in names if name in sizes)
    records = len(loader)
    payload = stored - index_size - 4 * records
    return DatasetInfo(
        url=loader.url,
        format_version="0.0.1",
        records=records,
        bins=loader.num_bins,
        segments=len(names),
        stored_bytes=stored,
        payload_bytes=payload,
        raw_bytes=payload,
    )
