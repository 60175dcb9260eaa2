"""Seeded epoch orders and their split over ranks and workers, as pure functions.

Owns the definition of an epoch's order and of the shares that ranks and workers take
from it; it knows records only by their number of records per bin and performs no I/O
(:mod:`splitdataloader.epochs` maps the order to stored records and reads them).

**Order.** Records are numbered bin-major: record ``p`` of bin ``b`` is
``offsets[b] + p`` (``offsets`` the running sum of the bin counts). The order of epoch
``e`` for ``seed`` is a function of ``(seed, epoch)`` only. The bins are permuted by a
generator seeded with ``SeedSequence(seed, spawn_key=(epoch, 0))``; consecutive runs of
``mix_bins`` bins of that order form *groups*; the records of group ``g`` (its bins in
epoch order, each bin's records in stored order) are permuted by a generator seeded with
``SeedSequence(seed, spawn_key=(epoch, g + 1))``; the epoch is the groups one after the
other. ``mix_bins=1`` permutes records within each bin; a larger value mixes the records of
that many bins (more randomness, reads spread over more segments). Without shuffling, the
bins come in order and each bin's records in stored order.

**Ranks.** Rank ``r`` of ``R`` takes a contiguous run of the epoch, so it reads only about
``1/R`` of the bins. ``even=None`` splits exactly (run lengths differ by at most one);
``"pad"`` gives every rank ``ceil(N / R)`` records, the positions past the end repeating
the epoch from its start; ``"drop"`` gives every rank ``floor(N / R)`` records and leaves
the last ``N mod R`` records of the epoch out.

**Workers.** A rank's run is cut into blocks of ``block_size`` records, counted from the
resume position ``start``; worker ``w`` of ``W`` takes blocks ``w, w + W, w + 2W, …``. A
consumer that takes one block from each worker in turn (PyTorch's ``DataLoader`` does
with ``batch_size == block_size``) gets the rank's run unchanged, whatever ``W`` is, so a
count of consumed records is a resume position valid for any number of workers.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ResumeStateError, SamplingError

__all__ = [
    "EVEN_MODES",
    "EpochOrder",
    "EpochState",
    "rank_span",
    "worker_count",
    "worker_positions",
]

#: The ways to give every rank the same number of records (None: split exactly).
EVEN_MODES = (None, "pad", "drop")

#: Group permutations kept by an :class:`EpochOrder` for the next look-ups.
_CACHED_GROUPS = 4


def check_integer(value: object, name: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high)``, or a :class:`SamplingError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SamplingError(f"{name} must be an integer, not {value!r}")
    number = operator.index(value)
    if number < low or (high is not None and number >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise SamplingError(f"{name} must be {bound}, not {number}")
    return number


def check_even(even: object) -> str | None:
    """``even`` when it is one of :data:`EVEN_MODES`, else a :class:`SamplingError`."""
    if even not in EVEN_MODES:
        raise SamplingError(f"even must be None, 'pad' or 'drop', not {even!r}")
    return even


def _generator(seed: int, epoch: int, stream: int) -> np.random.Generator:
    sequence = np.random.SeedSequence(seed, spawn_key=(epoch, stream))
    return np.random.Generator(np.random.PCG64(sequence))


class EpochOrder:
    """The order of one epoch over bins holding ``counts`` records (see the module doc).

    Permutations are drawn per group, when a position in the group is first asked for,
    so a rank that reads a few bins draws only their permutations.

    Parameters
    ----------
    counts
        Records per bin, indexed by bin id.
    seed, epoch
        Integers >= 0 that fix the order.
    shuffle
        Permute bins and records (the default); False keeps the stored order.
    mix_bins
        Bins per group whose records are permuted together (>= 1).

    Raises
    ------
    SamplingError
        If an argument is out of range.
    """

    def __init__(
        self,
        counts: Sequence[int] | NDArray[Any],
        seed: int,
        epoch: int,
        *,
        shuffle: bool = True,
        mix_bins: int = 1,
    ) -> None:
        self.seed = check_integer(seed, "seed")
        self.epoch = check_integer(epoch, "epoch")
        self.mix_bins = check_integer(mix_bins, "mix_bins", 1)
        self.shuffle = bool(shuffle)
        sizes = np.asarray(counts, dtype=np.int64).reshape(-1)
        if sizes.size and int(sizes.min()) < 0:
            raise SamplingError("bin counts must be >= 0")
        self.counts = sizes
        #: Bin-major number of the first record of each bin, and the total at the end.
        self.offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.total = int(self.offsets[-1])
        bins = sizes.size
        if self.shuffle:
            self.bin_order = _generator(self.seed, self.epoch, 0).permutation(bins)
            per_group = self.mix_bins
        else:
            self.bin_order = np.arange(bins, dtype=np.int64)
            per_group = 1
        #: First bin (position in ``bin_order``) of each group, and ``bins`` at the end.
        self.group_first_bin = np.append(np.arange(0, bins, per_group), bins).astype(np.int64)
        ordered_counts = np.concatenate([[0], np.cumsum(sizes[self.bin_order])])
        #: Epoch position of the first record of each group, and the total at the end.
        self.group_bounds = ordered_counts[self.group_first_bin].astype(np.int64)
        self._cache: OrderedDict[int, NDArray[np.int64]] = OrderedDict()

    @property
    def groups(self) -> int:
        """The number of groups."""
        return len(self.group_bounds) - 1

    def group_bins(self, group: int) -> NDArray[Any]:
        """The bins of ``group``, in epoch order."""
        first, last = self.group_first_bin[group], self.group_first_bin[group + 1]
        return self.bin_order[first:last]

    def group_records(self, group: int) -> NDArray[np.int64]:
        """Bin-major record numbers of ``group`` in epoch order."""
        cached = self._cache.get(group)
        if cached is not None:
            self._cache.move_to_end(group)
            return cached
        bins = self.group_bins(group)
        starts = self.offsets[bins]
        sizes = self.counts[bins]
        size = int(sizes.sum())
        # Record numbers of the group in stored order: each bin's run, bins in epoch order.
        base = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        records = base + np.arange(size, dtype=np.int64)
        if self.shuffle and size > 1:
            records = records[_generator(self.seed, self.epoch, group + 1).permutation(size)]
        self._cache[group] = records
        if len(self._cache) > _CACHED_GROUPS:
            self._cache.popitem(last=False)
        return records

    def take(self, positions: NDArray[Any]) -> NDArray[np.int64]:
        """Bin-major record numbers at epoch ``positions`` (each in ``[0, total)``)."""
        wanted = np.asarray(positions, dtype=np.int64)
        out = np.empty(wanted.shape, dtype=np.int64)
        if wanted.size == 0:
            return out
        if int(wanted.min()) < 0 or int(wanted.max()) >= self.total:
            raise SamplingError(f"epoch positions must be in [0, {self.total})")
        group_of = np.searchsorted(self.group_bounds, wanted, side="right") - 1
        if int(group_of[0]) == int(group_of[-1]) and bool(np.all(group_of == group_of[0])):
            group = int(group_of[0])
            out[:] = self.group_records(group)[wanted - self.group_bounds[group]]
            return out
        for group in np.unique(group_of).tolist():
            picked = group_of == group
            out[picked] = self.group_records(group)[wanted[picked] - self.group_bounds[group]]
        return out

    def records(self) -> NDArray[np.int64]:
        """The whole epoch: every bin-major record number once, in epoch order."""
        parts = [self.group_records(g) for g in range(self.groups)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def bin_of(self, records: NDArray[Any]) -> NDArray[np.int64]:
        """The bin of each bin-major record number."""
        found = np.searchsorted(self.offsets[1:], records, side="right")
        return found.astype(np.int64)


def rank_span(total: int, rank: int, world_size: int, even: str | None = None) -> tuple[int, int]:
    """Rank ``rank``'s run of an epoch of ``total`` records: ``(first, length)``.

    The run covers epoch positions ``(first + k) mod total`` for ``k < length``; only
    ``even="pad"`` reaches past the end (and wraps to the start).

    Raises
    ------
    SamplingError
        If ``world_size`` < 1, ``rank`` is outside ``[0, world_size)`` or ``even`` is not
        one of :data:`EVEN_MODES`.
    """
    total = check_integer(total, "total")
    world_size = check_integer(world_size, "world_size", 1)
    rank = check_integer(rank, "rank", 0, world_size)
    even = check_even(even)
    if even is None:
        first = rank * total // world_size
        return first, (rank + 1) * total // world_size - first
    per_rank = total // world_size if even == "drop" else -(-total // world_size)
    return rank * per_rank, per_rank


def _check_split(
    length: int, worker: int, workers: int, block_size: int, start: int
) -> tuple[int, int, int, int, int]:
    length = check_integer(length, "length")
    workers = check_integer(workers, "workers", 1)
    worker = check_integer(worker, "worker", 0, workers)
    block_size = check_integer(block_size, "block_size", 1)
    start = check_integer(start, "start", 0, length + 1)
    return length, worker, workers, block_size, start


def worker_count(length: int, worker: int, workers: int, block_size: int, start: int = 0) -> int:
    """How many of the positions ``[start, length)`` of a rank's run worker ``worker`` of
    ``workers`` takes, in blocks of ``block_size``.

    Raises
    ------
    SamplingError
        If ``workers`` < 1, ``worker`` is outside ``[0, workers)``, ``block_size`` < 1 or
        ``start`` is outside ``[0, length]``.
    """
    length, worker, workers, block_size, start = _check_split(
        length, worker, workers, block_size, start
    )
    full, rest = divmod(length - start, block_size)
    mine = max(0, (full - worker + workers - 1) // workers) * block_size
    if rest and full % workers == worker:
        mine += rest
    return mine


def worker_positions(
    length: int,
    worker: int,
    workers: int,
    block_size: int,
    start: int = 0,
    *,
    first: int = 0,
    stop: int | None = None,
) -> NDArray[np.int64]:
    """The positions in a rank's run of worker ``worker``'s records ``first`` to ``stop``
    (default: all of them), in the order the worker hands them out.

    Worker ``w``'s record ``k`` sits in block ``w + (k // block_size) * workers`` of the
    run cut from ``start``, at ``k mod block_size`` inside it.

    Raises
    ------
    SamplingError
        As :func:`worker_count`, or if ``first``/``stop`` are outside the worker's count.
    """
    count = worker_count(length, worker, workers, block_size, start)
    first = check_integer(first, "first", 0, count + 1)
    stop = count if stop is None else check_integer(stop, "stop", first, count + 1)
    k = np.arange(first, stop, dtype=np.int64)
    block = worker + (k // block_size) * workers
    return start + block * block_size + k % block_size


@dataclass(frozen=True)
class EpochState:
    """Where a rank stands in an epoch, and what the position is valid for.

    ``seed``, ``epoch`` and ``consumed`` (records of the rank's run already taken) fix the
    position; the other fields name the dataset and the split that the position belongs
    to, so that resuming elsewhere fails instead of silently reading another order. The
    rank and the worker count are not part of it: with an unchanged world size every rank
    resumes from the same count, with any number of workers.
    """

    dataset: str
    records: int
    seed: int
    epoch: int
    consumed: int
    world_size: int = 1
    shuffle: bool = True
    mix_bins: int = 1
    even: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (str, int, bool, None): fit for ``torch.save``, JSON or pickle."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> EpochState:
        """Validate and read back a :meth:`to_dict` result.

        Raises
        ------
        ResumeStateError
            If ``state`` is not a mapping with every field of the right type.
        """
        if not isinstance(state, Mapping):
            raise ResumeStateError(f"a resume state must be a mapping, not {type(state).__name__}")
        missing = [name for name in cls.__dataclass_fields__ if name not in state]
        if missing:
            raise ResumeStateError(f"the resume state has no {', '.join(missing)}")
        if not isinstance(state["dataset"], str):
            raise ResumeStateError("the resume state's dataset must be a string")
        for name in ("records", "seed", "epoch", "consumed", "world_size", "mix_bins"):
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ResumeStateError(
                    f"the resume state's {name} must be an integer >= 0, not {value!r}"
                )
        if not isinstance(state["shuffle"], bool):
            raise ResumeStateError("the resume state's shuffle must be True or False")
        if state["even"] not in EVEN_MODES:
            raise ResumeStateError(f"the resume state's even={state['even']!r} is unknown")
        return cls(**{name: state[name] for name in cls.__dataclass_fields__})

    def check_matches(self, expected: EpochState) -> None:
        """Raise unless this state belongs to the same dataset and split as ``expected``
        (every field but ``epoch`` and ``consumed``).

        Raises
        ------
        ResumeStateError
            Naming the first field that differs.
        """
        for name in ("dataset", "records", "seed", "world_size", "shuffle", "mix_bins", "even"):
            saved, wanted = getattr(self, name), getattr(expected, name)
            if saved != wanted:
                what = "another dataset" if name in ("dataset", "records") else f"another {name}"
                raise ResumeStateError(
                    f"the resume state belongs to {what}: it was saved with {name}={saved!r}, "
                    f"this iteration has {name}={wanted!r}"
                )
