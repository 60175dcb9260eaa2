"""A quick read benchmark of an existing dataset, for sizing hardware.

Owns :func:`benchmark`: it opens a dataset and times the ways a training job reads it,
through the public loader API and with the records checked and decoded as a job gets
them: random access (``loader[i]``), random batches (``get_many``), one sequential pass and
one shuffled pass (``iterate_binwise``). It reports records and bytes per second; it
asserts nothing about them and writes nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .loader import SplitDataLoader

if TYPE_CHECKING:
    from .keys import KeyProvider

__all__ = ["PHASES", "BenchReport", "PhaseResult", "benchmark"]

#: The phases, in the order they run.
PHASES = ("random", "batch", "sequential", "shuffled")

ProgressCallback = Callable[[int, int], object]
#: ``start(phase, records)`` is called as each phase starts and returns the callback that
#: gets ``(records, nbytes)`` as the phase proceeds.
PhaseProgress = Callable[[str, int], ProgressCallback | None]

_REPORT_EVERY = 256
_CHUNK = 1024


@dataclass(frozen=True)
class PhaseResult:
    """One timed phase.

    Attributes
    ----------
    name
        ``"random"``, ``"batch"``, ``"sequential"`` or ``"shuffled"``.
    records, nbytes
        Records read and their bytes (after decoding).
    seconds
        Wall time of the phase.
    """

    name: str
    records: int
    nbytes: int
    seconds: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["records_per_s"] = round(self.records_per_second, 1)
        document["mb_per_s"] = round(self.megabytes_per_second, 2)
        return document


@dataclass
class BenchReport:
    """What :func:`benchmark` measured.

    Attributes
    ----------
    url
        The dataset.
    records, bins
        Its size.
    open_seconds
        Time to open it (read the manifest).
    phases
        The phases, in the order run.
    settings
        The options the phases ran with.
    """

    url: str
    records: int
    bins: int
    open_seconds: float
    phases: list[PhaseResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "records": self.records,
            "bins": self.bins,
            "open_seconds": round(self.open_seconds, 6),
            "settings": self.settings,
            "phases": [phase.to_json() for phase in self.phases],
        }


def benchmark(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
    phases: Sequence[str] = PHASES,
    random_reads: int = 1000,
    batch_size: int = 256,
    max_records: int | None = None,
    seed: int = 0,
    verify: bool = True,
    workers: int = 0,
    progress: PhaseProgress | None = None,
) -> BenchReport:
    """Time the ways a training job reads a dataset.

    Parameters
    ----------
    url
        A local path or any fsspec URL of the dataset.
    storage_options, keys, key_providers
        As for :class:`~splitdataloader.SplitDataLoader`.
    phases
        Which of :data:`PHASES` to run, in that order.
    random_reads
        Records read by ``random`` (one ``loader[i]`` each) and by ``batch``.
    batch_size
        Records per ``get_many`` call in ``batch``.
    max_records
        Stop the sequential and shuffled passes after this many records (default: all).
    seed
        Seed of the random indices and of the shuffled order.
    verify
        Check record checksums while reading (as the loader does by default).
    workers
        Worker processes for the sequential and shuffled passes (``iterate_binwise``).
    progress
        ``progress(phase, records)`` is called as a phase starts; it may return a
        callback that gets ``(records, nbytes)`` as the phase proceeds.

    Returns
    -------
    BenchReport
    """
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        raise ValueError(f"unknown phases {unknown}; known: {', '.join(PHASES)}")
    if random_reads < 1 or batch_size < 1:
        raise ValueError("random_reads and batch_size must be at least 1")
    started = time.perf_counter()
    loader = SplitDataLoader(
        url,
        storage_options=storage_options,
        keys=keys,
        key_providers=key_providers,
        verify=verify,
    )
    opened = time.perf_counter() - started
    report = BenchReport(
        url=loader.url,
        records=len(loader),
        bins=loader.num_bins,
        open_seconds=opened,
        settings={
            "random_reads": random_reads,
            "batch_size": batch_size,
            "max_records": max_records,
            "seed": seed,
            "verify": verify,
            "workers": workers,
        },
    )
    if not len(loader):
        return report
    rng = np.random.default_rng(seed)
    passes = len(loader) if max_records is None else min(max_records, len(loader))
    with loader:
        for name in (p for p in PHASES if p in phases):
            total = passes if name in ("sequential", "shuffled") else random_reads
            callback = progress(name, total) if progress is not None else None
            if name == "random":
                indices = rng.integers(0, len(loader), random_reads).tolist()
                result = _timed(name, _one_by_one(loader, indices), callback)
            elif name == "batch":
                indices = rng.integers(0, len(loader), random_reads).tolist()
                result = _timed(name, _batches(loader, indices, batch_size), callback)
            else:
                records = loader.iterate_binwise(
                    shuffle=name == "shuffled", seed=seed, workers=workers
                )
                result = _timed(name, _first(records, passes), callback)
            report.phases.append(result)
    return report


def _one_by_one(loader: SplitDataLoader, indices: list[int]) -> Iterator[list[bytes]]:
    for index in indices:
        yield [loader[index]]


def _batches(loader: SplitDataLoader, indices: list[int], size: int) -> Iterator[list[bytes]]:
    for lo in range(0, len(indices), size):
        yield loader.get_many(indices[lo : lo + size])


def _first(records: Iterator[bytes], count: int) -> Iterator[list[bytes]]:
    """The first ``count`` records, a chunk at a time (the timing loop stays cheap)."""
    remaining = count
    while remaining > 0:
        chunk = list(itertools.islice(records, min(_CHUNK, remaining)))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def _timed(
    name: str, chunks: Iterator[list[bytes]], progress: ProgressCallback | None
) -> PhaseResult:
    records = nbytes = 0
    pending_records = pending_bytes = 0
    clock = time.perf_counter
    started = clock()
    for chunk in chunks:
        size = sum(len(record) for record in chunk)
        records += len(chunk)
        nbytes += size
        if progress is not None:
            pending_records += len(chunk)
            pending_bytes += size
            if pending_records >= _REPORT_EVERY:
                progress(pending_records, pending_bytes)
                pending_records = pending_bytes = 0
    seconds = clock() - started
    if progress is not None and pending_records:
        progress(pending_records, pending_bytes)
    return PhaseResult(name, records, nbytes, seconds)
