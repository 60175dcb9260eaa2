"""Reading datasets: :class:`SplitDataLoader`.

Owns the public read API: opening a dataset (version 2 through its manifest, or a
splitdataloader 0.0.1 folder), ``len()``, random access, batched access and bin-wise
iteration with seeded shuffling. Per-commit index and segment access lives in
:mod:`splitdataloader.commits`; byte I/O lives in :mod:`splitdataloader.storage`.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray

from .batch import read_batch
from .chain import environment, key_ring, open_pipeline
from .checksums import checksum_function
from .commits import CommitReader, HandleCache
from .errors import (
    DatasetNotFoundError,
    UncommittedDatasetError,
)
from .format import (
    DATA_DIR,
    INDEX_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    parse_manifest,
)
from .iteration import bin_in_order, bin_shuffled, plan
from .legacy import LEGACY_INDEX_NAME, LegacyDataset
from .parallel import bin_states, parallel_chunks
from .readahead import DEFAULT_CONCURRENCY, DEFAULT_READ_AHEAD_BYTES, ReadAhead
from .storage import Storage, open_storage

if TYPE_CHECKING:
    from .epochs import EpochShard, RecordMap
    from .keys import KeyProvider

__all__ = ["SplitDataLoader"]


def _reopen(url: str, options: dict[str, Any], manifest: bytes | None = None) -> SplitDataLoader:
    """Rebuild a pickled loader; with ``manifest``, on the same commit as the original."""
    loader = SplitDataLoader.__new__(SplitDataLoader)
    loader.__dict__["_pinned_manifest"] = manifest
    loader.__init__(url, **options)  # type: ignore[misc]
    return loader


class SplitDataLoader:
    """Random access and bin-wise iteration over a dataset.

    Opening reads the manifest only: nothing proportional to the number of records. A
    loader reads the commit that was current when it opened (a snapshot): records appended
    later appear in a loader opened later.

    Parameters
    ----------
    data_dir
        A local path or any fsspec URL (``memory://…``, ``s3://bucket/prefix``,
        ``simplecache::s3://…``) of a dataset written by this package or by
        splitdataloader 0.0.1.
    storage_options
        Options for the fsspec filesystem, passed unchanged.
    verify
        Check every record's checksum when it is read (the default). Turning it off
        saves a hash per record and gives up the detection of corrupt bytes.
    keys, key_providers
        For encrypted datasets: keys by key id, and the key providers to ask (default:
        every registered provider, e.g. environment variables and key files). Keys are
        never pickled into worker processes' logs or shown in errors.
    max_open_segments
        Upper bound on the segments kept memory-mapped or open for random access.
    read_ahead_bytes
        On remote filesystems, how many bytes bin-wise iteration fetches ahead of the
        records it hands out (0 turns read-ahead off). Memory holds at most this much
        plus the segment being consumed.
    max_concurrency
        On remote filesystems, the most requests in flight at once, for read-ahead and
        for ``get_many``. On S3 the connection pool holds 64 connections unless
        ``storage_options["config_kwargs"]["max_pool_connections"]`` says otherwise.

    Raises
    ------
    DatasetNotFoundError
        If there is no dataset at ``data_dir``.
    UncommittedDatasetError
        If data files exist but no write ever committed.
    DatasetFormatError
        If the manifest is malformed, unsafe or of an unknown version.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        verify: bool = True,
        max_open_segments: int = 512,
        keys: Mapping[str, bytes] | None = None,
        key_providers: Sequence[KeyProvider] | None = None,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
        max_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if type(read_ahead_bytes) is not int or read_ahead_bytes < 0:
            raise ValueError(f"read_ahead_bytes must be an integer >= 0, not {read_ahead_bytes!r}")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, not {max_concurrency!r}")
        self._storage: Storage = open_storage(os.fspath(data_dir), storage_options)
        self._options: dict[str, Any] = {
            "storage_options": storage_options,
            "verify": verify,
            "max_open_segments": max_open_segments,
            "keys": keys,
            "key_providers": key_providers,
            "read_ahead_bytes": read_ahead_bytes,
            "max_concurrency": max_concurrency,
        }
        self._read_ahead_bytes = read_ahead_bytes
        self._max_concurrency = max_concurrency
        self._verify = verify
        self._handles = HandleCache(max_open_segments)
        self._legacy: LegacyDataset | None = None
        self._readers: list[CommitReader] = []
        self._starts: list[int] = []
        self.manifest: Manifest | None = None
        self._epoch_records: RecordMap | None = None
        raw = self._read_manifest()
        self._manifest_raw = raw
        if raw is None:
            self._legacy = LegacyDataset(self._storage)
            self._length = self._legacy.records
            self._bins = self._legacy.bins
            self._read: Callable[[int], bytes] = self._legacy.get
            return
        manifest = parse_manifest(raw, self._storage.display(MANIFEST_NAME))
        decoder = self._decoder(manifest, keys, key_providers)
        self.manifest = manifest
        self._length = manifest.records
        self._bins = manifest.bins
        hash_record = checksum_function(manifest.checksum) if verify else None
        first = 0
        for commit in manifest.commits:
            if commit.records == 0:
                continue
            reader = CommitReader(
                self._storage, commit, first, hash_record, self._handles, decoder=decoder
            )
            reader.concurrency = max_concurrency
            self._readers.append(reader)
            self._starts.append(first)
            first += commit.records
        self._read = self._first_read if len(self._readers) == 1 else self._read_any

    def _decoder(
        self,
        manifest: Manifest,
        keys: Mapping[str, bytes] | None,
        key_providers: Sequence[KeyProvider] | None,
    ) -> Callable[[bytes, int], bytes] | None:
        """``(stored bytes, global index) -> record`` for a dataset with codecs, else None."""
        if not manifest.codecs:
            return None
        from .codecs import RecordContext  # noqa: PLC0415 - codecs load only when used

        ring = key_ring(keys, key_providers)
        env = environment(self._storage, manifest.dataset_id, ring)
        pipeline = open_pipeline(manifest.codecs, env, self._storage)
        decode = pipeline.decode
        dataset_id = manifest.dataset_id

        def decode_record(data: bytes, index: int) -> bytes:
            record: bytes = decode(data, RecordContext(dataset_id, index))
            return record

        return decode_record

    def _read_manifest(self) -> bytes | None:
        pinned: bytes | None = self.__dict__.pop("_pinned_manifest", None)
        if pinned is not None:
            return pinned
        storage = self._storage
        try:
            return storage.read_file(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        if storage.exists(LEGACY_INDEX_NAME):
            return None
        url = storage.spec.url
        if storage.list_names(DATA_DIR) or storage.list_names(INDEX_DIR):
            raise UncommittedDatasetError(
                f"{url} holds data files but no {MANIFEST_NAME}: a write never committed. "
                f"Write the dataset again (start_clean=True) or remove the folder",
                path=url,
            )
        raise DatasetNotFoundError(
            f"no dataset at {url}: neither {MANIFEST_NAME} nor a splitdataloader 0.0.1 "
            f"{LEGACY_INDEX_NAME} exists there",
            path=url,
        )

    # ------------------------------------------------------------------ basics

    def __len__(self) -> int:
        """The number of records in the dataset."""
        return self._length

    def __repr__(self) -> str:
        kind = "0.0.1" if self._legacy is not None else "v2"
        return (
            f"SplitDataLoader({self._storage.spec.url!r}, records={self._length}, "
            f"bins={self._bins}, format={kind})"
        )

    @property
    def url(self) -> str:
        """The dataset's URL as given."""
        return self._storage.spec.url

    @property
    def num_bins(self) -> int:
        """The number of bins."""
        return self._bins

    @property
    def is_legacy(self) -> bool:
        """True for a splitdataloader 0.0.1 dataset (read-only)."""
        return self._legacy is not None

    def close(self) -> None:
        """Release memory maps and descriptors; the loader reopens them on next use."""
        self._handles.clear()
        for reader in self._readers:
            reader.close()
        if len(self._readers) == 1:
            self._read = self._first_read
        if self._legacy is not None:
            self._legacy.close()

    def __enter__(self) -> SplitDataLoader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Never pickle live filesystems, maps or descriptors: rebuild from the spec, on the
        # commit this loader reads (a worker must not see records appended since).
        return (_reopen, (self._storage.spec.url, self._options, self._manifest_raw))

    # ------------------------------------------------------------------ random access

    def __getitem__(self, index: Any) -> Any:
        """Record ``index`` as bytes (negative counts from the end); a slice gives a list.

        Raises
        ------
        IndexError
            If ``index`` is out of range.
        TypeError
            If ``index`` is not an integer or a slice.
        CorruptDataError
            If the stored bytes are damaged (names the file, record and offset).
        """
        if type(index) is int and 0 <= index < self._length:
            return self._read(index)
        if type(index) is not int:
            if isinstance(index, slice):
                return self.get_many(range(*index.indices(self._length)))
            try:
                index = operator.index(index)
            except TypeError:
                raise TypeError(
                    f"dataset indices must be integers or slices, not {type(index).__name__}"
                ) from None
        length = self._length
        position = index + length if index < 0 else index
        if position < 0 or position >= length:
            raise IndexError(f"record index {index} is out of range for {length} records")
        return self._read(position)

    def _first_read(self, index: int) -> bytes:
        # One commit: bind its specialised reader so later look-ups skip every indirection.
        self._read = self._readers[0].record_reader()
        return self._read(index)

    def _read_any(self, index: int) -> bytes:
        reader = self._readers[bisect.bisect_right(self._starts, index) - 1]
        return reader.read(index - reader.first_record)

    def _positions(self, indices: Iterable[int]) -> NDArray[Any]:
        """Validated, non-negative positions for ``indices`` (any iterable of integers)."""
        wanted: NDArray[Any]
        if isinstance(indices, range):
            wanted = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
        else:
            listed = indices if isinstance(indices, (list, tuple, np.ndarray)) else list(indices)
            try:
                wanted = np.asarray(listed)
            except (ValueError, OverflowError) as err:
                raise TypeError(f"indices must be integers: {err}") from None
            if wanted.size == 0:
                return np.empty(0, dtype=np.int64)
            if wanted.ndim != 1 or wanted.dtype.kind not in "iu":
                if wanted.dtype == object:
                    # Python integers beyond 64 bits, or mixed types: check one by one.
                    return np.asarray([self._locate(i) for i in listed], dtype=np.int64)
                raise TypeError(f"dataset indices must be integers, not {wanted.dtype} values")
            if wanted.dtype.kind == "u" and wanted.size and int(np.max(wanted)) >= 1 << 63:
                raise IndexError("record index out of range")
            wanted = wanted.astype(np.int64, copy=False)
        wanted = np.where(wanted < 0, wanted + self._length, wanted)
        bad = np.flatnonzero((wanted < 0) | (wanted >= self._length))
        if bad.size:
            original = int(wanted[bad[0]])
            if original < 0:
                original -= self._length
            raise IndexError(f"record index {original} is out of range for {self._length} records")
        return wanted

    def _locate(self, index: Any) -> int:
        position = operator.index(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"record index {index} is out of range for {self._length} records")
        return position

    def get_many(self, indices: Iterable[int]) -> list[bytes]:
        """The records at ``indices``, in the order asked (repeats allowed).

        Records of one segment are fetched together: neighbouring byte ranges are merged
        into one read, and on remote filesystems all reads are issued concurrently.

        Raises
        ------
        IndexError
            If an index is out of range.
        """
        positions = self._positions(indices)
        if self._legacy is not None:
            return self._legacy.get_many(positions.tolist(), self._max_concurrency)
        return read_batch(self._storage, self._readers, self._starts, positions)

    def __iter__(self) -> Iterator[bytes]:
        """Every record in index order."""
        if self._legacy is not None:
            for index in range(self._length):
                yield self._legacy.get(index)
            return
        for reader in self._readers:
            read = reader.read
            for j in range(reader.records):
                yield read(j)

    # ------------------------------------------------------------------ iteration

    def iterate_binwise(
        self,
        shuffle: bool = False,
        seed: int | None = None,
        *,
        workers: int = 0,
        start_method: str | None = None,
    ) -> Iterator[bytes]:
        """Iterate bin by bin: much faster than index order.

        Without ``shuffle``, bins come in order and each bin's records in the order they
        were written. With ``shuffle``, the bin order and the order inside each bin are
        permuted, identically for the same ``seed`` (a fresh random order when ``seed``
        is None). Segments are read in bulk: one request per segment on object stores;
        on local disk, windows of up to 8 MiB, and records of 64 KiB or more one
        ``pread`` each (a single copy).

        With ``workers`` > 0, that many worker processes (started with ``start_method``,
        see :class:`~splitdataloader.MpQItr`) read, verify and decode the bins, each
        with its own read-ahead, and the records come out in exactly the order of the
        single-process iteration for the same seed. Worth it when decoding (compression,
        encryption) or verification costs more than moving the records between
        processes. splitdataloader 0.0.1 datasets are always read in this process.
        """
        if type(workers) is not int or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, not {workers!r}")
        if self._legacy is not None:
            return self._legacy.iterate_binwise(
                shuffle, seed, self._read_ahead_bytes, self._max_concurrency
            )
        # Records are handed out a chunk (a list) at a time; chaining the lists keeps the
        # per-record step in C instead of resuming a generator for every record.
        rng = np.random.default_rng(seed) if shuffle else None
        order = rng.permutation(self._bins).tolist() if rng is not None else range(self._bins)
        if workers:
            states = None
            if rng is not None:
                counts = [0] * self._bins
                for reader in self._readers:
                    for bin_id in range(min(reader.bins, self._bins)):
                        counts[bin_id] += int(reader.bin_counts[bin_id])
                states = bin_states(rng, order, counts)
            chunks = parallel_chunks(self, list(order), states, workers, start_method)
            return itertools.chain.from_iterable(chunks)
        rngs = None if rng is None else [rng] * self._bins
        # Without markers every item is a chunk.
        plain = cast("Iterator[list[bytes]]", self._bin_chunks(order, rngs))
        return itertools.chain.from_iterable(plain)

    def epoch(
        self,
        epoch: int = 0,
        *,
        seed: int = 0,
        shuffle: bool = True,
        mix_bins: int = 1,
        rank: int = 0,
        world_size: int = 1,
        even: str | None = None,
    ) -> EpochShard:
        """Rank ``rank``'s share of epoch ``epoch``: a reproducible, resumable order.

        The order is a function of ``(seed, epoch)`` only: bins permuted, records permuted
        within each bin, or within groups of ``mix_bins`` bins (see
        :mod:`splitdataloader.sampling`). The ranks of ``world_size`` take disjoint runs
        that together cover the epoch; ``even="pad"`` (repeats) or ``"drop"`` (leaves out
        the remainder) gives every rank the same number of records. Building the share
        reads nothing (a 0.0.1 dataset's index is read once per loader); iterating it reads
        a batch of records at a time with :meth:`get_many`.

        Returns
        -------
        EpochShard
            ``len()`` records; ``iterate(start, worker=, workers=, block_size=)`` reads them
            (from ``start``, or a worker's blocks only), ``indices(...)`` gives their record
            indices, ``state_dict(consumed)`` and ``resume_from(state)`` save and restore
            the position.

        Raises
        ------
        SamplingError
            If ``seed`` or ``epoch`` is negative, ``mix_bins`` or ``world_size`` < 1,
            ``rank`` is outside ``[0, world_size)`` or ``even`` is unknown.
        """
        from .epochs import EpochShard, RecordMap  # noqa: PLC0415 - loaded when first used

        if self._epoch_records is None:
            self._epoch_records = RecordMap.of(self)
        return EpochShard(
            self,
            self._epoch_records,
            epoch=epoch,
            seed=seed,
            shuffle=shuffle,
            mix_bins=mix_bins,
            rank=rank,
            world_size=world_size,
            even=even,
        )

    def _bin_chunks(
        self,
        bins: Sequence[int],
        rngs: Sequence[np.random.Generator] | None,
        markers: bool = False,
    ) -> Iterator[list[bytes] | None]:
        """Chunks of ``bins`` in that order, shuffled within each bin with ``rngs[k]``;
        with ``markers``, a ``None`` after each bin."""
        read_ahead: ReadAhead | None = None
        if not self._storage.is_local and self._read_ahead_bytes > 0:
            read_ahead = ReadAhead(
                self._storage,
                plan(self._readers, bins, self._read_ahead_bytes),
                max_bytes=self._read_ahead_bytes,
                concurrency=self._max_concurrency,
            )
        fetch = read_ahead.read if read_ahead is not None else None
        try:
            for k, bin_id in enumerate(bins):
                if rngs is None:
                    yield from bin_in_order(self._readers, bin_id, fetch)
                else:
                    yield from bin_shuffled(self._readers, bin_id, rngs[k], fetch)
                if markers:
                    yield None
        finally:
            if read_ahead is not None:
                read_ahead.close()
