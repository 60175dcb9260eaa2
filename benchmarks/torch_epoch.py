"""A shuffled epoch through PyTorch's DataLoader against the loader's own parallel pass.

Phases, on the same dataset (local disk, warm page cache), each checked to hand out every
record exactly once before a number is kept:

* ``iterate_binwise``: ``loader.iterate_binwise(shuffle=True, seed=…, workers=2)``, the
  baseline: bins read, verified and permuted in two worker processes.
* ``DataLoader``: ``torch.utils.data.DataLoader(SplitIterableDataset(…), batch_size=B,
  num_workers=2)``: each worker reads its blocks of the rank's epoch order with
  ``get_many``, batches go through DataLoader's own queues.
* the ``DataLoader``'s own ceiling: the same ``DataLoader`` over a dataset whose workers
  hand out ready-made records of the same size (no reading), to show what moving batches
  of ``bytes`` from the workers to this process costs by itself;
* for context, both orders read in this process (no workers): ``iterate_binwise(shuffle=
  True)`` and ``loader.epoch(...)``.

Every figure is the median of ``--runs`` runs. Usage::

    python benchmarks/torch_epoch.py [--quick] [--out benchmarks/results/torch.md]

Needs the ``torch`` extra (``pip install torch==2.13.0`` installs the CPU build).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.pytorch import SplitIterableDataset

POOL_BYTES = 16 << 20


def _check(condition: bool, what: str) -> None:
    """Stop the run: a number measured on wrong records is worthless."""
    if not condition:
        raise SystemExit(f"benchmark check failed: {what}")


def make_records(count: int, size: int) -> Iterable[bytes]:
    """Record ``k``: its number in 8 bytes, then a window of a seeded random pool."""
    pool = np.random.default_rng(7).integers(0, 256, POOL_BYTES, dtype=np.uint8).tobytes()
    room = POOL_BYTES - size
    for k in range(count):
        start = (k * 1_000_003) % room
        yield k.to_bytes(8, "little") + pool[start : start + size - 8]


def check_epoch(records: Iterable[bytes], count: int, size: int) -> int:
    """Every record once, each of the right size; returns how many came. The check costs
    a slice per record, the same for every phase."""
    heads: list[bytes] = []
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, 8192)):
        _check(min(map(len, chunk)) == max(map(len, chunk)) == size, "a record's size")
        heads.append(b"".join([record[:8] for record in chunk]))
    numbers = np.frombuffer(b"".join(heads), dtype="<u8")
    _check(len(numbers) == count, f"{len(numbers)} records instead of {count}")
    _check(bool(np.all(np.bincount(numbers, minlength=count) == 1)), "a record repeated")
    return count


class ReadyMade(IterableDataset[bytes]):
    """``count`` distinct records of ``size`` bytes made on the fly, split over the workers
    in blocks as :class:`SplitIterableDataset` splits them: no storage involved."""

    def __init__(self, count: int, size: int, block_size: int) -> None:
        self.count, self.size, self.block_size = count, size, block_size

    def __iter__(self) -> Iterator[bytes]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        body = bytes(self.size - 8)
        step = self.block_size * workers
        for first in range(worker * self.block_size, self.count, step):
            for k in range(first, min(first + self.block_size, self.count)):
                yield k.to_bytes(8, "little") + body


def batched(loader: DataLoader[list[bytes]]) -> Iterable[bytes]:
    for batch in loader:
        yield from batch


def timed(phases: dict[str, Callable[[], int]], runs: int) -> dict[str, float]:
    """Median seconds of each phase; the runs of all phases are interleaved, so that a
    change in the machine's load touches every phase alike."""
    times: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(runs):
        for name, run in phases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the records, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record")
    parser.add_argument("--bins", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    count = args.records // 10 if args.quick else args.records
    size, batch_size = args.size, args.batch_size
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sdl-torch-bench-") as scratch:
        url = str(Path(scratch) / "ds")
        write_split_data(url, make_records(count, size), splits=args.bins)
        with SplitDataLoader(url) as loader:
            check_epoch(loader.iterate_binwise(), count, size)  # warms the page cache
        epoch = iter(range(1, 1 << 20))  # a new epoch for every run: no order is reused

        def binwise(workers: int) -> int:
            with SplitDataLoader(url) as loader:
                records = loader.iterate_binwise(shuffle=True, seed=next(epoch), workers=workers)
                return check_epoch(records, count, size)

        def through_torch() -> int:
            dataset = SplitIterableDataset(url, seed=1, batch_size=batch_size)
            dataset.set_epoch(next(epoch))
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=2)
            return check_epoch(batched(loader), count, size)

        def ceiling() -> int:
            dataset = ReadyMade(count, size, batch_size)
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=2)
            return check_epoch(batched(loader), count, size)

        def epoch_here() -> int:
            with SplitDataLoader(url) as loader:
                return check_epoch(loader.epoch(next(epoch), seed=1), count, size)

        medians = timed(
            {
                "base": lambda: binwise(2),
                "torch": through_torch,
                "ceiling": ceiling,
                "binwise_here": lambda: binwise(0),
                "epoch_here": epoch_here,
            },
            runs,
        )
    base, torch_time, ceiling_time = medians["base"], medians["torch"], medians["ceiling"]
    binwise_here, epoch_time = medians["binwise_here"], medians["epoch_here"]
    mb = count * size / 1e6

    def rate(seconds: float) -> str:
        return f"{count / seconds:,.0f} rec/s · {mb / seconds:,.1f} MB/s"

    ratio = base / torch_time
    rows = [
        (
            "`DataLoader(SplitIterableDataset, num_workers=2)`",
            rate(torch_time),
            f"`iterate_binwise(shuffle=True, workers=2)`: {rate(base)}",
            f"**{ratio:.2f}x**",
        ),
        (
            "`DataLoader(SplitIterableDataset, num_workers=2)`",
            rate(torch_time),
            f"`DataLoader` ceiling, records made by its workers: {rate(ceiling_time)}",
            f"{ceiling_time / torch_time:.0%}",
        ),
        (
            "`loader.epoch(...)` in this process",
            rate(epoch_time),
            f"`iterate_binwise(shuffle=True)` in this process: {rate(binwise_here)}",
            f"{binwise_here / epoch_time:.2f}x",
        ),
    ]
    command = " ".join(["python benchmarks/torch_epoch.py", *sys.argv[1:]])
    lines = [
        "# A shuffled epoch through PyTorch's DataLoader",
        "",
        f"Command: `{command}`",
        "",
        f"- {count:,} records of {size:,} bytes in {args.bins} bins, local disk, warm page "
        f"cache; DataLoader and dataset batch size {batch_size}",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; torch {torch.__version__}; "
        f"splitdataloader {version('splitdataloader')}",
        f"- Medians of {runs} interleaved run(s); every record checked once per run; took "
        f"{time.time() - started:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| measured | rate | baseline | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
