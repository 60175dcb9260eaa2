"""Epochs over a loader's records: one rank's share, split over workers, resumable.

Owns :class:`EpochShard`, what ``SplitDataLoader.epoch`` returns, and :class:`RecordMap`,
which numbers a dataset's records bin-major from what the manifest says (per-bin counts and
the round-robin layout of each commit), without reading any record or index entry. The order
itself and the split over ranks and workers are defined in :mod:`splitdataloader.sampling`;
the reads go through ``SplitDataLoader.get_many``, a batch of a worker's records at a time.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ResumeStateError
from .legacy import LEGACY_INDEX_NAME
from .sampling import (
    EpochOrder,
    EpochState,
    check_integer,
    rank_span,
    worker_count,
    worker_positions,
)

if TYPE_CHECKING:
    from .loader import SplitDataLoader

__all__ = ["EpochShard", "RecordMap"]

#: Bytes of records a worker asks ``get_many`` for at once: large enough that the records
#: of a bin fall close together and their reads merge, small enough to bound memory.
READ_BYTES = 8 << 20
#: Most records read at once, whatever their size.
MAX_READ_RECORDS = 16384
#: Records of the first read of an iteration (or a block, if larger).
FIRST_READ_RECORDS = 256
#: Per-bin tables kept by a :class:`RecordMap`.
_CACHED_BINS = 16


class RecordMap:
    """Bin-major record numbers to the dataset's record indices.

    Record ``p`` of bin ``b`` (in stored order: commit after commit, in write order inside
    each) has bin-major number ``offsets[b] + p``. For version-2 datasets the mapping comes
    from each commit's layout; for 0.0.1 datasets from their index, read once.
    """

    def __init__(self, counts: NDArray[np.int64], tables: _Tables) -> None:
        self.counts = counts
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self._tables = tables

    @classmethod
    def of(cls, loader: SplitDataLoader) -> RecordMap:
        """The map of ``loader``'s dataset (reads the index of a 0.0.1 dataset)."""
        if loader._legacy is not None:
            storage = loader._storage
            raw = storage.read_file(LEGACY_INDEX_NAME) if len(loader) else b""
            triplets = np.frombuffer(raw, dtype="<u4", count=3 * len(loader)).reshape(-1, 3)
            bins = triplets[:, 0].astype(np.int64)
            bin_count = max(loader.num_bins, int(bins.max()) + 1 if bins.size else 0)
            counts = np.bincount(bins, minlength=bin_count).astype(np.int64)
            stored = np.lexsort((triplets[:, 1], bins)).astype(np.int64)
            return cls(counts, _SortedTables(stored, counts))
        counts = np.zeros(loader.num_bins, dtype=np.int64)
        for reader in loader._readers:
            counts[: reader.bins] += reader.bin_counts
        return cls(counts, _LayoutTables(loader))

    def indices(self, records: NDArray[np.int64]) -> NDArray[np.int64]:
        """The record indices of bin-major numbers ``records``."""
        out = np.empty(len(records), dtype=np.int64)
        if not len(records):
            return out
        bins = np.searchsorted(self.offsets[1:], records, side="right")
        if bins[0] == bins[-1] and bool(np.all(bins == bins[0])):
            bin_id = int(bins[0])
            out[:] = self._tables.table(bin_id)[records - self.offsets[bin_id]]
            return out
        for bin_id in np.unique(bins).tolist():
            picked = bins == bin_id
            out[picked] = self._tables.table(bin_id)[records[picked] - self.offsets[bin_id]]
        return out


class _Tables:
    def table(self, bin_id: int) -> NDArray[np.int64]:
        """The record indices of ``bin_id`` in stored order."""
        raise NotImplementedError


class _SortedTables(_Tables):
    """0.0.1: every record index, sorted by bin then by position in the bin's file."""

    def __init__(self, stored: NDArray[np.int64], counts: NDArray[np.int64]) -> None:
        self._stored = stored
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def table(self, bin_id: int) -> NDArray[np.int64]:
        return self._stored[self._offsets[bin_id] : self._offsets[bin_id + 1]]


class _LayoutTables(_Tables):
    """Version 2: a bin's records in each commit are every ``bins``-th record from the
    bin's first, so a table is a few ``arange`` runs, built when first asked for."""

    def __init__(self, loader: SplitDataLoader) -> None:
        self._readers = list(loader._readers)
        self._cache: OrderedDict[int, NDArray[np.int64]] = OrderedDict()

    def table(self, bin_id: int) -> NDArray[np.int64]:
        cached = self._cache.get(bin_id)
        if cached is not None:
            self._cache.move_to_end(bin_id)
            return cached
        parts = []
        for reader in self._readers:
            if bin_id >= reader.bins or not reader.bin_counts[bin_id]:
                continue
            first = reader.first_record + reader.record_of_entry(bin_id, 0)
            count = int(reader.bin_counts[bin_id])
            parts.append(first + reader.bins * np.arange(count, dtype=np.int64))
        table = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        self._cache[bin_id] = table
        if len(self._cache) > _CACHED_BINS:
            self._cache.popitem(last=False)
        return table


def dataset_identity(loader: SplitDataLoader) -> str:
    """What a resume state names its dataset by: the dataset id and commit generation."""
    manifest = loader.manifest
    if manifest is None:
        return f"0.0.1:{len(loader)}:{loader.num_bins}"
    return f"{manifest.dataset_id}@{manifest.generation}"


def _average_record_bytes(loader: SplitDataLoader) -> int:
    manifest = loader.manifest
    if manifest is None or not len(loader):
        return 1024
    stored = sum(segment.size for commit in manifest.commits for segment in commit.segments)
    return max(1, stored // len(loader))


class EpochShard:
    """One rank's run of one epoch of a dataset (``SplitDataLoader.epoch`` makes it).

    Building it reads nothing: the order comes from the per-bin counts. ``len()`` is the
    rank's number of records; iterating reads them in order. See
    :mod:`splitdataloader.sampling` for the definitions of the order and the splits.
    """

    def __init__(
        self,
        loader: SplitDataLoader,
        records: RecordMap,
        *,
        epoch: int,
        seed: int,
        shuffle: bool,
        mix_bins: int,
        rank: int,
        world_size: int,
        even: str | None,
    ) -> None:
        self.loader = loader
        self.order = EpochOrder(records.counts, seed, epoch, shuffle=shuffle, mix_bins=mix_bins)
        self.rank = rank
        self.first, self.length = rank_span(self.order.total, rank, world_size, even)
        self._records = records
        self._state = EpochState(
            dataset=dataset_identity(loader),
            records=self.order.total,
            seed=self.order.seed,
            epoch=self.order.epoch,
            consumed=0,
            world_size=world_size,
            shuffle=self.order.shuffle,
            mix_bins=self.order.mix_bins,
            even=even,
        )
        self._read_records = max(
            1, min(MAX_READ_RECORDS, READ_BYTES // _average_record_bytes(loader))
        )

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        state = self._state
        return (
            f"EpochShard(epoch={state.epoch}, seed={state.seed}, rank={self.rank}, "
            f"world_size={state.world_size}, records={self.length})"
        )

    @property
    def epoch(self) -> int:
        """The epoch number."""
        return self._state.epoch

    def _indices_at(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        epoch_positions = self.first + positions
        if self.length and self.first + self.length > self.order.total:
            epoch_positions %= self.order.total
        return self._records.indices(self.order.take(epoch_positions))

    def count(
        self, start: int = 0, *, worker: int = 0, workers: int = 1, block_size: int = 1
    ) -> int:
        """How many records worker ``worker`` of ``workers`` reads from position ``start``."""
        return worker_count(self.length, worker, workers, block_size, start)

    def indices(
        self, start: int = 0, *, worker: int = 0, workers: int = 1, block_size: int = 1
    ) -> NDArray[np.int64]:
        """The record indices that :meth:`iterate` with the same arguments reads, in order.

        Raises
        ------
        SamplingError
            If ``start`` is outside ``[0, len(self)]``, ``workers`` < 1, ``worker`` is
            outside ``[0, workers)`` or ``block_size`` < 1.
        """
        positions = worker_positions(self.length, worker, workers, block_size, start)
        return self._indices_at(positions)

    def iterate(
        self, start: int = 0, *, worker: int = 0, workers: int = 1, block_size: int = 1
    ) -> Iterator[bytes]:
        """The records of the rank's run from position ``start`` on; with ``workers`` > 1,
        only worker ``worker``'s blocks of ``block_size`` records.

        Records are read a batch at a time with ``get_many`` (the records of a batch lie in
        one or a few bins, so their reads merge), never one by one.

        Raises
        ------
        SamplingError
            As :meth:`indices`, before anything is read.
        """
        count = worker_count(self.length, worker, workers, block_size, start)
        # Chaining the batches keeps the per-record step in C.
        return itertools.chain.from_iterable(
            self._batches(count, start, worker, workers, block_size)
        )

    def _batches(
        self, count: int, start: int, worker: int, workers: int, block_size: int
    ) -> Iterator[list[bytes]]:
        get_many = self.loader.get_many
        most = self._read_records
        # The first reads are small, so that the first records come quickly (a DataLoader
        # waits for every worker's first batch); each read is then twice the last.
        step = min(most, max(FIRST_READ_RECORDS, block_size))
        lo = 0
        while lo < count:
            hi = min(count, lo + step)
            positions = worker_positions(
                self.length, worker, workers, block_size, start, first=lo, stop=hi
            )
            yield get_many(self._indices_at(positions))
            lo = hi
            step = min(most, 2 * step)

    def __iter__(self) -> Iterator[bytes]:
        return self.iterate()

    def state(self, consumed: int) -> EpochState:
        """The resume state after ``consumed`` records of the rank's run were taken."""
        consumed = check_integer(consumed, "consumed", 0, self.length + 1)
        saved = self._state
        return EpochState(**{**saved.to_dict(), "consumed": consumed})

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """:meth:`state` as a plain dictionary (for ``torch.save``, JSON, pickle)."""
        return self.state(consumed).to_dict()

    def resume_from(self, state: Mapping[str, Any] | EpochState) -> int:
        """The position to pass to :meth:`iterate` to resume from ``state``.

        Raises
        ------
        ResumeStateError
            If ``state`` is malformed or was saved for another dataset (or another commit
            of it), seed, world size, order options or epoch.
        """
        saved = state if isinstance(state, EpochState) else EpochState.from_dict(state)
        saved.check_matches(self._state)
        if saved.epoch != self._state.epoch:
            raise ResumeStateError(
                f"the resume state is for epoch {saved.epoch}, this iteration is epoch "
                f"{self._state.epoch}"
            )
        if saved.consumed > self.length:
            raise ResumeStateError(
                f"the resume state's consumed={saved.consumed} is past the end of this rank's "
                f"{self.length} records"
            )
        return saved.consumed
