"""The Markdown report of ``peers.py``: one table of rates and ratios per workload.

Rows are measurements, columns are systems. A rate cell is the median over the runs and,
for a peer, its ratio to this package (above 1.00x: the peer is faster); this package's
cell gives its share of the raw limit of that row. Memory and disk cells compare the same
way (above 1.00x: the peer uses more). Rows where a peer is ahead of this package are
listed after each table.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from report import filesystem_of, first_line_with, table
from workloads import Workload

if TYPE_CHECKING:
    from peers import System

Runs = list[dict[str, Any]]
Results = dict[str, dict[str, dict[str, Runs]]]
AHEAD = 1.0  # a peer is ahead when its ratio to this package passes this


@dataclass(frozen=True)
class ReportInput:
    results: Results
    systems: Sequence[System]  # the raw limits last
    pythons: dict[str, str]
    venvs: Path
    workloads: list[Workload]
    command: str
    elapsed_s: float
    setup_s: float
    load: tuple[tuple[float, ...], tuple[float, ...]]
    snapshot: str
    runs: int
    pass_budget_s: float
    repeat_budget_s: float
    s3_reads: dict[str, int]
    latency_ms: int
    s3: bool


@dataclass(frozen=True)
class Row:
    """One measurement: its label, the phase it reads, and how to show it."""

    label: str
    phase: str
    kind: str  # "rate", "memory", "disk", "requests"
    raw: str | None = None  # the raw-limit phase of the row


def rows_of(w: Workload, data: ReportInput) -> list[Row]:
    reads = w.random_reads
    s3_reads = data.s3_reads[w.name]
    at = f"S3 +{data.latency_ms} ms:"
    rows = [
        Row("write", "write", "rate", "write"),
        Row("bytes on disk (share of the records' bytes)", "write", "disk"),
        Row(f"random access `[i]`, {reads:,} reads", "random", "rate", "raw-pread"),
        Row(f"random access, batch path¹, {reads:,} reads", "random-batch", "rate", "raw-pread"),
        Row(
            f"random access, faster setting², {reads:,} reads", "random-tuned", "rate", "raw-pread"
        ),
        Row("sequential pass", "sequential", "rate", "raw-readinto"),
        Row("sequential pass, batch path¹", "sequential-batch", "rate", "raw-readinto"),
        Row("shuffled pass", "shuffled", "rate", "raw-readinto"),
        Row("peak memory, write (MB; imports alone)", "write", "memory"),
        Row("peak memory, sequential pass (MB; imports alone)", "sequential", "memory"),
    ]
    if data.s3:
        rows += [
            Row(f"{at} sequential pass", "s3-sequential", "rate"),
            Row(f"{at} requests of one sequential pass", "s3-sequential", "requests"),
            Row(f"{at} random access `[i]`, {s3_reads:,} reads", "s3-random", "rate"),
            Row(f"{at} requests of the random reads", "s3-random", "requests"),
            Row(f"{at} random access, batch path¹", "s3-random-batch", "rate"),
            Row(f"{at} requests of the batch path", "s3-random-batch", "requests"),
        ]
    return rows


def median(runs: Runs, value: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(value(r) for r in runs)


def number(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


class Table:
    """The cells of one workload's table."""

    def __init__(self, data: ReportInput, w: Workload) -> None:
        self.data = data
        self.w = w
        self.res = data.results.get(w.name, {})
        self.peers = [s for s in data.systems if s.key not in {"this", "raw"}]
        self.ahead: list[str] = []

    def runs(self, system: str, phase: str) -> Runs | None:
        return self.res.get(system, {}).get(phase) or None

    def unit(self, row: Row) -> tuple[str, Callable[[dict[str, Any]], float]]:
        if self.w.size >= 1 << 20:
            return "MB/s", lambda r: r["bytes"] / r["seconds"] / 1e6
        if row.phase.startswith("s3-random"):
            return "rec/s", lambda r: r["records"] / r["seconds"]
        return "k rec/s", lambda r: r["records"] / r["seconds"] / 1e3

    def rate_row(self, row: Row) -> list[str]:
        unit, value = self.unit(row)
        this = self.runs("this", row.phase)
        base = median(this, value) if this else None
        raw = self.runs("raw", row.raw) if row.raw else None
        raw_value = median(raw, value) if raw else None
        cells = []
        ahead = []
        for system in self.data.systems[:-1]:
            runs = self.runs(system.key, row.phase)
            if not runs:
                cells.append("-")
                continue
            x = median(runs, value)
            mark = "†" if any(r.get("partial") for r in runs) else ""
            if system.key == "this":
                share = f" ({100 * x / raw_value:.0f}% of raw)" if raw_value else ""
                cells.append(f"{number(x)}{mark}{share}")
            elif base:
                cells.append(f"{number(x)}{mark} ({x / base:.2f}x)")
                if x / base > AHEAD:
                    ahead.append(f"{system.label} {x / base:.2f}x")
            else:
                cells.append(f"{number(x)}{mark}")
        cells.append(number(raw_value) if raw_value else "-")
        self.note_ahead(row, ahead)
        return [f"{self.w.name} {row.label} ({unit})", *cells]

    def memory_row(self, row: Row) -> list[str]:
        this = self.runs("this", row.phase)
        base = this[0]["vmhwm"] / 1e6 if this else None
        cells, ahead = [], []
        for system in self.data.systems[:-1]:
            runs = self.runs(system.key, row.phase)
            if not runs or "vmhwm_imports" not in runs[0]:
                cells.append("-")
                continue
            peak, imports = runs[0]["vmhwm"] / 1e6, runs[0]["vmhwm_imports"] / 1e6
            text = f"{peak:,.0f} ({imports:,.0f})"
            if system.key != "this" and base:
                text += f" {peak / base:.2f}x"
                if peak / base < 1 / AHEAD:
                    ahead.append(f"{system.label} {peak / base:.2f}x")
            cells.append(text)
        raw = self.runs("raw", "write" if row.phase == "write" else "raw-readinto")
        cells.append(f"{raw[0]['vmhwm'] / 1e6:,.0f}" if raw and "vmhwm" in raw[0] else "-")
        self.note_ahead(row, ahead)
        return [f"{self.w.name} {row.label}", *cells]

    def disk_row(self, row: Row) -> list[str]:
        payload = self.w.total_bytes
        this = self.runs("this", row.phase)
        base = this[0].get("disk") if this else None
        cells, ahead = [], []
        for system in self.data.systems[:-1]:
            runs = self.runs(system.key, row.phase)
            if not runs or "disk" not in runs[0]:
                cells.append("-")
                continue
            disk = runs[0]["disk"]
            files = runs[0]["files"]
            text = f"{disk / 1e6:,.1f} MB ({100 * disk / payload:.1f}%, files: {files:,})"
            cells.append(text)
            if system.key != "this" and base and disk < base:
                ahead.append(f"{system.label} {disk / base:.3f}x")
        cells.append(f"{payload / 1e6:,.1f} MB (the records)")
        self.note_ahead(row, ahead)
        return [f"{self.w.name} {row.label}", *cells]

    def requests_row(self, row: Row) -> list[str]:
        cells = []
        for system in self.data.systems[:-1]:
            runs = self.runs(system.key, row.phase)
            counts = runs[0].get("requests") if runs else None
            if not counts:
                cells.append("-")
                continue
            whole = median(runs, lambda r: r["requests"]["get_whole"])
            ranged = median(runs, lambda r: r["requests"]["get_ranged"])
            other = median(runs, lambda r: r["requests"]["other"])
            fetched = median(runs, lambda r: r["requests"]["bytes"]) / 1e6
            parts = [f"{whole:,.0f} whole", f"{ranged:,.0f} ranged"]
            if other:
                parts.append(f"{other:,.0f} other")
            cells.append(f"{' + '.join(parts)}; {fetched:,.1f} MB")
        return [f"{self.w.name} {row.label}", *cells, "-"]

    def note_ahead(self, row: Row, ahead: list[str]) -> None:
        if ahead:
            self.ahead.append(f"{self.w.name} {row.label}: {', '.join(ahead)}")

    def render(self) -> list[str]:
        header = ["measurement", *(s.label for s in self.data.systems)]
        rows = []
        for row in rows_of(self.w, self.data):
            if not any(self.runs(s.key, row.phase) for s in self.data.systems[:-1]):
                continue
            make = {
                "rate": self.rate_row,
                "memory": self.memory_row,
                "disk": self.disk_row,
                "requests": self.requests_row,
            }[row.kind]
            rows.append(make(row))
        return table(header, rows)


def raw_rows(data: ReportInput) -> list[list[str]]:
    rows = []
    labels = {
        "write": "buffered write of all records to one file",
        "raw-pread": "`os.pread` loop, one record at a time, same random indices",
        "raw-readinto": "`readinto` of that file through a reused page-aligned 1 MiB buffer",
        "memcpy": "`memcpy` of the same bytes into a reused page-aligned 1 MiB buffer",
        "bytes-copy": "`bytes()` of every record (allocate and copy)",
    }
    for w in data.workloads:
        raw = data.results.get(w.name, {}).get("raw", {})
        for phase, label in labels.items():
            if runs := raw.get(phase):
                rec = median(runs, lambda r: r["records"] / r["seconds"])
                mb = median(runs, lambda r: r["bytes"] / r["seconds"] / 1e6)
                rows.append([w.name, label, f"{rec:,.0f} rec/s · {mb:,.1f} MB/s"])
    return rows


def spread_rows(data: ReportInput) -> list[list[str]]:
    rows = []
    for w, systems in data.results.items():
        for system, phases in systems.items():
            for phase, runs in phases.items():
                times = [r["seconds"] for r in runs]
                rows.append(
                    [
                        f"{w} {system} {phase}",
                        " · ".join(f"{t:.4f}" for t in times),
                        f"{max(times) / min(times):.2f}" if min(times) > 0 else "-",
                    ]
                )
    return rows


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def version_rows(data: ReportInput) -> list[list[str]]:
    rows = []
    for system in data.systems:
        found = next(
            (
                runs[0]
                for w in data.results.values()
                for phases in w.get(system.key, {}).values()
                for runs in [phases]
                if runs
            ),
            {},
        )
        python = Path(data.pythons.get(system.key, "?"))
        env = python.parent.parent if system.key != "raw" else None
        size = f"{folder_size(env) / 1e9:.2f} GB" if env and env.is_dir() else "-"
        installs = " ; ".join(f"`pip install {' '.join(i)}`" for i in system.installs) or "-"
        if system.key == "v001":
            installs = "`pip install splitdataloader==0.0.1` (the environment of `run.py`)"
        if system.key == "this":
            installs += f" ; then this tree (sha256 of its .py files {data.snapshot}), `--no-deps`"
        extra = ""
        if found.get("torchvision_imported") is not None:
            extra = f"; torchvision imported: {found['torchvision_imported']}"
        rows.append(
            [
                system.label,
                f"{found.get('version', '?')}{extra}",
                f"`{env or python}`",
                size,
                installs,
            ]
        )
    return rows


def machine_lines(data: ReportInput) -> list[str]:
    mem_kb = first_line_with("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "?"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    done = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False)
    rclone = done.stdout.splitlines()[0].strip() if done.stdout else "?"
    before, after = data.load
    return [
        f"- CPU: {first_line_with('/proc/cpuinfo', 'model name')}; {os.cpu_count()} cores "
        f"({usable} usable); RAM {ram}; kernel {platform.release()}",
        f"- Load average (1 min) at start / end: {before[0]:.2f} / {after[0]:.2f} (the 2 cores "
        "are shared with other work: figures move by tens of percent between runs)",
        f"- Python {sys.version.split()[0]} (`{sys.executable}`), which also built every "
        "environment below",
        f"- Data: {filesystem_of(Path('/tmp').resolve())}; page cache warm for the local reads",
        f"- S3 server: {rclone} (`rclone serve s3 --buffer-size 0 --vfs-read-wait 0`), "
        f"behind a proxy adding {data.latency_ms} ms to every request",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the run took "
        f"{data.elapsed_s / 60:.1f} min, {data.setup_s / 60:.1f} min of it checking or "
        "building the environments",
    ]


def notes(data: ReportInput) -> list[str]:
    batch = "; ".join(
        f"{s.label}: {s.random_batch}"
        + (f" (sequential: {s.sequential_batch})" if s.sequential_batch else "")
        for s in data.systems
        if s.random_batch or s.sequential_batch
    )
    tuned = "; ".join(f"{s.label}: {s.random_tuned}" for s in data.systems if s.random_tuned)
    how = "; ".join(f"{s.label}: {s.s3}" for s in data.systems if s.s3)
    local_only = ", ".join(s.label for s in data.systems if not s.s3 and s.key != "raw")
    return [
        f"- ¹ Batch paths: {batch}.",
        f"- ² Faster settings: {tuned} (its default decodes a batch of neighbouring items for "
        "every `dataset[i]`).",
        "- Each driver uses only the system's public API with its documented defaults and no "
        "compression; what each one calls is in the docstring of its driver in "
        "`benchmarks/peers/`. MosaicML Streaming, WebDataset and ArrayRecord take `bytes` "
        "only: their drivers pass `bytes(record)`, a copy that is timed with the write (see "
        "the `bytes()` raw limit); LitData's `optimize` calls a function that returns one.",
        f"- Each figure is the median of up to {data.runs} runs, in one process per system "
        f"and workload for the write and one for the reads (fewer runs once a phase's runs "
        f"took {data.repeat_budget_s:.0f} s). † marks a pass that was stopped after "
        f"{data.pass_budget_s:.0f} s: its rate is over the records read by then.",
        "- The first run of every read phase fingerprints every record it read (crc32, a "
        "second untimed pass over as many records) against the input: a full pass must "
        "return each record exactly once (in input order where the system keeps it), a "
        "stopped pass no record that is not an input record, a random read the record stored "
        "at that index; repeats check the count and size of every record. Writes are checked "
        "by the reads that follow. A wrong byte stops the run.",
        "- Peak memory is `VmHWM` (imports included; in parentheses, `VmHWM` right after the "
        "imports) of a fresh process at the end of its first timed run; LitData's "
        "`optimize` writes in worker processes, so its write figure is the peak summed RSS "
        "of the process tree, sampled every 50 ms.",
        f"- S3 ({'measured' if data.s3 else 'skipped in this run'}): the datasets written "
        "above, served by `rclone serve s3`; every request goes through a proxy that adds "
        f"{data.latency_ms} ms and counts the requests of each timed loop (opening a dataset "
        "is not counted). Random reads: the first "
        + ", ".join(f"{n:,} for {w}" for w, n in data.s3_reads.items())
        + f" of the local phase's indices. How each reads: {how}. Local files only: "
        f"{local_only}. Caches start empty every run.",
        "- Peers' shuffles differ: this package permutes bins and records within them "
        "(seeded); MosaicML Streaming `py1e` shuffles shard blocks; LitData "
        "shuffles chunks and items within them; WebDataset shuffles shards and then records "
        "through a 1,000-record buffer; Grain permutes all indices (each record a random "
        "read). 0.0.1 shuffles bins and records (unseeded).",
    ]


def render(data: ReportInput) -> str:
    lines = [
        "# splitdataloader against its peers",
        "",
        f"Command: `{data.command}`",
        "",
        "## Machine",
        "",
        *machine_lines(data),
        "",
    ]
    for w in data.workloads:
        if w.name not in data.results:
            continue
        tab = Table(data, w)
        lines += [
            f"## {w.name}: {w.count:,} records of {w.size:,} bytes",
            "",
            *tab.render(),
            "",
            "Rows where a peer is ahead of this package:",
            "",
            *([f"- {a}" for a in tab.ahead] or ["- none"]),
            "",
        ]
    lines += [
        "## Raw limits (same records, same run)",
        "",
        *table(["workload", "limit", "rate"], raw_rows(data)),
        "",
        "## Systems and environments",
        "",
        *table(["system", "version", "environment", "size", "installed with"], version_rows(data)),
        "",
        "## Notes",
        "",
        *notes(data),
        "",
        "## Every run (seconds of the timed loop)",
        "",
        *table(["workload, system, phase", "runs", "max / min"], spread_rows(data)),
        "",
    ]
    return "\n".join(lines)
