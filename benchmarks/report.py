"""Markdown report of a benchmark run: machine, command, results against targets, raw limits.

Every figure is the median over the runs of one phase. Rates are in records/s and MB/s
(1 MB = 10^6 bytes); peak memory is ``VmHWM`` in MB; ratios are new / 0.0.1 and new / the
raw limit that bounds the phase (random reads: the ``os.pread`` loop; full passes: the
``readinto`` loop; writes: the single-file write with the same durability).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads import BINS, WARM_PASSES, Workload

Sample = dict[str, Any]
MEMORY_SLACK_MB = 64.0


@dataclass(frozen=True)
class ReportInput:
    samples: dict[str, list[Sample]]
    workloads: list[Workload]
    open_counts: tuple[int, int] | None
    command: str
    elapsed_s: float
    runs: int
    workdir: Path
    legacy_python: str
    new_lib: str
    durable_default: bool


@dataclass(frozen=True)
class Target:
    text: str
    ok: bool | None  # None: not measured

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("**pass**" if self.ok else "**FAIL**")


@dataclass(frozen=True)
class Rates:
    records: float
    mb: float


def median(
    samples: dict[str, list[Sample]], key: str, value: Callable[[Sample], float]
) -> float | None:
    runs = samples.get(key)
    return statistics.median(value(s) for s in runs) if runs else None


def rates(samples: dict[str, list[Sample]], key: str) -> Rates | None:
    records = median(samples, key, lambda s: s["records"] / s["seconds"])
    mb = median(samples, key, lambda s: s["bytes"] / s["seconds"] / 1e6)
    return None if records is None or mb is None else Rates(records, mb)


def fmt_rate(value: Rates | None) -> str:
    if value is None:
        return "-"
    return f"{value.records:,.0f} rec/s · {value.mb:,.1f} MB/s"


def fmt_ratio(new: float | None, base: float | None, percent: bool = False) -> str:
    if new is None or base is None or base == 0:
        return "-"
    return f"{100 * new / base:.0f}%" if percent else f"{new / base:.2f}x"


def at_least(value: float | None, base: float | None, factor: float) -> bool | None:
    if value is None or base is None:
        return None
    return value >= factor * base


def both(*checks: bool | None) -> bool | None:
    return None if any(c is None for c in checks) else all(checks)


def rate_row(
    label: str,
    old: Rates | None,
    new: Rates | None,
    *,
    raw_label: str,
    raw: Rates | None,
    target: Target | None,
) -> list[str]:
    return [
        label,
        fmt_rate(old),
        fmt_rate(new),
        fmt_ratio(new.mb if new else None, old.mb if old else None),
        f"{raw_label}: {fmt_rate(raw)}" if raw_label else "-",
        fmt_ratio(new.mb if new else None, raw.mb if raw else None, percent=True),
        target.text if target else "",
        target.verdict if target else "",
    ]


def workload_rows(data: ReportInput, w: Workload) -> list[list[str]]:
    s = data.samples
    n = w.name

    def r(key: str) -> Rates | None:
        return rates(s, f"{n}/{key}")

    def mb(rate: Rates | None) -> float | None:
        return rate.mb if rate else None

    old_w, raw_w, raw_wf = r("write/old"), r("raw-write"), r("raw-write-fsync")
    rows: list[list[str]] = []
    for durable, key, raw_label, raw in (
        (True, "write/new", "1 file + fsync", raw_wf),
        (False, "write/new-nd", "1 file, no fsync", raw_w),
    ):
        new_w = r(key)
        default = " (the default)" if durable == data.durable_default else ""
        label = f"write, durable={durable}{default}"
        if n == "W1":
            target = Target("≥ 5x 0.0.1 rec/s", at_least(mb(new_w), mb(old_w), 5.0))
        else:
            target = Target(
                "≥ 0.9x 0.0.1 MB/s and ≥ 50% of 1-file write",
                both(at_least(mb(new_w), mb(old_w), 0.9), at_least(mb(new_w), mb(raw), 0.5)),
            )
        rows.append(
            rate_row(f"{n} {label}", old_w, new_w, raw_label=raw_label, raw=raw, target=target)
        )

    old_r, new_r, pread = r("random/old"), r("random/new"), r("raw-pread")
    share = 0.75 if n == "W1" else 0.90
    rows.append(
        rate_row(
            f"{n} random `loader[i]` ({w.random_reads:,} reads)",
            old_r,
            new_r,
            raw_label="pread loop",
            raw=pread,
            target=Target(f"≥ {share:.0%} of pread loop", at_least(mb(new_r), mb(pread), share)),
        )
    )

    readinto = r("raw-readinto")
    old_s, new_s, new_nv = r("sequential/old"), r("sequential/new"), r("sequential/new-noverify")
    if n == "W1":
        seq_target = Target("≥ 2x 0.0.1", at_least(mb(new_s), mb(old_s), 2.0))
        nv_target = None
    else:
        seq_target = Target("≥ 70% of readinto", at_least(mb(new_s), mb(readinto), 0.70))
        nv_target = Target("≥ 90% of readinto", at_least(mb(new_nv), mb(readinto), 0.90))
    rows.append(
        rate_row(
            f"{n} sequential `iterate_binwise()`",
            old_s,
            new_s,
            raw_label="readinto",
            raw=readinto,
            target=seq_target,
        )
    )
    rows.append(
        rate_row(
            f"{n} sequential, verify=False",
            old_s,
            new_nv,
            raw_label="readinto",
            raw=readinto,
            target=nv_target,
        )
    )

    old_x, new_x = r("shuffled/old"), r("shuffled/new")
    shuf_target = Target("≥ 2x 0.0.1", at_least(mb(new_x), mb(old_x), 2.0)) if n == "W1" else None
    rows.append(
        rate_row(
            f"{n} shuffled `iterate_binwise(shuffle=True)`",
            old_x,
            new_x,
            raw_label="readinto",
            raw=readinto,
            target=shuf_target,
        )
    )

    for label, old_key, new_key, raw_label, raw_key in (
        ("peak memory, write", "write/old", "write/new", "1-file write", "raw-write"),
        ("peak memory, sequential", "sequential/old", "sequential/new", "readinto", "raw-readinto"),
        (
            "peak memory, sequential verify=False",
            "sequential/old",
            "sequential/new-noverify",
            "readinto",
            "raw-readinto",
        ),
    ):
        rows.append(
            memory_row(
                f"{n} {label}",
                s,
                old_key=f"{n}/{old_key}",
                new_key=f"{n}/{new_key}",
                raw_label=raw_label,
                raw_key=f"{n}/{raw_key}",
            )
        )
    return rows


def memory_row(
    label: str,
    s: dict[str, list[Sample]],
    *,
    old_key: str,
    new_key: str,
    raw_label: str,
    raw_key: str,
) -> list[str]:
    def peak(key: str) -> float | None:
        return median(s, key, lambda x: x["vmhwm"] / 1e6)

    old, new, raw = peak(old_key), peak(new_key), peak(raw_key)
    ok = None if old is None or new is None else new <= old + MEMORY_SLACK_MB
    delta = "" if old is None or new is None else f" (Δ {new - old:+.1f} MB)"

    def mem(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} MB"

    return [
        label,
        mem(old),
        mem(new),
        fmt_ratio(new, old),
        f"{raw_label}: {mem(raw)}",
        "-",
        f"≤ 0.0.1 + {MEMORY_SLACK_MB:.0f} MB{delta}",
        Target("", ok).verdict,
    ]


def open_rows(data: ReportInput) -> list[list[str]]:
    if data.open_counts is None:
        return []
    small_n, big_n = data.open_counts
    small = median(data.samples, "open/small", lambda x: x["seconds"] * 1e3)
    big = median(data.samples, "open/big", lambda x: x["seconds"] * 1e3)
    target = Target(
        f"≤ 2x open {small_n:,} ({fmt_ratio(big, small)})",
        at_least(None if small is None else 2 * small, big, 1.0),
    )

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    return [
        [f"open + `len()`, {small_n:,} records", "-", ms(small), "-", "-", "-", "", ""],
        [
            f"open + `len()`, {big_n:,} records",
            "-",
            ms(big),
            "-",
            "-",
            "-",
            target.text,
            target.verdict,
        ],
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def raw_rows(data: ReportInput) -> list[list[str]]:
    rows = []
    for w in data.workloads:
        for key, label in (
            ("raw-write", "buffered write of all records to 1 file"),
            ("raw-write-fsync", "the same + fsync"),
            ("raw-pread", f"`os.pread` loop, {w.random_reads:,} random records"),
            ("raw-readinto", "`readinto` of the whole file, reused 1 MiB buffer"),
        ):
            rows.append([w.name, label, fmt_rate(rates(data.samples, f"{w.name}/{key}"))])
    return rows


def spread_rows(data: ReportInput) -> list[list[str]]:
    rows = []
    for key, runs in data.samples.items():
        if key.endswith("-prepare"):
            continue
        times = sorted(s["seconds"] for s in runs)
        rows.append(
            [
                f"`{key}`",
                " · ".join(f"{t:.4f}" for t in (s["seconds"] for s in runs)),
                f"{statistics.median(times):.4f}",
                f"{times[-1] / times[0]:.2f}" if times[0] > 0 else "-",
            ]
        )
    return rows


def first_line_with(path: str, prefix: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def filesystem_of(path: Path) -> str:
    best, found = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mountpoint, fstype = line.split()[:3]
                if str(path).startswith(mountpoint) and len(mountpoint) > len(best):
                    best, found = mountpoint, f"{fstype} on {device} (mounted at {mountpoint})"
    except OSError:
        pass
    return found


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(data: ReportInput) -> list[str]:
    mem_kb = first_line_with("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "?"
    legacy = subprocess.run(
        [data.legacy_python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    deps = ", ".join(f"{p} {version_of(p)}" for p in ("numpy", "fsspec", "xxhash", "pluggy"))
    return [
        f"- CPU: {first_line_with('/proc/cpuinfo', 'model name')}; "
        f"{os.cpu_count()} cores ({usable} usable)",
        f"- RAM: {ram}; kernel {platform.release()}",
        f"- Scratch directory: `{data.workdir}`, {filesystem_of(data.workdir.resolve())}",
        f"- Python (this package, raw limits): {sys.version.split()[0]} `{sys.executable}`",
        f"- Python (0.0.1): {legacy.split()[0] if legacy else '?'} `{data.legacy_python}`",
        f"- splitdataloader under test: {version_of('splitdataloader')} from {data.new_lib}; "
        "baseline: splitdataloader 0.0.1 from PyPI",
        f"- Dependencies of the package under test: {deps}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"the run took {data.elapsed_s / 60:.1f} min",
    ]


def notes(data: ReportInput) -> list[str]:
    reads = ", ".join(f"{w.random_reads:,} for {w.name}" for w in data.workloads)
    return [
        f"- Each figure is the median of {data.runs} runs; every run of every phase is a fresh "
        f"process. Bins: {BINS}. Data: local disk, page cache warm; `os.sync()` between "
        "phases, untimed.",
        "- Every phase gets one extra, uncounted warm-up round first, and the data files are "
        f"read {WARM_PASSES} times before the read phases: on this virtual machine memory that "
        "the guest frees goes back to the host, and the first touch of a page costs far more "
        "than a copy; the kernel's LRU also slows the first few reads of a cached page.",
        "- Records are windows of a seeded, mildly compressible 16 MiB pool (random bytes, a "
        "third of the 64-byte blocks replaced by runs of one byte), passed to the writers as "
        "zero-copy `memoryview`s; the write phase's peak memory therefore includes that pool "
        "for both systems.",
        "- Only the work loop is timed. After it, each phase fingerprints every record it "
        "read (crc32, a second untimed pass) and compares with the expected ones; writes are "
        "checked by `len()` and a sample of 200 records read back. Any mismatch stops the run.",
        f"- Random reads: {reads} (fewer for the 1 MiB records so the phase stays short); "
        "the same seeded indices for 0.0.1, this package and the pread loop.",
        "- 0.0.1's `iterate_binwise(shuffle=True)` takes no seed (it uses the global `random`); "
        "this package is given `seed=1234`.",
        "- 0.0.1 never fsyncs. This package is measured with `durable=True` against a "
        "single-file write that ends in an fsync, and with `durable=False` against the plain "
        f"single-file write; its default is `durable={data.durable_default}`.",
        "- The `readinto` limit reads into a page-aligned buffer: on this CPU the kernel's "
        "copy into a buffer that starts 1 to 31 bytes past a page boundary (where a fresh "
        "1 MiB `bytearray` starts) is about 6x slower.",
        "- Ratios compare MB/s (the same as records/s within a workload). Opening time is only "
        "measured for this package: median of many `SplitDataLoader(path)` + `len()` calls "
        "per run, datasets of 16-byte records written by this package.",
    ]


def render(data: ReportInput) -> str:
    header = ["phase", "0.0.1", "new", "new / 0.0.1", "raw limit", "new / raw", "target", "result"]
    rows: list[list[str]] = []
    for workload in data.workloads:
        rows += workload_rows(data, workload)
    rows += open_rows(data)
    verdicts = [row[-1] for row in rows]
    summary = f"{verdicts.count('**pass**')} targets pass, {verdicts.count('**FAIL**')} fail."
    scale = ", ".join(f"{w.name} = {w.count:,} records of {w.size:,} B" for w in data.workloads)
    lines = [
        "# splitdataloader benchmark: this package vs 0.0.1 vs raw file I/O",
        "",
        f"Command: `{data.command}`",
        "",
        "## Machine",
        "",
        *machine_lines(data),
        "",
        f"## Results ({scale})",
        "",
        *table(header, rows),
        "",
        summary,
        "",
        "## Raw limits (same bytes, one file)",
        "",
        *table(["workload", "limit", "rate"], raw_rows(data)),
        "",
        "## Notes",
        "",
        *notes(data),
        "",
        "## Every run (seconds of the timed loop; opening: median per run)",
        "",
        *table(["phase", "runs", "median", "max / min"], spread_rows(data)),
        "",
    ]
    return "\n".join(lines)
