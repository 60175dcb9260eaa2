"""Benchmark this splitdataloader against its 0.0.1 release and against raw file I/O.

Usage::

    python benchmarks/run.py                # full scale: about 6 minutes on 2 cores
    python benchmarks/run.py --quick        # a tenth of the scale: a smoke run, 2 minutes
    python benchmarks/run.py --out benchmarks/results/latest.md

What is measured, for both systems in the same run and on the same bytes:

* W1 = 200,000 records of 1 KiB and W2 = 2,000 records of 1 MiB (``workloads.py``), written
  to 128 bins in a temporary directory on local disk and read back with a warm page cache;
* write rate (records/s and MB/s) of ``write_split_data``; random ``loader[i]`` at seeded
  indices (10,000 reads for W1, 2,000 for W2); one full ``iterate_binwise()`` pass; one full
  ``iterate_binwise(shuffle=True)`` pass (seeded for this package only: 0.0.1 has no seed);
  this package's sequential pass again with ``verify=False``, and its write with
  ``durable=False``;
* peak memory: ``VmHWM`` of the process at the end of the write phase and of the sequential
  pass, interpreter start-up and imports included;
* raw limits on the same bytes, written back to back into one file: a Python loop of
  ``os.pread`` of one record at the same random indices, ``readinto`` of the whole file
  through a reused 1 MiB buffer, and a buffered write of the same records into one file
  (with and without a final ``fsync``);
* opening time: median of ``SplitDataLoader(path)`` + ``len()`` over many repetitions, for
  a dataset of 10 million 16-byte records (1 million with ``--quick``, written once and
  cached under the work directory) and for one of 1,000 records.

How: every phase runs in a fresh subprocess (``phases.py``), so peak memory is per phase;
0.0.1 runs in a virtual environment created once under
``~/.cache/splitdataloader-bench/venv-0.0.1`` (``python -m venv`` + ``pip install
splitdataloader==0.0.1``; it needs Python >= 3.11). This package runs from a copy of its
source taken at the start (``--live`` runs the installed tree itself), so that edits made
during a run do not mix versions. Each number is the median of three runs (``--runs``), the
runs of the systems interleaved, after one uncounted warm-up round. Only the work loop is
timed; each phase then checks every record it read against crc32 fingerprints of the seeded
data, untimed, and the run stops with an error if any byte is wrong. ``os.sync()`` runs
between phases, untimed, so that write-back of one phase does not slow the next. Writing the
10-million-record dataset the first time adds about half a minute.

The report (Markdown: machine, command, results with targets, raw limits, notes) goes to
stdout and, with ``--out``, to a file; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
from workloads import POOL_BYTES, WARM_PASSES, Workload, full_scale, quick_scale, write_pool

HERE = Path(__file__).resolve().parent
PHASES_PY = HERE / "phases.py"
LEGACY_VERSION = "0.0.1"
DEFAULT_WORKDIR = Path("/tmp/splitdataloader-bench")
DEFAULT_VENV = Path.home() / ".cache" / "splitdataloader-bench" / f"venv-{LEGACY_VERSION}"
OPEN_SMALL = 1_000
OPEN_RECORD_SIZE = 16
PHASE_TIMEOUT_S = 3600


class BenchmarkRunError(RuntimeError):
    """A phase failed, or the environment under test is not the one intended."""


@dataclass(frozen=True)
class NewLibrary:
    """The package under test as the phases import it."""

    lib_dir: str  # the folder the phases import ``splitdataloader`` from
    source_dir: str  # the folder of the installed package that lib_dir copies
    pythonpath: str | None  # the snapshot's root, put first on the phases' path
    durable_default: bool
    fingerprint: str  # sha256 of the package's Python files, shortened


@dataclass
class Context:
    """What every phase of one benchmark run needs to know."""

    legacy_python: str
    new_python: str
    new: NewLibrary
    workdir: Path
    runs: int
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def python_version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def find_python_311() -> str:
    """This interpreter if it is >= 3.11 (0.0.1 imports ``typing.Self``), else one on PATH."""
    if sys.version_info >= (3, 11):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        found = shutil.which(name)
        if found and python_version_of(found) >= (3, 11):
            return found
    raise BenchmarkRunError("splitdataloader 0.0.1 needs Python >= 3.11; none found on PATH")


def installed_version(python: str) -> str | None:
    probe = (
        "import importlib.metadata as m, splitdataloader; "
        "splitdataloader.SplitDataLoader; print(m.version('splitdataloader'))"
    )
    done = subprocess.run(
        [python, "-c", probe], check=False, capture_output=True, text=True, env=clean_env(), cwd="/"
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_legacy_venv(venv: Path) -> str:
    """The interpreter of a cached virtual environment holding splitdataloader 0.0.1."""
    python = venv / "bin" / "python"
    if python.exists() and installed_version(str(python)) == LEGACY_VERSION:
        return str(python)
    log(f"creating {venv} with splitdataloader=={LEGACY_VERSION}")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([find_python_311(), "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"splitdataloader=={LEGACY_VERSION}",
        ],
        check=True,
        env=clean_env(),
    )
    if installed_version(str(python)) != LEGACY_VERSION:
        raise BenchmarkRunError(f"{venv} does not import splitdataloader {LEGACY_VERSION}")
    return str(python)


def probe_new_library(pythonpath: str | None) -> tuple[str, bool]:
    """Where the phases import splitdataloader from, and its default of ``durable``.

    Also writes and reads back two records, so that a package caught half-edited fails here
    rather than in the middle of the run.
    """
    probe = (
        "import inspect, pathlib, tempfile, splitdataloader as s\n"
        "d = tempfile.mkdtemp() + '/probe'\n"
        "assert s.write_split_data(d, [b'a', b'bc'], splits=2) == 2\n"
        "assert s.SplitDataLoader(d)[1] == b'bc'\n"
        "print(pathlib.Path(s.__file__).resolve().parent)\n"
        "print(inspect.signature(s.write_split_data).parameters['durable'].default)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(pythonpath),
        cwd="/",
    )
    if done.returncode != 0:
        raise BenchmarkRunError(
            "this interpreter cannot use the package under test "
            f"(is it installed? `pip install -e .`):\n{done.stderr.strip()}"
        )
    lib_dir, durable = done.stdout.split()
    return lib_dir, durable == "True"


def fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_new_library(workdir: Path, snapshot: bool) -> NewLibrary:
    """The installed package, or (the default) a copy of it taken now.

    The copy keeps one run on one version of the code while the source tree is edited.
    """
    source_dir, durable = probe_new_library(None)
    if not snapshot:
        return NewLibrary(source_dir, source_dir, None, durable, fingerprint(Path(source_dir)))
    root = workdir / "snapshot"
    remove(root)
    shutil.copytree(
        source_dir, root / "splitdataloader", ignore=shutil.ignore_patterns("__pycache__")
    )
    lib_dir, durable = probe_new_library(str(root))
    if lib_dir != str((root / "splitdataloader").resolve()):
        raise BenchmarkRunError(f"the snapshot at {root} is shadowed by {lib_dir}")
    log(f"package under test: a copy of {source_dir} taken at {time.strftime('%H:%M:%S')}")
    return NewLibrary(lib_dir, source_dir, str(root), durable, fingerprint(Path(lib_dir)))


def clean_env(pythonpath: str | None = None) -> dict[str, str]:
    """The environment minus anything that could make a child import another package."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def run_phase(
    ctx: Context, key: str, system: str, spec: dict[str, Any], *, keep: bool = True
) -> dict[str, Any]:
    """Run one phase in a fresh process; keep its result under ``key`` unless a warm-up."""
    python = ctx.legacy_python if system == "old" else ctx.new_python
    spec = {**spec, "system": system}
    done = subprocess.run(
        [python, str(PHASES_PY), json.dumps(spec)],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(None if system == "old" else ctx.new.pythonpath),
        cwd=str(ctx.workdir),
        timeout=PHASE_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise BenchmarkRunError(f"phase {key} failed (exit {done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if system == "old" and result.get("lib_version", LEGACY_VERSION) != LEGACY_VERSION:
        raise BenchmarkRunError(f"phase {key} ran splitdataloader {result['lib_version']}")
    if system == "new" and result.get("lib_file", ctx.new.lib_dir) != ctx.new.lib_dir:
        raise BenchmarkRunError(f"phase {key} imported {result['lib_file']}")
    if keep:
        ctx.samples[key].append(result)
    seconds = result["seconds"]
    rate = f"  {result['records'] / seconds:,.0f} rec/s" if "bytes" in result else ""
    log(f"  {key:<36} {seconds:9.4f} s{rate}{'' if keep else '  (warm-up, not counted)'}")
    return result


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def warm(paths: Sequence[Path], passes: int = WARM_PASSES) -> None:
    """Read every file a few times so the read phases start with a warm page cache.

    One read brings a file into the page cache; the kernel's LRU keeps promoting its pages
    on the next few reads, and each promotion slows that read, so one pass is not enough.
    """
    buffer = bytearray(1024 * 1024)
    for _ in range(passes):
        for path in paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                with open(file, "rb", buffering=0) as reader:
                    while reader.readinto(buffer):
                        pass


def bench_workload(ctx: Context, workload: Workload) -> None:
    name = workload.name
    root = ctx.workdir / name
    remove(root)
    root.mkdir(parents=True)
    pool = root / "pool.bin"
    write_pool(pool, workload.seed)
    base = {"workload": workload.to_json(), "pool": str(pool), "shuffle_seed": 1234}
    old, new, raw = root / "old", root / "new", root / "raw.bin"
    scratch_new, scratch_raw = root / "new-not-durable", root / "raw-fsync.bin"

    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("write/old", "old", {"phase": "write", "data": str(old)}),
        ("write/new", "new", {"phase": "write", "data": str(new), "durable": True}),
        ("write/new-nd", "new", {"phase": "write", "data": str(scratch_new), "durable": False}),
        ("raw-write", "raw", {"phase": "raw-write", "data": str(raw), "fsync": False}),
        ("raw-write-fsync", "raw", {"phase": "raw-write", "data": str(scratch_raw), "fsync": True}),
    ]
    log(f"{name}: {workload.count:,} records of {workload.size:,} bytes, {ctx.runs} runs")
    # Round 0 is a warm-up that is not counted: on a virtual machine that hands memory back
    # to its host, the first use of fresh page-cache pages can cost more than the write.
    # Each write then reuses the pages its previous round frees: the phase removes the old
    # output itself right before its timed region, after write-back (os.sync) has finished.
    for run in range(ctx.runs + 1):
        for key, system, spec in writes:
            os.sync()
            run_phase(ctx, f"{name}/{key}", system, {**base, **spec}, keep=run > 0)
        os.sync()
        log(f"{name}: write round {run}/{ctx.runs} done")
    remove(scratch_new)
    remove(scratch_raw)

    warm([old, new, raw])
    groups: list[list[tuple[str, str, dict[str, Any]]]] = [
        [
            ("random/old", "old", {"phase": "random", "data": str(old)}),
            ("random/new", "new", {"phase": "random", "data": str(new)}),
            ("raw-pread", "raw", {"phase": "raw-pread", "data": str(raw)}),
        ],
        [
            ("sequential/old", "old", {"phase": "sequential", "data": str(old)}),
            ("sequential/new", "new", {"phase": "sequential", "data": str(new)}),
            (
                "sequential/new-noverify",
                "new",
                {"phase": "sequential", "data": str(new), "verify": False},
            ),
            ("raw-readinto", "raw", {"phase": "raw-readinto", "data": str(raw)}),
        ],
        [
            ("shuffled/old", "old", {"phase": "shuffled", "data": str(old)}),
            ("shuffled/new", "new", {"phase": "shuffled", "data": str(new)}),
        ],
    ]
    for group in groups:  # again round 0 is an uncounted warm-up
        for run in range(ctx.runs + 1):
            for key, system, spec in group:
                run_phase(ctx, f"{name}/{key}", system, {**base, **spec}, keep=run > 0)
    log(f"{name}: done")


def bench_open(ctx: Context, big: int) -> None:
    root = ctx.workdir / "open"
    root.mkdir(parents=True, exist_ok=True)
    pool = root / "pool.bin"
    if not pool.exists() or pool.stat().st_size != POOL_BYTES:
        write_pool(pool, seed=3)
    datasets = [("open/small", OPEN_SMALL), ("open/big", big)]
    for key, count in datasets:
        data = root / f"records-{count}"
        log(f"open: preparing {count:,} records of {OPEN_RECORD_SIZE} bytes at {data}")
        run_phase(
            ctx,
            f"{key}-prepare",
            "new",
            {
                "phase": "prepare-open",
                "pool": str(pool),
                "data": str(data),
                "count": count,
                "size": OPEN_RECORD_SIZE,
            },
        )
    warm([root / f"records-{count}" for _, count in datasets])
    for _ in range(ctx.runs):
        for key, count in datasets:
            run_phase(
                ctx,
                key,
                "new",
                {
                    "phase": "open",
                    "data": str(root / f"records-{count}"),
                    "count": count,
                    "budget_s": 3.0,
                    "min_reps": 15,
                    "max_reps": 301,
                },
            )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the scale (and 1M records for the opening time)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write every raw sample here as JSON")
    parser.add_argument("--runs", type=int, default=3, help="runs per number (median)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"scratch directory on local disk (default {DEFAULT_WORKDIR})",
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=DEFAULT_VENV,
        help=f"virtual environment of splitdataloader {LEGACY_VERSION}",
    )
    parser.add_argument(
        "--only",
        choices=["W1", "W2", "open"],
        action="append",
        help="run only these parts (repeatable); default: all",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the installed package itself, not a copy of it taken at the start",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the W1/W2 datasets (the opening-time ones are always kept)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    command = shlex.join(["python", *sys.argv]) if sys.argv else "python benchmarks/run.py"
    legacy_python = ensure_legacy_venv(args.venv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        new = prepare_new_library(args.workdir, snapshot=not args.live)
    except BenchmarkRunError as failure:
        log(f"FAILED: {failure}")
        return 1
    ctx = Context(legacy_python, sys.executable, new, args.workdir, args.runs)
    workloads = quick_scale() if args.quick else full_scale()
    parts = set(args.only or ["W1", "W2", "open"])
    big_open = 1_000_000 if args.quick else 10_000_000
    try:
        for workload in workloads:
            if workload.name in parts:
                bench_workload(ctx, workload)
                if not args.keep_data:
                    remove(ctx.workdir / workload.name)
        if "open" in parts:
            bench_open(ctx, big_open)
    except BenchmarkRunError as failure:
        log(f"FAILED: {failure}")
        return 1
    elapsed = time.perf_counter() - started
    text = report.render(
        report.ReportInput(
            samples=dict(ctx.samples),
            workloads=[w for w in workloads if w.name in parts],
            open_counts=(OPEN_SMALL, big_open) if "open" in parts else None,
            command=command,
            elapsed_s=elapsed,
            runs=args.runs,
            workdir=ctx.workdir,
            legacy_python=legacy_python,
            new_lib=f"`{new.source_dir}` (sha256 of its .py files {new.fingerprint}"
            + (", run from a copy taken at the start)" if new.pythonpath else ")"),
            durable_default=new.durable_default,
        )
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(ctx.samples, indent=1), encoding="utf-8")
    log(f"finished in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
