"""Run the reliability trials at scale and write their figures into docs/reliability.md.

    python benchmarks/reliability.py            # the published scale, 10-20 minutes
    python benchmarks/reliability.py --quick    # a tenth of it, a couple of minutes
    python benchmarks/reliability.py --out -    # print the table instead of writing it

It runs the same trials as the reliability tests (``tests/reliability_*.py``), with more
of them: corruption of every kind of file on local disk, in memory and on an S3 server
(moto, started here on a loopback port), writers killed with SIGKILL at every storage
operation and at random times, hostile manifests, fuzzing of the parsers, writers and
readers at once, and a soak of random reads. It exits with 1 if any trial found a
property broken, and writes the table between the ``figures`` markers of the report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

from fuzz_targets import TARGETS  # noqa: E402
from reliability_concurrency import run_concurrency  # noqa: E402
from reliability_corruption import (  # noqa: E402
    CorruptionStats,
    every_file_and_damage,
    run_trials,
)
from reliability_crash import CrashStats, run_kills  # noqa: E402
from reliability_hostile import run_cases  # noqa: E402
from reliability_kit import WRITERS, read_out  # noqa: E402
from reliability_soak import soak, write_soak_dataset  # noqa: E402
from s3_server import start_moto  # noqa: E402

import splitdataloader  # noqa: E402

BUCKET = "reliability"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.failures: list[str] = []

    def row(self, area: str, what: str, figure: str) -> None:
        self.rows.append((area, what, figure))
        print(f"{area:<12} {what:<62} {figure}", flush=True)

    def failed(self, area: str, failures: list[str]) -> None:
        self.failures += [f"{area}: {failure}" for failure in failures]


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = run()
    return result, time.monotonic() - started


def corruption(report: Report, scratch: str, scale: float, with_s3: bool) -> None:
    total = CorruptionStats()
    plans = [("local", scratch, int(1000 * scale)), ("memory", "memory://rel", int(1000 * scale))]
    if with_s3:
        plans.append(("s3", f"s3://{BUCKET}/corruption-{uuid.uuid4().hex}", int(25 * scale) or 2))
    for backend, root, trials in plans:
        for name, write in WRITERS.items():
            if backend == "s3" and name not in ("v2", "aesgcm", "legacy"):
                continue
            reference = write(f"{root}/{name}-reference", name)
            stats = run_trials(
                reference, f"{root}/{name}-scratch", trials, 7, every_file_and_damage
            )
            total.add(stats)
            report.failed("corruption", stats.failures)
    digits = manifest_digits(scratch)
    report.row(
        "corruption", "files damaged at random (one damage per trial), trials", f"{total.trials:,}"
    )
    report.row(
        "corruption", "  caught: a read raised a specific error naming a file", f"{total.caught:,}"
    )
    report.row(
        "corruption", "  harmless: every read returned the right bytes", f"{total.harmless:,}"
    )
    report.row(
        "corruption",
        "  0.0.1 damage its format cannot reveal (read as the files say)",
        f"{total.undetectable:,}",
    )
    report.row(
        "corruption",
        "reads checked (records and whole passes)",
        f"{total.reads.correct + total.reads.errors:,}",
    )
    report.row(
        "corruption",
        "manifest digits replaced by every other digit, caught",
        f"{digits[1]:,} of {digits[0]:,}",
    )
    report.row("corruption", "wrong records returned", f"{len(total.failures) + digits[2]}")


def manifest_digits(scratch: str) -> tuple[int, int, int]:
    """Every digit of a manifest replaced by every other digit: (cases, caught, failures)."""
    reference = WRITERS["v2"](f"{scratch}/digits-reference", "v2")
    original = Path(reference.url, "manifest.json").read_bytes()
    cases = caught = failed = 0
    target = Path(scratch, "digits")
    import shutil  # noqa: PLC0415

    shutil.copytree(reference.url, target)
    for match in re.finditer(rb"[0-9]", original):
        at = match.start()
        for digit in b"0123456789":
            if digit == original[at]:
                continue
            (target / "manifest.json").write_bytes(
                original[:at] + bytes([digit]) + original[at + 1 :]
            )
            tally = read_out(reference, str(target), f"digit {at}")
            cases += 1
            caught += tally.errors > 0
            failed += len(tally.failures)
    return cases, caught, failed


def crashes(report: Report, scratch: str, scale: float, with_s3: bool) -> None:
    local = run_kills(
        lambda k: f"{scratch}/crash/ds-{k}", scratch, points=None, timed=int(300 * scale), seed=7
    )
    report.failed("crash", local.failures)
    total = CrashStats()
    total.add(local)
    report.row(
        "crash",
        "local disk: SIGKILL at every storage operation + at random times",
        f"{local.kills:,}",
    )
    if with_s3:
        prefix = uuid.uuid4().hex
        remote = run_kills(
            lambda k: f"s3://{BUCKET}/crash-{prefix}/ds-{k}",
            scratch,
            points=max(4, int(60 * scale)),
            timed=max(1, int(15 * scale)),
            seed=8,
        )
        report.failed("crash", remote.failures)
        total.add(remote)
        report.row(
            "crash",
            "S3 server: SIGKILL at sampled storage operations + random times",
            f"{remote.kills:,}",
        )
    report.row("crash", "  kills while a manifest write was in flight", f"{total.in_commit:,}")
    report.row(
        "crash",
        "  datasets that opened with exactly the last commit's records",
        f"{total.kills + total.finished - len(total.failures):,}",
    )
    report.row("crash", "  orphan files removed by repair", f"{total.orphans_removed:,}")
    report.row("crash", "  records checked after the kills", f"{total.records_checked:,}")
    report.row("crash", "committed records lost", f"{len(total.failures)}")


def hostile(report: Report, scratch: str, scale: float) -> None:
    stats = run_cases(Path(scratch))
    report.failed("hostile", stats.failures)
    report.row(
        "hostile",
        "hostile manifests (names, sizes, bombs, codecs), rejected",
        f"{stats.rejected} of {stats.cases}",
    )
    corpus = sorted((TESTS / "fuzz_corpus").glob("*/*"))
    for path in corpus:
        try:
            TARGETS[path.parent.name](path.read_bytes())
        except AssertionError as err:
            report.failed("fuzz corpus", [f"{path.name}: {err}"])
    report.row("hostile", "kept fuzz cases replayed", f"{len(corpus)}")
    executions = mutation_fuzz(int(20_000 * scale), report)
    report.row(
        "hostile", "random mutations of manifest, index and segment seeds run", f"{executions:,}"
    )
    try:
        import atheris  # noqa: F401, PLC0415
    except ImportError:
        report.row("hostile", "coverage-guided fuzzing (atheris)", "not installed")
        return
    seconds = max(5, int(60 * scale))
    for target in TARGETS:
        done = subprocess.run(
            [
                sys.executable,
                str(TESTS / "fuzz_parsers.py"),
                target,
                f"-max_total_time={seconds}",
                "-print_final_stats=1",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        found = re.search(r"stat::number_of_executed_units: (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            report.failed("atheris", [f"{target}: {done.stderr[-2000:]}"])
            continue
        report.row(
            "hostile",
            f"atheris executions of the {target} parser ({seconds} s)",
            f"{int(found.group(1)):,}",
        )


def mutation_fuzz(rounds: int, report: Report) -> int:
    import random  # noqa: PLC0415

    rng = random.Random(9)
    seeds = {
        target: (TESTS / "fuzz_corpus" / target / name).read_bytes()
        for target, name in (
            ("manifest", "seed-intact.json"),
            ("index", "seed-intact.idx"),
            ("frames", "seed-intact.seg"),
        )
    }
    executions = 0
    for _ in range(rounds):
        for target, seed in seeds.items():
            data = bytearray(seed)
            for _ in range(rng.randrange(1, 5)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.2:
                data = data[: rng.randrange(len(data) + 1)]
            try:
                TARGETS[target](bytes(data))
            except AssertionError as err:
                report.failed("fuzz", [f"{target}: {err}"])
            executions += 1
    return executions


def concurrency(report: Report, scratch: str, scale: float, with_s3: bool) -> None:
    commits = max(5, int(40 * scale))
    stats, conflicts = run_concurrency(
        f"{scratch}/concurrent",
        writers=2,
        commits=commits,
        reader_threads=4,
        reader_processes=2,
        reader_seconds=6.0,
    )
    report.failed("concurrency", stats.failures)
    lines = [(stats, conflicts, "local disk")]
    if with_s3:
        remote, remote_conflicts = run_concurrency(
            f"s3://{BUCKET}/concurrent-{uuid.uuid4().hex}/ds",
            writers=2,
            commits=max(3, int(10 * scale)),
            reader_threads=3,
            reader_processes=2,
            reader_seconds=8.0,
        )
        report.failed("concurrency", remote.failures)
        lines.append((remote, remote_conflicts, "S3 server"))
    for found, retried, where in lines:
        report.row(
            "concurrency",
            f"{where}: snapshots read during concurrent appends",
            f"{found.snapshots:,}",
        )
        report.row(
            "concurrency",
            f"{where}: conflicts reported and retried, commits lost",
            f"{retried}, 0" if not found.failures else f"{retried}, see failures",
        )


def load(report: Report, scratch: str, scale: float, with_s3: bool) -> None:
    url = f"{scratch}/soak"
    write_soak_dataset(url)
    seconds = max(3.0, 60 * scale)
    stats = soak(url, seconds, threads=8, processes=3)
    report.failed("load", stats.failures)
    report.row(
        "load",
        f"local disk: records checked, 8 threads x 4 processes, {seconds:.0f} s",
        f"{stats.records_checked:,}",
    )
    report.row(
        "load",
        "  largest growth of a process's resident memory",
        f"{max(stats.growth) / 2**20:.1f} MiB",
    )
    if with_s3:
        remote_url = f"s3://{BUCKET}/soak-{uuid.uuid4().hex}/ds"
        write_soak_dataset(remote_url)
        remote = soak(remote_url, max(3.0, 20 * scale), threads=4, processes=2)
        report.failed("load", remote.failures)
        report.row(
            "load",
            f"S3 server: records checked, 4 threads x 3 processes, {max(3.0, 20 * scale):.0f} s",
            f"{remote.records_checked:,}",
        )
        report.row(
            "load",
            "  largest growth of a process's resident memory",
            f"{max(remote.growth) / 2**20:.1f} MiB",
        )


def table(report: Report, command: str, seconds: float) -> str:
    lines = [
        START,
        f"Produced by `{command}` in {seconds / 60:.1f} minutes on {platform.machine()} "
        f"({os.cpu_count()} cores), Python {platform.python_version()}, splitdataloader "
        f"{splitdataloader.__version__}, {datetime.date.today().isoformat()}.",
        "",
        "| area | what | figure |",
        "|---|---|---:|",
        *(f"| {area} | {what.strip()} | {figure} |" for area, what, figure in report.rows),
        "| all | properties broken (wrong records, lost commits, leaks, escapes) | "
        f"{len(report.failures)} |",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the trials")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 server")
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "reliability.md"),
        help="report to update, or - to print",
    )
    options = parser.parse_args()
    scale = 0.1 if options.quick else 1.0
    command = "python benchmarks/reliability.py" + (" --quick" if options.quick else "")
    server = None
    if not options.no_s3:
        server = start_moto()
        os.environ.update(server.environment())
        server.create_bucket(BUCKET)
    report = Report()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sdl-reliability-") as scratch:
            for step in (corruption, crashes, concurrency, load):
                os.makedirs(f"{scratch}/{step.__name__}")
                step(report, f"{scratch}/{step.__name__}", scale, server is not None)
            os.makedirs(f"{scratch}/hostile")
            hostile(report, f"{scratch}/hostile", scale)
    finally:
        if server is not None:
            server.stop()
    text = table(report, command, time.monotonic() - started)
    for failure in report.failures[:50]:
        print("FAILED", failure, file=sys.stderr)
    if options.out == "-":
        print(text)
    else:
        path = Path(options.out)
        document = path.read_text()
        if START not in document or END not in document:
            raise SystemExit(f"{path} has no {START} ... {END} section to fill")
        head, rest = document.split(START, 1)
        path.write_text(head + text + rest.split(END, 1)[1])
        print(f"wrote {path} ({shlex.quote(command)})")
    raise SystemExit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
