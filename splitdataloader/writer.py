"""Writing datasets: :class:`SplitWriter` and the 0.0.1-compatible :func:`write_split_data`.

Owns the dataset side of the write path of format version 2: the dataset a writer appends
to or replaces, the codec chain records are encoded with (trained on the first records
when it needs to be), metadata and resources, and the commit, which has the staged files
closed and their index part written, then replaces the manifest in one atomic step; an
abort deletes what was not committed. Framing records into per-bin segments and gathering
their index entries is :mod:`splitdataloader.staging`'s job. It reads an existing manifest
only to append to it; it never modifies a committed file.

Memory bound
------------
A writer holds, whatever the dataset size: one data buffer per bin of
``clamp(16 MiB / bins, 64 KiB, 1 MiB)`` bytes (so at most 16 MiB in total, or 64 KiB per
bin above 256 bins), at most ``8 MiB`` of index entries (24 bytes per record; older
entries go to a local scratch file), plus the buffers of the filesystem's open files
(none on local disk; one upload block per open segment on object stores). Records larger
than the per-bin buffer are written straight through without a copy.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .chain import WriterCodecs
from .checksums import DEFAULT_CHECKSUM, checksum_function
from .errors import (
    CommitConflictError,
    DatasetFormatError,
    ReadOnlyDatasetError,
    SplitDataError,
    WriterClosedError,
)
from .format import (
    DATA_DIR,
    INDEX_DIR,
    MANIFEST_KEYS,
    MANIFEST_NAME,
    MAX_BINS,
    MAX_MANIFEST_BYTES,
    META_DIR,
    PARTS_DIR,
    Commit,
    Manifest,
    RoundRobinLayout,
    dump_manifest,
    parse_manifest,
)
from .legacy import LEGACY_INDEX_NAME, legacy_bin_names
from .records import as_byte_view
from .staging import StagedCommit
from .storage import ManifestChangedError, ManifestVersion, Storage, open_storage

if TYPE_CHECKING:
    from .keys import KeyProvider

logger = logging.getLogger(__name__)

__all__ = ["SplitWriter", "write_split_data"]

DEFAULT_BINS = 256
DEFAULT_MAX_SEGMENT_BYTES = 1 << 30


class SplitWriter:
    """Stream records into a dataset, committing them atomically.

    Records go round-robin to ``bins`` bins (in a seeded random bin order with
    ``shuffle``). Leaving the ``with`` block normally commits; an exception inside it
    aborts, deletes this writer's uncommitted files and leaves the previous commit intact.
    Memory stays bounded whatever the dataset size (see the module documentation).

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL of the dataset; created if missing.
    bins
        Number of bins. ``None`` keeps the existing dataset's, or 256 for a new one.
    shuffle
        Send records round-robin over a random permutation of the bins.
    start_clean
        Replace the dataset: the new commit holds only what this writer writes; the old
        files are deleted after the commit succeeded.
    storage_options
        Options for the fsspec filesystem.
    seed
        Seed for the bin permutation of ``shuffle``.
    checksum
        Checksum algorithm stored for every record (``"xxh3_64"`` or ``"crc32"``); when
        appending, the dataset's own algorithm is kept.
    durable
        ``fsync`` data, index, manifest and folders on local disk before a commit
        returns, so that a commit survives a power failure. Off by default: a commit is
        always atomic (the manifest is replaced in one step), so a crashed or killed
        writer never damages the dataset; only a power failure can lose recent commits,
        and then reads report the damaged records instead of returning wrong bytes.
    max_segment_bytes
        Start a new segment of a bin once its current one would exceed this size.
    codecs
        Codec chain for a new dataset, in encode order (compression before encryption):
        names (``"zstd"``), configs (``{"id": "zstd", "level": 9}``) or codec objects.
        An existing dataset keeps its own chain. Invalid options raise
        :class:`~splitdataloader.errors.CodecConfigError` here, before anything is written.
    keys, key_providers
        Keys by key id for encrypting codecs, and the key providers to ask (default: every
        registered provider). Keys are never written to the dataset.

    Raises
    ------
    ReadOnlyDatasetError
        If the target is a splitdataloader 0.0.1 dataset and ``start_clean`` is false.
    """

    def __init__(
        self,
        target_dir: str | os.PathLike[str],
        bins: int | None = None,
        shuffle: bool = False,
        start_clean: bool = False,
        *,
        storage_options: dict[str, Any] | None = None,
        seed: int | None = None,
        checksum: str = DEFAULT_CHECKSUM,
        durable: bool = False,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        codecs: Sequence[Any] | None = None,
        keys: Mapping[str, bytes] | None = None,
        key_providers: Sequence[KeyProvider] | None = None,
    ) -> None:
        if bins is not None and (type(bins) is not int or not 1 <= bins <= MAX_BINS):
            raise ValueError(f"bins must be an integer in [1, {MAX_BINS}], not {bins!r}")
        if type(max_segment_bytes) is not int or max_segment_bytes < 1024:
            raise ValueError("max_segment_bytes must be an integer >= 1024")
        self._storage: Storage = open_storage(os.fspath(target_dir), storage_options)
        if self._storage.is_cache:
            raise ReadOnlyDatasetError(
                f"{self._storage.spec.url} reads through a local cache, which never writes "
                f"to its source: write to the source URL instead",
                path=self._storage.spec.url,
            )
        self._durable = durable
        self._start_clean = start_clean
        self._session = secrets.token_hex(8)
        self._closed = False

        self._base_version, base = self._read_base()
        legacy = self._base_version.raw is None and self._storage.exists(LEGACY_INDEX_NAME)
        if legacy and not start_clean:
            raise ReadOnlyDatasetError(
                f"{self._storage.spec.url} is a splitdataloader 0.0.1 dataset; it opens "
                f"read-only. Convert it first (splitdataloader.convert_legacy) or pass "
                f"start_clean=True to replace it",
                path=self._storage.spec.url,
            )
        self._base: Manifest | None = None if start_clean else base
        self._dataset_id = self._base.dataset_id if self._base else secrets.token_hex(16)
        self._codecs = WriterCodecs(
            self._storage,
            base_configs=self._base.codecs if self._base else None,
            specs=codecs,
            dataset_id=self._dataset_id,
            session=self._session,
            keys=keys,
            key_providers=key_providers,
        )
        self._replaced: Manifest | None = base if start_clean else None
        if self._base is not None:
            checksum = self._base.checksum
        self._checksum_name = checksum
        hash_record = checksum_function(checksum)
        if bins is None:
            # A replaced dataset keeps its bin count unless told otherwise.
            bins = base.bins if base is not None else DEFAULT_BINS
        self._bins = bins
        order: tuple[int, ...] | None = None
        if shuffle:
            rng = np.random.default_rng(seed)
            order = tuple(int(b) for b in rng.permutation(self._bins))
        self._order = order
        self._staged = StagedCommit(
            self._storage,
            self._session,
            bins=self._bins,
            order=order,
            durable=durable,
            max_segment_bytes=max_segment_bytes,
            hash_record=hash_record,
        )
        self._commit_number = 0
        self._committed_resources: set[str] = set()
        self._added_resources: list[str] = []
        self._metadata: dict[str, Any] = {}
        self._session_records = 0
        self._reset_commit_state()

    # ------------------------------------------------------------------ state

    def _read_base(self) -> tuple[ManifestVersion, Manifest | None]:
        raw, version = self._storage.read_manifest(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        if raw is None:
            return version, None
        try:
            return version, parse_manifest(raw, self._storage.display(MANIFEST_NAME))
        except DatasetFormatError:
            if self._start_clean:
                return version, None
            raise

    def _reset_commit_state(self) -> None:
        self._staged.reset(self._commit_number)
        self._layout_start = self._session_records % self._bins

    @property
    def url(self) -> str:
        """The dataset URL this writer writes to."""
        return self._storage.spec.url

    @property
    def bins(self) -> int:
        """The number of bins records are spread over."""
        return self._bins

    @property
    def pending(self) -> int:
        """Records written since the last commit."""
        return self._staged.records

    def _check_open(self) -> None:
        if self._closed:
            raise WriterClosedError(f"the writer of {self.url} is closed")

    @property
    def metadata(self) -> dict[str, Any]:
        """The manifest's extra top-level keys as the next commit will write them."""
        return {**(self._base.extra if self._base else {}), **self._metadata}

    def set_metadata(self, key: str, value: Any) -> None:
        """Store a JSON value under a top-level key of the manifest, from the next commit on.

        Readers ignore keys they do not know and writers keep them (``docs/format.md``
        §2), so tools can record what they stored. Keep values small: the manifest is
        read whenever the dataset is opened.

        Raises
        ------
        ValueError
            If ``key`` is one of the format's own keys, or ``value`` is not JSON.
        """
        self._check_open()
        if not isinstance(key, str) or key in MANIFEST_KEYS:
            raise ValueError(f"{key!r} is not a free manifest key")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata {key!r} is not JSON: {err}") from None
        self._metadata[key] = value

    def add_resource(self, hint: str, data: bytes) -> str:
        """Store an immutable file under ``meta/``, listed in the manifest's ``resources``
        from the next commit on (and deleted if this writer aborts first).

        Returns
        -------
        str
            Its name relative to the dataset root, to record (e.g. in :meth:`set_metadata`).
        """
        self._check_open()
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in hint)[:64] or "data"
        number = len(self._committed_resources) + len(self._added_resources)
        name = f"{META_DIR}/{self._session}-x{number:03d}-{safe}"
        self._storage.makedirs(META_DIR)
        writer = self._storage.open_writer(name, self._durable)
        try:
            writer.write(data)
            writer.close()
        except BaseException:
            writer.discard()
            raise
        self._added_resources.append(name)
        return name

    # ------------------------------------------------------------------ writing

    def write(self, record: Any) -> int:
        """Add one record; returns the global index it will have once committed.

        Raises
        ------
        RecordTypeError
            If ``record`` is not a contiguous bytes-like object.
        """
        self._check_open()
        base = self._base.records if self._base else 0
        index = base + self._staged.records + self._held_back()
        self._write_records((record,))
        return index

    def write_many(self, records: Iterable[Any]) -> int:
        """Add every record of ``records``; returns how many were added."""
        self._check_open()
        before = self._staged.records + self._held_back()
        self._write_records(records)
        return self._staged.records + self._held_back() - before

    def _held_back(self) -> int:
        sample = self._codecs.sample
        return len(sample) if sample is not None else 0

    def _write_records(self, records: Iterable[Any]) -> None:
        """While codecs still train, hold the first records back; then write them and the
        rest through the trained chain."""
        if self._codecs.sample is None:
            self._write_batch(records)
            return
        base = (self._base.records if self._base else 0) + self._staged.records
        remaining = iter(records)
        for record in remaining:
            position = base + self._held_back()
            if self._codecs.add_to_sample(as_byte_view(record, position, self._held_back())):
                # Separate batches: a batch binds the chain when it starts, and the chain
                # is only complete once trained.
                self._write_batch(self._codecs.finish_sample(base))
                self._write_batch(remaining)
                return

    def _write_batch(self, records: Iterable[Any]) -> None:
        pipeline = self._codecs.pipeline if self._codecs.active else None
        encode = pipeline.encode if pipeline is not None else None
        self._staged.write(
            records,
            slot=(self._session_records + self._staged.records) % self._bins,
            first=self._base.records if self._base is not None else 0,
            encode=encode,
            context=self._codecs.context() if encode is not None else None,
        )

    # ------------------------------------------------------------------ commit

    def commit(self) -> int:
        """Make every record written so far durable and visible, atomically.

        Returns
        -------
        int
            The number of records in the dataset after the commit.

        Raises
        ------
        CommitConflictError
            If another writer committed to the dataset since this writer read it; this
            writer's uncommitted files are deleted.
        """
        self._check_open()
        try:
            if self._codecs.sample is not None:
                first = (self._base.records if self._base else 0) + self._staged.records
                self._write_batch(self._codecs.finish_sample(first))
            manifest = self._commit()
        except BaseException:
            self._discard_uncommitted()
            raise
        return manifest.records

    def _commit(self) -> Manifest:
        storage = self._storage
        base = self._base
        fresh_resources = tuple(
            r
            for r in (*self._codecs.created, *self._added_resources)
            if r not in self._committed_resources
        )
        if (
            self._staged.records == 0
            and base is not None
            and self._replaced is None
            and not fresh_resources
            and not self._metadata
        ):
            return base
        commit: Commit | None = None
        if self._staged.records:
            commit = self._finish_files()
        commits = (base.commits if base else ()) + ((commit,) if commit else ())
        records = sum(c.records for c in commits)
        bins = max([self._bins, base.bins if base else 1] + [c.bins for c in commits])
        manifest = Manifest(
            dataset_id=self._dataset_id,
            generation=(base.generation if base else 0) + 1,
            checksum=self._checksum_name,
            records=records,
            bins=bins,
            commits=commits,
            codecs=self._codecs.configs(),
            resources=(base.resources if base else ()) + fresh_resources,
            extra={**(base.extra if base else {}), **self._metadata},
        )
        data = dump_manifest(manifest)
        if commit is not None:
            storage.sync_directories(DATA_DIR, INDEX_DIR)
        storage.makedirs("")
        try:
            self._base_version = storage.commit_manifest(
                MANIFEST_NAME, data, self._base_version, self._durable
            )
        except ManifestChangedError as err:
            raise CommitConflictError(
                f"another writer committed to {self.url} after this writer started; "
                f"this writer's {self._staged.records} uncommitted records were "
                f"discarded: reopen the dataset and write them again",
                path=storage.display(MANIFEST_NAME),
            ) from err
        self._base = manifest
        self._committed_resources.update(fresh_resources)
        self._metadata = {}
        if self._replaced is not None or self._start_clean:
            self._remove_replaced(manifest)
        self._session_records += self._staged.records
        self._commit_number += 1
        self._staged.close_scratch()
        self._reset_commit_state()
        return manifest

    def _finish_files(self) -> Commit:
        staged = self._staged
        staged.close_segments()
        index = staged.write_index()
        return Commit(
            generation=(self._base.generation if self._base else 0) + 1,
            session=self._session,
            records=staged.records,
            layout=RoundRobinLayout(self._bins, self._layout_start, self._order),
            index=index,
            segments=staged.segment_refs(),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

    def _remove_replaced(self, manifest: Manifest) -> None:
        """After a start_clean commit: delete what the new manifest no longer references.

        Parts waiting to be joined go too, their manifests first: they were written for
        the replaced dataset, and must never be joined once their files are deleted.
        """
        keep = set(manifest.files())
        storage = self._storage
        stale = [
            name
            for directory in (PARTS_DIR, DATA_DIR, INDEX_DIR, META_DIR)
            for name in storage.list_names(directory)
            if name not in keep
        ]
        if storage.exists(LEGACY_INDEX_NAME):
            stale.append(LEGACY_INDEX_NAME)
            stale.extend(legacy_bin_names(storage))
        storage.remove(stale)
        self._replaced = None
        self._start_clean = False

    # ------------------------------------------------------------------ abort

    def _discard_uncommitted(self) -> None:
        self._staged.discard()
        self._storage.remove(
            [
                r
                for r in (*self._codecs.created, *self._added_resources)
                if r not in self._committed_resources
            ]
        )
        self._staged.close_scratch()
        self._reset_commit_state()

    def abort(self) -> None:
        """Drop every record written since the last commit and close the writer."""
        if self._closed:
            return
        self._closed = True
        self._discard_uncommitted()

    def close(self) -> None:
        """Commit pending records (if any) and close the writer."""
        if self._closed:
            return
        try:
            if self._staged.records or self._base is None or self._replaced is not None:
                self.commit()
        finally:
            self._closed = True

    def __enter__(self) -> SplitWriter:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(SplitDataError, OSError):
                self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave half-written files behind.
        staged = getattr(self, "_staged", None)
        if not getattr(self, "_closed", True) and staged is not None and staged.segments:
            with contextlib.suppress(Exception):
                self.abort()


def write_split_data(
    target_dir: str | os.PathLike[str],
    data_source: Iterable[Any],
    splits: int | None = None,
    shuffle: bool = False,
    start_clean: bool = False,
    *,
    storage_options: dict[str, Any] | None = None,
    seed: int | None = None,
    checksum: str = DEFAULT_CHECKSUM,
    durable: bool = False,
    codecs: Sequence[Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
) -> int:
    """Write a sequence of records to ``splits`` bins in one commit.

    Compatible with splitdataloader 0.0.1: records go round-robin to the bins (in a
    permuted bin order with ``shuffle``), writing into an existing dataset appends, and
    ``start_clean`` replaces it. If ``data_source`` raises, nothing is committed and the
    dataset keeps its previous state.

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL.
    data_source
        An iterable of bytes-like records.
    splits
        Number of bins; ``None`` keeps the existing dataset's, or 256 for a new one.
    shuffle, start_clean, storage_options, seed, checksum, durable, codecs, keys, key_providers
        As for :class:`SplitWriter`.

    Returns
    -------
    int
        The number of records written.
    """
    with SplitWriter(
        target_dir,
        bins=splits,
        shuffle=shuffle,
        start_clean=start_clean,
        storage_options=storage_options,
        seed=seed,
        checksum=checksum,
        durable=durable,
        codecs=codecs,
        keys=keys,
        key_providers=key_providers,
    ) as writer:
        return writer.write_many(data_source)
