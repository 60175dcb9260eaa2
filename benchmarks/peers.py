"""This package against its peers, each in its own virtual environment, on the same records.

Usage::

    python benchmarks/peers.py                # full scale; writes results/peers.md
    python benchmarks/peers.py --quick        # a tenth of the scale; prints only
    python benchmarks/peers.py --only this --only grain --no-s3

Systems, each driven through its own public API with its documented defaults and no
compression, by a small script in ``peers/`` run with the interpreter of its own virtual
environment (created once under ``~/.cache/splitdataloader-bench/venvs`` with the Python
that runs this command, and reused while its install recipe is unchanged):

* this package, from a copy of the working tree taken at the start;
* splitdataloader 0.0.1 (the environment of ``run.py``);
* MosaicML Streaming, LitData, WebDataset, and ArrayRecord read through Grain.

Workloads (``workloads.py``): W1 = 200,000 records of 1 KiB and W2 = 2,000 records of
1 MiB, seeded and mildly compressible. For each system and workload: the write, bytes on
disk, random access (where the system has it), a sequential and a shuffled pass, peak
memory of the write and of the sequential pass, and the faster paths some systems have
(batch reads, a faster setting) as rows of their own; then, with the same bytes, the raw
limits (buffered write to one file, an ``os.pread`` loop, ``readinto``, ``memcpy``,
``bytes()`` of every record). Then, for the systems that read from S3, the same datasets
are served by ``rclone serve s3`` through a proxy that adds 20 ms to every request, and
the sequential pass and the random reads run against it, with the requests of each timed
loop counted by the proxy (whole-object GETs, ranged GETs, bytes).

Every run of every read checks every record it read against crc32 fingerprints of the
input (a second, untimed pass) before its number is kept, and the run stops at the first
wrong byte. Every figure is the median of up to ``--runs`` runs (fewer once a phase's runs
have taken ``--repeat-budget`` seconds); a pass stops after ``--pass-budget`` seconds and
reports the rate of what it read by then (marked in the report). The Markdown report goes
to stdout and ``--out``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peers_report
from run import DEFAULT_VENV as LEGACY_VENV
from run import clean_env, ensure_legacy_venv, warm
from s3 import KEY, SECRET, Child, start_rclone
from workloads import Workload, full_scale, quick_scale, write_pool

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DRIVERS = HERE / "peers"
DEFAULT_OUT = HERE / "results" / "peers.md"
DEFAULT_WORKDIR = Path("/tmp/splitdataloader-bench/peers")
DEFAULT_VENVS = Path.home() / ".cache" / "splitdataloader-bench" / "venvs"
LATENCY_S = 0.020
S3_READS = {"W1": 400, "W2": 100}  # random reads per S3 run (--quick: a quarter)
DRIVER_TIMEOUT_S = 1800


class BenchmarkRunError(RuntimeError):
    """A driver failed (wrong bytes included), or an environment could not be built."""


@dataclass(frozen=True)
class System:
    """One system under test: how to install it, drive it, and what it can do."""

    key: str  # also its bucket on the S3 server
    label: str
    driver: str
    venv: str | None  # folder under --venvs; None: run.py's 0.0.1 environment
    installs: tuple[tuple[str, ...], ...] = ()  # pip install arguments, one call each
    removes: tuple[str, ...] = ()  # pip uninstall after the installs
    random: bool = True
    random_batch: str | None = None  # the batch read path, if it has one
    random_tuned: str | None = None  # a faster documented setting for random reads
    sequential_batch: str | None = None
    s3: str | None = None  # how it reads from S3; None: local files only


SYSTEMS = (
    System(
        "this",
        "this package",
        "drive_sdl.py",
        "splitdataloader",
        installs=(("setuptools>=69", "wheel"), (f"{REPO}[s3]",)),
        random_batch="`get_many` (batches of 256 records or 64 MiB)",
        s3="passes: one GET per segment, with read-ahead; `loader[i]`: one ranged GET per "
        "record; `get_many`: merged ranged GETs, issued concurrently",
    ),
    System("v001", "0.0.1", "drive_sdl.py", None),
    System(
        "mds",
        "MosaicML Streaming",
        "drive_mds.py",
        "mosaicml-streaming",
        # `import streaming` imports torchvision, which needs the torch it was built for.
        installs=(("torch==2.14.1", "torchvision==0.29.1", "mosaicml-streaming==0.13.0"),),
        s3="every shard a read touches is downloaded whole into the local cache first",
    ),
    System(
        "litdata",
        "LitData",
        "drive_litdata.py",
        "litdata",
        # litdata never imports torchvision on these paths (checked by the driver), so the
        # CPU torch 2.13.0 and the torchvision release made for it are enough.
        installs=(("torch==2.13.0",), ("litdata==0.2.76", "torchvision==0.28.0", "torch==2.13.0")),
        # Its default chunk downloader, obstore, refuses the local server's plain-http
        # endpoint (and takes no option for it through litdata); without obstore installed,
        # litdata downloads with boto3, its other supported path.
        removes=("obstore",),
        random_tuned="`batch_decode=False`",
        s3="passes: whole chunks downloaded into the local cache (boto3: obstore refuses "
        "a plain-http endpoint); `dataset[i]`: one ranged GET per item",
    ),
    System(
        "wds",
        "WebDataset",
        "drive_wds.py",
        "webdataset",
        installs=(("webdataset==1.0.2",),),
        random=False,
        s3="each shard streamed whole by one GET (`pipe:curl` with SigV4); no random access",
    ),
    System(
        "grain",
        "ArrayRecord + Grain",
        "drive_grain.py",
        "array-record-grain",
        installs=(("array-record==0.8.6", "grain==0.2.18"),),
        random_batch="`__getitems__` (batches of 256 records or 64 MiB)",
        sequential_batch="`__getitems__`, blocks of 1,024 records or 64 MiB",
    ),
)
RAW = System("raw", "raw limit", "drive_raw.py", None)


def log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- environments ------------------------------------------------------------------------------


def pip(python: Path, *arguments: str) -> None:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*command, *arguments], env=clean_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise BenchmarkRunError(f"pip install {' '.join(arguments)} failed:\n{tail}")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_venv(root: Path, system: System) -> Path:
    """The interpreter of the system's environment, built first if missing or outdated."""
    if system.venv is None:
        return Path(sys.executable if system is RAW else ensure_legacy_venv(LEGACY_VENV))
    venv = root / system.venv
    python, marker = venv / "bin" / "python", venv / "bench-recipe.json"
    recipe = {"python": sys.executable, "installs": system.installs, "removes": system.removes}
    recipe = json.loads(json.dumps(recipe))
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == recipe:
        return python
    log(f"building {venv} (pip install {' ; '.join(' '.join(i) for i in system.installs)})")
    started = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for arguments in system.installs:
        pip(python, *arguments)
    if system.removes:
        uninstall = [str(python), "-m", "pip", "uninstall", "--yes", "--quiet", *system.removes]
        subprocess.run(uninstall, env=clean_env(), capture_output=True, check=True)
    marker.write_text(json.dumps(recipe), encoding="utf-8")
    log(f"  {venv}: {folder_size(venv) / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
    return python


def install_snapshot(python: Path, workdir: Path) -> str:
    """Install a copy of this working tree into the package's environment; its hash."""
    source = workdir / "snapshot-src"
    shutil.rmtree(source, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("splitdataloader", "backends"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip(python, "--no-deps", "--no-build-isolation", "--force-reinstall", str(source))
    shutil.rmtree(source, ignore_errors=True)
    import hashlib  # noqa: PLC0415 - only here

    digest = hashlib.sha256()
    for path in sorted((REPO / "splitdataloader").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


# -- running drivers ---------------------------------------------------------------------------


@dataclass
class Bench:
    """Settings of one run, and every result it collected."""

    workdir: Path
    runs: int
    repeat_budget_s: float
    pass_budget_s: float
    s3_reads: dict[str, int]
    pythons: dict[str, Path] = field(default_factory=dict)
    # results[workload][system][phase] = the runs of that phase
    results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = field(default_factory=dict)

    def drive(
        self,
        system: System,
        workload: Workload,
        common: dict[str, Any],
        steps: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """Run ``steps`` (name, step spec) in one fresh process of the system's driver."""
        spec = {
            "common": common,
            "steps": [
                {"repeat": self.runs, "repeat_budget_s": self.repeat_budget_s, **step}
                for _, step in steps
            ],
        }
        command = [str(self.pythons[system.key]), str(DRIVERS / system.driver), json.dumps(spec)]
        scratch = self.workdir / "cwd"
        scratch.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=scratch,
            timeout=DRIVER_TIMEOUT_S,
            check=False,
        )
        names = ", ".join(name for name, _ in steps)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-25:])
            raise BenchmarkRunError(f"{system.label} {workload.name} ({names}) failed:\n{tail}")
        out: list[list[dict[str, Any]]] = json.loads(done.stdout.strip().splitlines()[-1])
        store = self.results.setdefault(workload.name, {}).setdefault(system.key, {})
        for (name, _), runs in zip(steps, out, strict=True):
            store[name] = runs
            rate = runs[0]["records"] / runs[0]["seconds"] if runs[0]["seconds"] else 0
            shown = " · ".join(f"{r['seconds']:.3f}" for r in runs)
            partial = " (partial pass)" if runs[0].get("partial") else ""
            requests = f" {runs[0]['requests']}" if "requests" in runs[0] else ""
            log(f"  {system.key:<8} {name:<18} {shown} s  {rate:,.0f} rec/s{partial}{requests}")


def local_phases(bench: Bench, system: System, workload: Workload, common: dict[str, Any]) -> None:
    data = common["data"]
    bench.drive(system, workload, common, [("write", {"phase": "write"})])
    warm([Path(data)])
    budget = {"budget_s": bench.pass_budget_s}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("sequential", {"phase": "sequential", **budget}),  # first: its peak memory is its own
        ("shuffled", {"phase": "shuffled", **budget}),
    ]
    if system.sequential_batch:
        steps.append(("sequential-batch", {"phase": "sequential", "batch": True, **budget}))
    if system.random:
        steps.append(("random", {"phase": "random"}))
    if system.random_batch:
        steps.append(("random-batch", {"phase": "random", "batch": True}))
    if system.random_tuned:
        steps.append(("random-tuned", {"phase": "random", "batch_decode": False}))
    bench.drive(system, workload, common, steps)


def raw_phases(bench: Bench, workload: Workload, common: dict[str, Any]) -> None:
    raw = dict(common, data=str(bench.workdir / f"raw-{workload.name}.bin"), fsync=False)
    bench.drive(RAW, workload, raw, [("write", {"phase": "raw-write"})])
    warm([Path(raw["data"])])
    steps = [(name, {"phase": name}) for name in ("raw-pread", "raw-readinto", "memcpy")]
    steps.append(("bytes-copy", {"phase": "bytes-copy"}))
    bench.drive(RAW, workload, raw, steps)
    os.unlink(raw["data"])


def start_proxy(upstream: str, served: Path, log_file: Any) -> tuple[Child, str]:
    """The latency proxy with its request counter; its endpoint and control endpoint."""
    command = [
        sys.executable,
        str(DRIVERS / "s3_proxy_child.py"),
        str(REPO / "tests"),
        upstream,
        repr(LATENCY_S),
        str(served),
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True
    )
    lines = [process.stdout.readline().strip() for _ in range(2)] if process.stdout else []
    child = Child("latency proxy", process, lines[0] if lines else "", Path(log_file.name))
    if len(lines) != 2 or not all(line.startswith("http://") for line in lines):
        child.stop()
        raise BenchmarkRunError(f"the proxy did not start: {lines}")
    child.wait_ready()
    return child, lines[1]


def s3_phases(bench: Bench, workload: Workload, served: Path, common: dict[str, Any]) -> None:
    systems = [s for s in SYSTEMS if s.s3 and s.key in bench.pythons]
    if not systems:
        return
    children: list[Child] = []
    logs = bench.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with open(logs / "rclone.log", "a") as rclone_log, open(logs / "proxy.log", "a") as plog:
            rclone = start_rclone(served, rclone_log)
            children.append(rclone)
            proxy, control = start_proxy(rclone.endpoint, served, plog)
            children.append(proxy)
            log(f"S3: rclone at {rclone.endpoint}, 20 ms proxy at {proxy.endpoint}")
            reads = bench.s3_reads[workload.name]
            for system in systems:
                s3 = {
                    "endpoint": proxy.endpoint,
                    "control": control,
                    "key": KEY,
                    "secret": SECRET,
                    "bucket": system.key,
                    "prefix": workload.name,
                    "cache": str(bench.workdir / "s3-cache" / system.key),
                }
                spec = dict(common, data=str(served / system.key / workload.name), s3=s3)
                steps: list[tuple[str, dict[str, Any]]] = [
                    ("s3-sequential", {"phase": "sequential", "budget_s": bench.pass_budget_s})
                ]
                if system.random:
                    steps.append(("s3-random", {"phase": "random", "reads": reads}))
                if system.random_batch:
                    steps.append(
                        ("s3-random-batch", {"phase": "random", "reads": reads, "batch": True})
                    )
                bench.drive(system, workload, spec, steps)
                shutil.rmtree(s3["cache"], ignore_errors=True)
    finally:
        for child in reversed(children):
            child.stop()


def bench_workload(
    bench: Bench, workload: Workload, systems: list[System], s3: bool, keep: bool
) -> None:
    served = bench.workdir / "served"
    pool = bench.workdir / f"pool-{workload.name}.bin"
    write_pool(pool, workload.seed)
    common = {"workload": workload.to_json(), "pool": str(pool)}
    log(f"{workload.name}: {workload.count:,} records of {workload.size:,} bytes")
    for system in systems:
        data = served / system.key / workload.name
        local_phases(bench, system, workload, dict(common, data=str(data)))
        os.sync()
    raw_phases(bench, workload, common)
    if s3:
        s3_phases(bench, workload, served, common)
    if not keep:
        for system in systems:
            shutil.rmtree(served / system.key / workload.name, ignore_errors=True)


# -- the command -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the scale")
    parser.add_argument("--runs", type=int, default=3, help="runs per number (median)")
    parser.add_argument(
        "--repeat-budget",
        type=float,
        default=10.0,
        help="no more runs of a phase once its runs took this many seconds (default 10)",
    )
    parser.add_argument(
        "--pass-budget",
        type=float,
        default=20.0,
        help="a pass stops after this many seconds and reports its rate so far (default 20)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[s.key for s in SYSTEMS],
        help="run only these systems (repeatable; default: all)",
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=["W1", "W2"],
        help="run only these workloads (repeatable; default: both)",
    )
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 phases")
    parser.add_argument(
        "--out", type=Path, help=f"report file (default {DEFAULT_OUT}; --quick: none)"
    )
    parser.add_argument("--json", type=Path, help="also write every raw result here")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch folder")
    parser.add_argument(
        "--venvs", type=Path, default=DEFAULT_VENVS, help=f"environments (default {DEFAULT_VENVS})"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the written datasets")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    systems = [s for s in SYSTEMS if not args.only or s.key in args.only]
    workloads = [
        w
        for w in (quick_scale() if args.quick else full_scale())
        if not args.workload or w.name in args.workload
    ]
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    s3_reads = {k: v // 4 if args.quick else v for k, v in S3_READS.items()}
    bench = Bench(workdir, args.runs, args.repeat_budget, args.pass_budget, s3_reads)
    try:
        for system in [*systems, RAW]:
            bench.pythons[system.key] = ensure_venv(args.venvs, system)
        snapshot = (
            install_snapshot(bench.pythons["this"], workdir) if "this" in bench.pythons else "-"
        )
        setup_s = time.perf_counter() - started
        log(f"environments ready in {setup_s:.0f} s")
        for workload in workloads:
            bench_workload(bench, workload, systems, not args.no_s3, args.keep_data)
    except (BenchmarkRunError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        log(f"FAILED: {error}")
        return 1
    finally:
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    command = shlex.join(["python", "benchmarks/peers.py", *argv])
    text = peers_report.render(
        peers_report.ReportInput(
            results=bench.results,
            systems=[*systems, RAW],
            pythons={k: str(v) for k, v in bench.pythons.items()},
            venvs=args.venvs,
            workloads=workloads,
            command=command,
            elapsed_s=elapsed,
            setup_s=setup_s,
            load=(load_before, os.getloadavg()),
            snapshot=snapshot,
            runs=args.runs,
            pass_budget_s=args.pass_budget,
            repeat_budget_s=args.repeat_budget,
            s3_reads=s3_reads,
            latency_ms=round(LATENCY_S * 1000),
            s3=not args.no_s3,
        )
    )
    print(text)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(bench.results, indent=1), encoding="utf-8")
    log(f"finished in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
