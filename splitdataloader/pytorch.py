"""PyTorch datasets over a split dataset (extra ``torch``): map-style and iterable.

Owns the adapters between :class:`~splitdataloader.SplitDataLoader` and
``torch.utils.data``: :class:`SplitDataset` (map-style, for any sampler, batches read with
one ``get_many``) and :class:`SplitIterableDataset` (one rank's share of a seeded epoch,
split over the ``DataLoader``'s workers, resumable). The order and the splits come from
:mod:`splitdataloader.sampling`; this module only finds the rank and the worker in torch
and counts what was handed out. Importing it needs torch; the package itself does not.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import MissingPluginError, SamplingError
from .loader import SplitDataLoader
from .sampling import EpochState, check_even, check_integer

try:
    import torch.distributed
    from torch.utils.data import Dataset, IterableDataset, get_worker_info
except ImportError as err:  # pragma: no cover - exercised only where torch is missing
    raise MissingPluginError(
        "splitdataloader.pytorch needs PyTorch: pip install 'splitdataloader[torch]'"
    ) from err

if TYPE_CHECKING:
    from .epochs import EpochShard

__all__ = ["SplitDataset", "SplitIterableDataset"]

Transform = Callable[[bytes], Any]


class _LoaderHolder:
    """A loader that is reopened (from its picklable spec) in every process that uses it.

    DataLoader workers started by ``fork`` inherit the parent's objects as they are; an
    S3 client or an open file must not be shared across a fork, so the first use in
    another process rebuilds the loader on the same commit.
    """

    def __init__(self, data: str | os.PathLike[str] | SplitDataLoader, options: Any) -> None:
        if isinstance(data, SplitDataLoader):
            if options:
                raise TypeError(
                    f"loader options ({', '.join(options)}) apply to a URL, not to a loader"
                )
            self._loader = data
        else:
            self._loader = SplitDataLoader(data, **options)
        self._pid = os.getpid()

    @property
    def loader(self) -> SplitDataLoader:
        if self._pid != os.getpid():
            self._loader = pickle.loads(pickle.dumps(self._loader))
            self._pid = os.getpid()
        return self._loader

    def __getstate__(self) -> dict[str, Any]:
        return {"_loader": self._loader}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._loader = state["_loader"]
        self._pid = os.getpid()


class SplitDataset(Dataset[Any]):
    """Map-style dataset: ``dataset[i]`` is record ``i``; works with any sampler, e.g.
    ``torch.utils.data.DistributedSampler``.

    A ``DataLoader`` with a batch size fetches each batch through ``__getitems__``: one
    ``get_many`` (merged, concurrent reads) instead of one read per record.

    Parameters
    ----------
    data
        A dataset URL or path, or an open :class:`~splitdataloader.SplitDataLoader`.
    transform
        Applied to each record's bytes (default: the bytes as they are).
    **loader_options
        Passed to :class:`~splitdataloader.SplitDataLoader` when ``data`` is a URL.
    """

    def __init__(
        self,
        data: str | os.PathLike[str] | SplitDataLoader,
        *,
        transform: Transform | None = None,
        **loader_options: Any,
    ) -> None:
        self._holder = _LoaderHolder(data, loader_options)
        self.transform = transform

    @property
    def loader(self) -> SplitDataLoader:
        """The loader, valid in the calling process."""
        return self._holder.loader

    def __len__(self) -> int:
        return len(self._holder.loader)

    def __getitem__(self, index: int) -> Any:
        record = self._holder.loader[index]
        return record if self.transform is None else self.transform(record)

    def __getitems__(self, indices: list[int]) -> list[Any]:
        records = self._holder.loader.get_many(indices)
        if self.transform is None:
            return records
        return [self.transform(record) for record in records]


def _distributed() -> tuple[int, int] | None:
    """``(rank, world size)`` of the default process group, when one is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


class SplitIterableDataset(IterableDataset[Any]):
    """This rank's share of a seeded epoch, split over the ``DataLoader``'s workers.

    The order of epoch ``e`` is a function of ``(seed, e)`` (see
    :meth:`SplitDataLoader.epoch <splitdataloader.SplitDataLoader.epoch>`); each rank reads
    a disjoint run of it (about ``1/world_size`` of the bins), and ``even="pad"`` (the
    default, like ``DistributedSampler``) gives every rank the same number of records, so
    that no rank waits for a batch that another never sends. Inside a rank, worker ``w`` of
    ``W`` reads the blocks ``w, w + W, …`` of ``batch_size`` records; with the
    ``DataLoader``'s ``batch_size`` equal to ``batch_size`` the batches come out in the
    rank's order whatever ``num_workers`` is, so a saved position resumes with any number
    of workers.

    Call :meth:`set_epoch` before each epoch (workers get a fresh copy of the dataset at
    every pass; with ``persistent_workers=True`` they would keep the epoch of their start).

    Parameters
    ----------
    data
        A dataset URL or path, or an open :class:`~splitdataloader.SplitDataLoader`.
    seed
        The seed of every epoch's order (an integer >= 0, the same on every rank).
    shuffle, mix_bins, even
        As for ``SplitDataLoader.epoch``; ``even`` is ``"pad"``, ``"drop"`` or None.
    batch_size
        The ``DataLoader``'s batch size (use 1 with ``batch_size=None``).
    rank, world_size
        This process's rank and the number of ranks; by default those of the initialised
        ``torch.distributed`` process group, else 0 and 1.
    transform
        Applied to each record's bytes, in the worker.
    **loader_options
        Passed to :class:`~splitdataloader.SplitDataLoader` when ``data`` is a URL.

    Raises
    ------
    SamplingError
        If an argument is out of range (negative seed, ``batch_size`` < 1, a rank outside
        ``[0, world_size)``, an unknown ``even``).
    """

    def __init__(
        self,
        data: str | os.PathLike[str] | SplitDataLoader,
        *,
        seed: int = 0,
        shuffle: bool = True,
        mix_bins: int = 1,
        even: str | None = "pad",
        batch_size: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Transform | None = None,
        **loader_options: Any,
    ) -> None:
        self.seed = check_integer(seed, "seed")
        self.shuffle = bool(shuffle)
        self.mix_bins = check_integer(mix_bins, "mix_bins", 1)
        self.even = check_even(even)
        self.batch_size = check_integer(batch_size, "batch_size", 1)
        if (rank is None) != (world_size is None):
            raise SamplingError("give both rank and world_size, or neither")
        self._explicit: tuple[int, int] | None = None
        if rank is not None and world_size is not None:
            world_size = check_integer(world_size, "world_size", 1)
            self._explicit = (check_integer(rank, "rank", 0, world_size), world_size)
        self.transform = transform
        self._holder = _LoaderHolder(data, loader_options)
        self.epoch = 0
        # Position in the rank's run where the next pass starts (set by load_state_dict).
        self._start = 0
        # Records handed out by a pass run in this process; None when none ran here.
        self._taken: int | None = None
        # The process group's (rank, world size), noted when pickled for the workers.
        self._noted: tuple[int, int] | None = None

    @property
    def loader(self) -> SplitDataLoader:
        """The loader, valid in the calling process."""
        return self._holder.loader

    def rank_and_world_size(self) -> tuple[int, int]:
        """The rank and world size this dataset splits for."""
        if self._explicit is not None:
            return self._explicit
        return _distributed() or self._noted or (0, 1)

    def _shard(self, epoch: int | None = None) -> EpochShard:
        rank, world_size = self.rank_and_world_size()
        return self._holder.loader.epoch(
            self.epoch if epoch is None else epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            mix_bins=self.mix_bins,
            rank=rank,
            world_size=world_size,
            even=self.even,
        )

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` at the next pass: from its beginning, or from the position
        that :meth:`load_state_dict` loaded for that same epoch (so that a training loop
        calls ``set_epoch`` at the top of every epoch, resumed or not)."""
        epoch = check_integer(epoch, "epoch")
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch
        self._taken = None

    def __len__(self) -> int:
        """The records the next pass hands out on this rank (all workers together)."""
        return len(self._shard()) - self._start

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        shard = self._shard()
        if info is None:
            records = shard.iterate(self._start, block_size=self.batch_size)
            return self._counted(records)
        records = shard.iterate(
            self._start, worker=info.id, workers=info.num_workers, block_size=self.batch_size
        )
        return records if self.transform is None else map(self.transform, records)

    def _counted(self, records: Iterator[bytes]) -> Iterator[Any]:
        self._taken = 0
        transform = self.transform
        for record in records:
            self._taken += 1
            yield record if transform is None else transform(record)

    def state_dict(self, taken: int | None = None) -> dict[str, Any]:
        """The position to resume from: seed, epoch and records consumed, plus what they
        belong to (dataset, world size, order options).

        Parameters
        ----------
        taken
            Records received from the current pass (e.g. batches received times the batch size;
            a count past the end means the end). Required when the pass runs in
            ``DataLoader`` workers; without workers the dataset counts by itself.

        Raises
        ------
        SamplingError
            If ``taken`` is missing while the pass ran in worker processes, or negative.
        """
        if taken is None:
            if self._taken is None:
                raise SamplingError(
                    "the pass ran in DataLoader worker processes, so this dataset cannot count "
                    "what was consumed: pass taken= (records received since the pass started)"
                )
            taken = self._taken
        taken = check_integer(taken, "taken")
        shard = self._shard()
        return shard.state_dict(min(len(shard), self._start + taken))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state`` (from :meth:`state_dict`) at the next pass, on any rank of the
        same world size and with any number of workers.

        Raises
        ------
        ResumeStateError
            If ``state`` is malformed or belongs to another dataset (or commit of it),
            seed, world size or order options.
        """
        saved = EpochState.from_dict(state)
        start = self._shard(saved.epoch).resume_from(saved)
        self.epoch = saved.epoch
        self._start = start
        self._taken = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Pickled in the parent for spawned workers, where no process group exists.
        state["_noted"] = _distributed() or self._noted
        state["_taken"] = None
        return state
