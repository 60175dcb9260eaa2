"""MpQItr against the in-process loop and a plain ``multiprocessing.Queue``, in one run.

Phases, each checked for the right items before a number is kept:

* ``tiny``: 200,000 small ints from a generator, in-process vs through MpQItr: the
  per-item cost of crossing a process boundary.
* ``4mib``: 200 items of 4 MiB (bytes), MpQItr vs a worker process putting the same items
  on a ``multiprocessing.Queue`` (target: MpQItr at least 3x the queue's throughput).
* ``balanced``: a pipeline where producing and consuming each item burn the same CPU
  time; in-process (the sum of both) vs MpQItr (they overlap on two cores; target: at
  least 1.7x faster).
* ``decode``: bin-wise iteration of a zstd-compressed dataset on local disk, in this
  process vs ``workers=1`` and ``workers=2`` (reading, verification and decompression in
  worker processes).

Every figure is the median of ``--runs`` runs. Usage::

    python benchmarks/prefetch.py [--quick] [--out benchmarks/results/prefetch.md]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

from splitdataloader import MpQItr, SplitDataLoader, write_split_data

BIG = 4 << 20


def _check(condition: bool, what: str) -> None:
    """Stop the run: a number measured on wrong items is worthless."""
    if not condition:
        raise SystemExit(f"benchmark check failed: {what}")


def tiny_items(count: int) -> Iterator[int]:
    yield from range(count)


def big_items(count: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (BIG // 32)
    for k in range(count):
        yield k.to_bytes(8, "little") + block[8:]


def _queue_worker(queue: multiprocessing.Queue[bytes | None], count: int) -> None:
    for item in big_items(count):
        queue.put(item)
    queue.put(None)


def queue_items(count: int) -> Iterator[bytes]:
    """The same items as :func:`big_items`, through a plain ``multiprocessing.Queue``."""
    queue: multiprocessing.Queue[bytes | None] = multiprocessing.Queue(maxsize=16)
    process = multiprocessing.Process(target=_queue_worker, args=(queue, count), daemon=True)
    process.start()
    try:
        while (item := queue.get()) is not None:
            yield item
    finally:
        process.join(10)


def burn(seconds: float) -> int:
    """Spin the CPU for about ``seconds`` (no sleeping: the point is CPU time)."""
    end = time.perf_counter() + seconds
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return spins


def produced(count: int, cost: float) -> Iterator[int]:
    for k in range(count):
        burn(cost)
        yield k


def _timed(run: Callable[[], int], runs: int) -> tuple[float, int]:
    times: list[float] = []
    result = 0
    for _ in range(runs):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _consume_tiny(items: Iterator[int] | MpQItr[int], count: int) -> int:
    total = sum(items)
    _check(total == count * (count - 1) // 2, "wrong items")
    return total


def _consume_big(items: Iterator[bytes] | MpQItr[bytes], count: int) -> int:
    seen = 0
    for k, item in enumerate(items):
        _check(len(item) == BIG, "wrong item size")
        _check(int.from_bytes(item[:8], "little") == k, "wrong item")
        seen += 1
    _check(seen == count, "items missing")
    return seen


def _consume_balanced(items: Iterator[int] | MpQItr[int], count: int, cost: float) -> int:
    seen = 0
    for k, item in enumerate(items):
        _check(item == k, "wrong item")
        burn(cost)
        seen += 1
    _check(seen == count, "items missing")
    return seen


def _decode_dataset(folder: Path, records: int) -> list[bytes]:
    data = [
        (f"record {k} " * (20 + k % 40)).encode() + hashlib.sha256(str(k).encode()).digest()
        for k in range(records)
    ]
    write_split_data(str(folder), data, 16, codecs=[{"id": "zstd", "level": 3}])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, one run each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    tiny = 20_000 if args.quick else 200_000
    big = 40 if args.quick else 200
    balanced = 100 if args.quick else 400
    cost = 0.002
    records = 30_000 if args.quick else 200_000

    rows: list[tuple[str, str, str, str]] = []
    started = time.time()

    base, _ = _timed(lambda: _consume_tiny(tiny_items(tiny), tiny), runs)
    mp, _ = _timed(lambda: _consume_tiny(MpQItr[int](tiny_items, tiny), tiny), runs)
    per_item = (mp - base) / tiny * 1e6
    rows.append(
        (
            f"{tiny:,} tiny items",
            f"{tiny / mp:,.0f} items/s",
            f"in-process {tiny / base:,.0f} items/s",
            f"{per_item:.1f} µs per item across the process boundary",
        )
    )

    queue, _ = _timed(lambda: _consume_big(queue_items(big), big), runs)
    shm, _ = _timed(lambda: _consume_big(MpQItr[bytes](big_items, big), big), runs)
    mb = big * BIG / 1e6
    ratio = queue / shm
    rows.append(
        (
            f"{big} items of 4 MiB",
            f"{mb / shm:,.0f} MB/s",
            f"`multiprocessing.Queue` {mb / queue:,.0f} MB/s",
            f"**{ratio:.2f}x** (target ≥ 3x: {'pass' if ratio >= 3 else 'FAIL'})",
        )
    )

    inline, _ = _timed(lambda: _consume_balanced(produced(balanced, cost), balanced, cost), runs)
    overlap, _ = _timed(
        lambda: _consume_balanced(MpQItr[int](produced, balanced, cost), balanced, cost), runs
    )
    speedup = inline / overlap
    rows.append(
        (
            f"{balanced} items, {cost * 1e3:.0f} ms to make + {cost * 1e3:.0f} ms to use",
            f"{overlap:.2f} s",
            f"in-process {inline:.2f} s",
            f"**{speedup:.2f}x** (target ≥ 1.7x: {'pass' if speedup >= 1.7 else 'FAIL'})",
        )
    )

    with tempfile.TemporaryDirectory(prefix="sdl-prefetch-bench-") as scratch:
        folder = Path(scratch) / "zstd"
        data = _decode_dataset(folder, records)
        expected = sorted(data)

        def epoch(workers: int) -> int:
            with SplitDataLoader(str(folder)) as loader:
                got = list(loader.iterate_binwise(shuffle=True, seed=1, workers=workers))
            _check(sorted(got) == expected, "wrong records")
            return len(got)

        single, _ = _timed(lambda: epoch(0), runs)
        one, _ = _timed(lambda: epoch(1), runs)
        two, _ = _timed(lambda: epoch(2), runs)
    for label, seconds in (("workers=1", one), ("workers=2", two)):
        rows.append(
            (
                f"{records:,} zstd records, shuffled epoch, {label}",
                f"{records / seconds:,.0f} rec/s",
                f"in this process {records / single:,.0f} rec/s",
                f"{single / seconds:.2f}x",
            )
        )
    rows.append(
        (
            f"{records:,} zstd records, shuffled epoch, workers=2 vs workers=1",
            f"{records / two:,.0f} rec/s",
            f"workers=1 {records / one:,.0f} rec/s",
            f"**{one / two:.2f}x**",
        )
    )

    lines = [
        "# MpQItr and parallel decoding",
        "",
        f"Command: `python benchmarks/prefetch.py{' --quick' if args.quick else ''}`",
        "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; splitdataloader {version('splitdataloader')}; "
        f"start method {multiprocessing.get_start_method()}",
        f"- Medians of {runs} run(s); took {time.time() - started:.0f} s; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| phase | MpQItr | baseline | ratio |",
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
