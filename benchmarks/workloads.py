"""Deterministic benchmark workloads.

A workload is ``count`` records of ``size`` bytes each. Every record is a window of a
16 MiB byte pool generated once from a seeded numpy generator: random bytes in which about
a third of the 64-byte blocks are replaced by a run of one repeated byte, so the data is
mildly compressible (zlib keeps about two thirds of it). Record ``i`` starts at a pool
offset that no other record of the workload uses, so all records are distinct and a loader
that returns the wrong record is caught.

Only :func:`make_pool` needs numpy and it runs in the driver alone; everything else is
plain standard library, because this module is also imported by ``phases.py`` inside the
virtual environment of splitdataloader 0.0.1, which has no numpy.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

POOL_BYTES = 16 * 1024 * 1024
BINS = 128
WARM_PASSES = 4  # reads of every data file before the read phases
RUN_BLOCK = 64
RUN_SHARE = 0.35
_MULTIPLIER = 1_000_003  # a prime: scatters neighbouring records over the pool
_KEY_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class Workload:
    """Shape of one dataset: how many records, how large, and how many random reads."""

    name: str
    count: int
    size: int
    random_reads: int
    seed: int

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**data)

    def offsets(self) -> list[int]:
        """Pool offset of every record, in index order; all distinct."""
        if self.size > POOL_BYTES // 2:
            raise ValueError(f"records of {self.size} bytes do not fit the pool")
        room = POOL_BYTES - self.size
        step = 1
        while room // (step * 2) >= self.count and step < 4096:
            step *= 2
        slots = room // step
        if slots < self.count:
            raise ValueError(f"pool too small for {self.count} distinct records")
        multiplier = _MULTIPLIER
        while math.gcd(multiplier, slots) != 1:
            multiplier += 2
        shift = self.seed % slots
        return [((i * multiplier + shift) % slots) * step for i in range(self.count)]

    def random_indices(self) -> list[int]:
        """The seeded record indices of the random-access phase."""
        rng = random.Random(self.seed * 7919 + 17)
        return [rng.randrange(self.count) for _ in range(self.random_reads)]


def full_scale() -> tuple[Workload, Workload]:
    """W1: 200,000 records of 1 KiB; W2: 2,000 records of 1 MiB."""
    return (
        Workload("W1", count=200_000, size=1024, random_reads=10_000, seed=1),
        Workload("W2", count=2_000, size=1024 * 1024, random_reads=2_000, seed=2),
    )


def quick_scale() -> tuple[Workload, Workload]:
    """A tenth of the full scale, for a smoke run."""
    return (
        Workload("W1", count=20_000, size=1024, random_reads=2_000, seed=1),
        Workload("W2", count=200, size=1024 * 1024, random_reads=200, seed=2),
    )


def make_pool(seed: int) -> bytes:
    """The seeded, mildly compressible byte pool that all records are cut from."""
    import numpy as np  # noqa: PLC0415 - numpy exists in the driver's environment only

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=POOL_BYTES, dtype=np.uint8)
    blocks = data.reshape(-1, RUN_BLOCK)
    runs = rng.random(blocks.shape[0]) < RUN_SHARE
    blocks[runs] = rng.integers(0, 256, size=(int(runs.sum()), 1), dtype=np.uint8)
    return data.tobytes()


def write_pool(path: Path, seed: int) -> int:
    """Write the pool of ``seed`` to ``path``; return its crc32 (for the report)."""
    pool = make_pool(seed)
    path.write_bytes(pool)
    return zlib.crc32(pool)


def records(pool: bytes, offsets: Iterable[int], size: int) -> Iterator[memoryview]:
    """Zero-copy views of the records, in index order."""
    view = memoryview(pool)
    for offset in offsets:
        yield view[offset : offset + size]


def record_key(record: bytes | memoryview) -> int:
    """A cheap fingerprint of one record: crc32 in the high half, length in the low half."""
    return (zlib.crc32(record) << 32) | (len(record) & _KEY_MASK)


def expected_keys(pool: bytes, workload: Workload) -> list[int]:
    """Fingerprint of every record of ``workload``, in index order."""
    return [record_key(r) for r in records(pool, workload.offsets(), workload.size)]


def concatenated_crc(pool: bytes, workload: Workload) -> int:
    """crc32 of all records written back to back, as in the raw single file."""
    crc = 0
    for record in records(pool, workload.offsets(), workload.size):
        crc = zlib.crc32(record, crc)
    return crc
