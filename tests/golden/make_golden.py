"""Generate the golden datasets under tests/golden/ (run once; the results are committed).

    python tests/golden/make_golden.py [--force] [v2] [legacy]

* ``v2-7bins/``: format version 2 written by this package: 300 records of 0..3000 bytes
  in 7 bins, in two commits: 180 records, then an append of 120 with ``shuffle=True``
  and a fixed seed.
* ``legacy-0.0.1/``: written by the real splitdataloader 0.0.1 from PyPI (installed
  into a temporary folder): 150 records in 5 bins, then an append of 70 with 0.0.1's
  ``shuffle=True`` (its ``random`` module seeded).

Next to each folder, ``<name>.expected.json`` holds the sha256 of every record in index
order, computed here from the input records (never by reading the dataset back), and
the shape of the commits. The datasets must stay readable forever: regenerate the v2 one
only when the format version changes, and keep the old folder next to the new one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for legacy_tools, next to the tests

from legacy_tools import LegacyWrite, install_legacy, run_legacy  # noqa: E402


def make_records(seed: int, count: int, max_size: int) -> list[bytes]:
    """``count`` distinct records of random bytes, sizes 0..max_size (both ends included)."""
    rng = random.Random(seed)
    sizes = [0, max_size, 1, 2, 3] + [rng.randrange(max_size + 1) for _ in range(count - 5)]
    records: list[bytes] = []
    seen: set[bytes] = set()
    for size in sizes:
        record = rng.randbytes(size)
        while record in seen:
            record = rng.randbytes(size + 1)
        seen.add(record)
        records.append(record)
    rng.shuffle(records)
    return records


def write_expected(name: str, records: list[bytes], commits: list[dict[str, object]]) -> None:
    document = {
        "dataset": name,
        "generated_by": "tests/golden/make_golden.py",
        "records": len(records),
        "commits": commits,
        "sha256": [hashlib.sha256(record).hexdigest() for record in records],
    }
    path = HERE / f"{name}.expected.json"
    path.write_text(json.dumps(document, indent=1) + "\n")


def make_v2() -> None:
    from splitdataloader import write_split_data  # noqa: PLC0415 - the package under test

    name = "v2-7bins"
    target = HERE / name
    records = make_records(seed=20240601, count=300, max_size=3000)
    first, second = records[:180], records[180:]
    write_split_data(str(target), first, splits=7)
    write_split_data(str(target), second, splits=7, shuffle=True, seed=1234)
    write_expected(
        name,
        records,
        [
            {"records": len(first), "bins": 7, "shuffle": False},
            {"records": len(second), "bins": 7, "shuffle": True, "seed": 1234},
        ],
    )


def make_legacy() -> None:
    name = "legacy-0.0.1"
    target = HERE / name
    records = make_records(seed=20240602, count=220, max_size=3000)
    first, second = records[:150], records[150:]
    writes = [
        LegacyWrite(tuple(first), splits=5),
        LegacyWrite(tuple(second), splits=5, shuffle=True),
    ]
    with tempfile.TemporaryDirectory(prefix="sdl-golden-") as scratch:
        package = install_legacy(Path(scratch) / "site")
        dump = run_legacy(package, target, writes, seed=42)
    if dump.items != records:
        raise SystemExit("0.0.1 did not read back what it wrote; golden not made")
    write_expected(
        name,
        records,
        [
            {"records": len(first), "bins": 5, "shuffle": False},
            {"records": len(second), "bins": 5, "shuffle": True},
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="v2 and/or legacy (default: both)")
    parser.add_argument("--force", action="store_true", help="replace existing folders")
    args = parser.parse_args()
    makers = {"v2": ("v2-7bins", make_v2), "legacy": ("legacy-0.0.1", make_legacy)}
    for which in args.which or list(makers):
        if which not in makers:
            parser.error(f"unknown golden dataset {which!r}: choose from {', '.join(makers)}")
        name, make = makers[which]
        target = HERE / name
        if target.exists():
            if not args.force:
                raise SystemExit(f"{target} exists: golden data is never regenerated lightly")
            shutil.rmtree(target)
        make()
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
