"""Parallel writing with Dask: a cluster of 2 worker processes against 1, in one run.

``write_dask`` writes 2,000,000 records of 1 KiB, made inside the workers from a
``dask.bag`` of 8 partitions (each partition streams its records into its part writer),
to local disk (under ``--dir``, or a temporary folder), on a ``distributed.LocalCluster``
of 2 worker processes and on one of 1 worker process, one thread each. Both clusters are
started, and every worker has imported the library, before any clock runs; a run times
``write_dask`` from call to return (the tasks, every part's files and the join). Runs
alternate between the clusters, each into a fresh dataset, and every dataset is checked
(its length, bins and 2,000 records at random positions, and once per cluster a digest
over every record) before its number is kept. Figures are medians of ``--runs`` runs.

Usage::

    python benchmarks/dask_write.py [--quick] [--runs 3] [--dir DIR]
                                     [--out benchmarks/results/dask.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import dask.bag as db
import numpy as np
import xxhash
from distributed import Client, LocalCluster

from splitdataloader import SplitDataLoader, write_dask

RECORD = 1024
PARTITIONS = 8
BINS = 64
TARGET = 1.6
_BLOCK = np.random.default_rng(7).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()


def record(index: int) -> bytes:
    """Record ``index``: its number, then 1,016 bytes of a fixed random block."""
    start = (index * 61) % (len(_BLOCK) - RECORD)
    return index.to_bytes(8, "little") + _BLOCK[start : start + RECORD - 8]


def partition_records(numbers: Iterable[int], per_partition: int) -> Iterator[bytes]:
    """Runs in a worker: the records of the partitions ``numbers``."""
    for number in numbers:
        first = number * per_partition
        for index in range(first, first + per_partition):
            yield record(index)


def _warm_up() -> None:
    """Runs in every worker before the clock: the imports a first task would pay for."""
    import splitdataloader.dask  # noqa: F401, PLC0415 - imported for its side effect only


def _check(condition: bool, what: str) -> None:
    """Stop the run: a number measured on wrong data is worthless."""
    if not condition:
        raise SystemExit(f"benchmark check failed: {what}")


def check_dataset(url: str, total: int, full: bool) -> None:
    loader = SplitDataLoader(url)
    _check(len(loader) == total, f"{url} has {len(loader)} records, not {total}")
    _check(loader.num_bins == BINS, f"{url} has {loader.num_bins} bins")
    picks = random.Random(total).sample(range(total), min(2000, total))
    _check(loader.get_many(picks) == [record(i) for i in picks], f"{url}: records differ")
    if full:
        expected = sum(xxhash.xxh3_64_intdigest(record(i)) for i in range(total))
        found = sum(xxhash.xxh3_64_intdigest(r) for r in loader.iterate_binwise())
        _check(found == expected, f"{url}: the digest over every record differs")
    loader.close()


def timed_write(client: Client, url: str, per_partition: int) -> float:
    bag = db.from_sequence(range(PARTITIONS), npartitions=PARTITIONS).map_partitions(
        partition_records, per_partition
    )
    start = time.perf_counter()
    written = write_dask(bag, url, bins=BINS, compute_kwargs={"scheduler": client})
    seconds = time.perf_counter() - start
    _check(written == PARTITIONS * per_partition, f"write_dask reported {written} records")
    return seconds


def run(args: argparse.Namespace) -> str:
    total = args.records
    _check(total % PARTITIONS == 0, f"--records must be a multiple of {PARTITIONS}")
    per_partition = total // PARTITIONS
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sdl-dask-bench-"))
    clusters = {
        workers: LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        for workers in (2, 1)
    }
    clients = {
        workers: Client(cluster, set_as_default=False) for workers, cluster in clusters.items()
    }
    for client in clients.values():  # imports in every worker: part of start-up
        client.run(_warm_up)
    seconds: dict[int, list[float]] = {2: [], 1: []}
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    try:
        for attempt in range(args.runs):
            for workers in (2, 1) if attempt % 2 == 0 else (1, 2):
                url = str(base / f"w{workers}-run{attempt}")
                elapsed = timed_write(clients[workers], url, per_partition)
                check_dataset(url, total, full=attempt == args.runs - 1)
                shutil.rmtree(url)
                seconds[workers].append(elapsed)
                print(
                    f"run {attempt + 1}: {workers} worker(s) {elapsed:.2f} s, "
                    f"{total / elapsed:,.0f} rec/s",
                    flush=True,
                )
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    took = time.perf_counter() - began
    load_after = os.getloadavg()[0]
    median = {workers: statistics.median(values) for workers, values in seconds.items()}
    rate = {workers: total / value for workers, value in median.items()}
    ratio = rate[2] / rate[1]
    verdict = "pass" if ratio >= TARGET else "FAIL"
    mb = {workers: value * RECORD / 1e6 for workers, value in rate.items()}
    rows = [
        f"| 2 worker processes | {median[2]:.2f} s | {rate[2]:,.0f} rec/s | {mb[2]:,.1f} MB/s "
        f"| **{ratio:.2f}x** (target ≥ {TARGET}x: {verdict}) |",
        f"| 1 worker process | {median[1]:.2f} s | {rate[1]:,.0f} rec/s | {mb[1]:,.1f} MB/s "
        f"| 1.00x |",
    ]
    where = f"`{args.dir}`" if args.dir else "a temporary folder on local disk"
    return "\n".join(
        [
            "# Parallel writing with Dask",
            "",
            f"Command: `{' '.join(['python', 'benchmarks/dask_write.py', *sys.argv[1:]])}`",
            "",
            f"- {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
            f"splitdataloader {version('splitdataloader')}; dask {version('dask')}, "
            f"distributed {version('distributed')}",
            f"- {total:,} records of {RECORD} B made in the workers from a `dask.bag` of "
            f"{PARTITIONS} partitions, {BINS} bins, written to {where}; "
            f"`LocalCluster` of worker processes with one thread each, started before the "
            f"clock",
            f"- Medians of {args.runs} run(s) per cluster, alternating; every dataset checked; "
            f"took {took:.0f} s; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Load average (1 min): {load_before:.1f} before the runs, {load_after:.1f} after "
            f"(the benchmark's own workers add up to 2; more means other processes shared "
            f"the cores)",
            "",
            "| cluster | `write_dask` | records/s | MB/s | vs 1 worker |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Per run (s): "
            + "; ".join(
                f"{workers} worker(s) " + ", ".join(f"{value:.2f}" for value in seconds[workers])
                for workers in (2, 1)
            ),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the records, 1 run")
    parser.add_argument("--dir", help="write the datasets under this local folder")
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args()
    if args.quick:
        args.records //= 10
        args.runs = 1
    report = run(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
