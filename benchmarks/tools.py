"""Throughput of the dataset tools behind ``splitdata``, against baselines in the same run.

    python benchmarks/tools.py [--records N] [--size BYTES] [--repeat R]

Writes one local dataset, then times, each the best of ``--repeat`` runs on a warm page
cache:

* ``verify()`` (every frame, checksum and index entry) against a checked sequential
  ``iterate_binwise()`` pass over the same records, and against reading the same files
  with ``readinto`` (the raw limit);
* ``copy_dataset()`` to another local folder (files, byte for byte) against
  ``shutil.copytree`` of the same folder;
* ``pack()`` of a JSON Lines file of the same records against reading its lines.

It prints rates and ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from splitdataloader import SplitDataLoader, verify, write_split_data
from splitdataloader.cp import copy_dataset
from splitdataloader.pack import pack


def best(
    repeat: int, run: Callable[[], object], before: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def read_files(folder: Path) -> int:
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb", buffering=0) as handle:
                while count := handle.readinto(view):
                    total += count
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record")
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="splitdata-tools-"))
    try:
        base = os.urandom(args.size)
        records = [base[: args.size - 8] + k.to_bytes(8, "little") for k in range(args.records)]
        dataset = root / "ds"
        write_split_data(dataset, records, splits=args.bins)
        nbytes = sum(map(len, records))
        stored = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file())

        def iterate() -> None:
            with SplitDataLoader(dataset) as loader:
                for _ in loader.iterate_binwise():
                    pass

        rows: list[tuple[str, float, str, float]] = []
        t_verify = best(args.repeat, lambda: verify(dataset))
        t_iterate = best(args.repeat, iterate)
        t_raw = best(args.repeat, lambda: read_files(dataset))
        rows.append(("verify", t_verify, "checked iterate_binwise", t_iterate))
        rows.append(("verify", t_verify, "readinto of the files", t_raw))

        target = root / "copy"
        t_cp = best(
            args.repeat,
            lambda: copy_dataset(dataset, target),
            lambda: shutil.rmtree(target, ignore_errors=True),
        )
        t_copytree = best(
            args.repeat,
            lambda: shutil.copytree(dataset, target),
            lambda: shutil.rmtree(target, ignore_errors=True),
        )
        rows.append(("cp (files)", t_cp, "shutil.copytree", t_copytree))

        lines = root / "records.jsonl"
        with lines.open("wb") as out:
            for k in range(args.records):
                out.write(json.dumps({"k": k, "text": "x" * (args.size - 20)}).encode() + b"\n")
        packed = root / "packed"

        def read_lines() -> None:
            with lines.open("rb") as handle:
                for _ in handle:
                    pass

        t_pack = best(
            args.repeat,
            lambda: pack([str(lines)], str(packed), bins=args.bins),
            lambda: shutil.rmtree(packed, ignore_errors=True),
        )
        t_lines = best(args.repeat, read_lines)
        rows.append(("pack (jsonl)", t_pack, "reading the lines", t_lines))

        print(
            f"{args.records:,} records of {args.size} B ({nbytes / 1e6:.0f} MB, "
            f"{stored / 1e6:.0f} MB stored), {args.bins} bins, best of {args.repeat}\n"
        )
        print("| measured | rate | baseline | rate | measured / baseline |\n|---|---|---|---|---|")
        for name, seconds, baseline, base_seconds in rows:
            print(
                f"| {name} | {args.records / seconds:,.0f} rec/s, {nbytes / 1e6 / seconds:,.0f} "
                f"MB/s | {baseline} | {args.records / base_seconds:,.0f} rec/s, "
                f"{nbytes / 1e6 / base_seconds:,.0f} MB/s | {base_seconds / seconds:.0%} |"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
