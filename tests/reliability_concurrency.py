"""Concurrency trials: writers appending at once, readers reading while they do.

Run as a script, it is a worker process: ``writer URL TAG COMMITS SIZE`` appends
``COMMITS`` commits of ``SIZE`` records tagged ``TAG``, reopening and writing again after
every :class:`~splitdataloader.errors.CommitConflictError`, and prints
``{"conflicts": n}``; ``reader URL SECONDS SIZE`` reads snapshots until the time is up
and prints its :class:`ReadStats`. :func:`run_concurrency` runs them together.

A snapshot is the whole dataset as one loader sees it. It must be made of whole commits:
the base records, then blocks of ``SIZE`` records ``TAG:commit:k`` with ``k`` running
from 0, and each writer's commits in order with none missing before the last one seen.
A reader's successive snapshots never shrink.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import CommitConflictError

BASE = [b"base:%03d" % k for k in range(12)]
_TAGGED = re.compile(rb"([a-z0-9]+):(\d{3}):(\d{3}):")


def commit_records(tag: str, commit: int, size: int) -> list[bytes]:
    return [b"%s:%03d:%03d:" % (tag.encode(), commit, k) + b"." * (k * 7) for k in range(size)]


def append(url: str, tag: str, commits: int, size: int) -> int:
    """Append ``commits`` commits; returns how many conflicts were retried."""
    conflicts = 0
    for commit in range(commits):
        while True:
            try:
                write_split_data(url, commit_records(tag, commit, size))
                break
            except CommitConflictError:
                conflicts += 1
    return conflicts


@dataclass
class ReadStats:
    snapshots: int = 0
    records: int = 0
    #: How many commits of each writer the snapshots showed, at most.
    seen: dict[str, int] = field(default_factory=dict)
    #: The distinct snapshot sizes seen: more than two means reads overlapped the writes.
    lengths: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, other: ReadStats) -> None:
        self.snapshots += other.snapshots
        self.records += other.records
        for tag, count in other.seen.items():
            self.seen[tag] = max(self.seen.get(tag, 0), count)
        self.lengths = sorted(set(self.lengths) | set(other.lengths))
        self.failures.extend(other.failures)


def check_snapshot(records: list[bytes], size: int) -> dict[str, int] | str:
    """Commits per writer in a snapshot, or what is wrong with it."""
    if records[: len(BASE)] != BASE:
        return "the base records changed"
    commits: dict[str, int] = {}
    position = len(BASE)
    while position < len(records):
        match = _TAGGED.match(records[position])
        if match is None:
            return f"record {position} is no writer's"
        tag, commit = match.group(1).decode(), int(match.group(2))
        if commit != commits.get(tag, 0):
            return f"commit {commit} of {tag} at record {position}: one is missing or repeated"
        if records[position : position + size] != commit_records(tag, commit, size):
            return f"commit {commit} of {tag} at record {position} is not whole"
        commits[tag] = commit + 1
        position += size
    return commits


def read_snapshots(
    url: str, size: int, until: float, stop: threading.Event | None = None
) -> ReadStats:
    """Read snapshots until ``until`` (monotonic time) or ``stop``; check each one."""
    stats = ReadStats()
    last = 0
    while time.monotonic() < until and not (stop is not None and stop.is_set()):
        with SplitDataLoader(url) as loader:
            records = loader.get_many(range(len(loader)))
            if stats.snapshots % 4 == 0:
                in_bins = sorted(loader.iterate_binwise())
                if in_bins != sorted(records):
                    stats.failures.append("a bin-wise pass differs from the records")
        verdict = check_snapshot(records, size)
        if isinstance(verdict, str):
            stats.failures.append(verdict)
            break
        if len(records) < last:
            stats.failures.append(f"a snapshot of {len(records)} records after {last}")
        last = len(records)
        if last not in stats.lengths:
            stats.lengths.append(last)
        stats.snapshots += 1
        stats.records += len(records)
        for tag, count in verdict.items():
            stats.seen[tag] = max(stats.seen.get(tag, 0), count)
    return stats


def run_concurrency(
    url: str,
    *,
    writers: int = 2,
    commits: int = 30,
    size: int = 5,
    reader_threads: int = 3,
    reader_processes: int = 2,
    reader_seconds: float = 6.0,
) -> tuple[ReadStats, int]:
    """Writers appending at once while readers in threads and processes read snapshots.

    Returns the readers' stats (the final snapshot's included, which must hold every
    commit of every writer) and the number of conflicts the writers retried.
    """
    write_split_data(url, BASE, splits=3, start_clean=True)
    script = [sys.executable, os.path.abspath(__file__)]
    readers = [
        subprocess.Popen(
            [*script, "reader", url, str(reader_seconds), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(reader_processes)
    ]
    writing = [
        subprocess.Popen(
            [*script, "writer", url, f"w{k}", str(commits), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(writers)
    ]
    stop = threading.Event()
    results: list[ReadStats] = []
    deadline = time.monotonic() + reader_seconds * 4
    threads = [
        threading.Thread(target=lambda: results.append(read_snapshots(url, size, deadline, stop)))
        for _ in range(reader_threads)
    ]
    for thread in threads:
        thread.start()
    conflicts = 0
    stats = ReadStats()
    try:
        for process in writing:
            out, _ = process.communicate(timeout=300)
            if process.returncode != 0:
                stats.failures.append(f"a writer failed with exit code {process.returncode}")
            else:
                conflicts += json.loads(out)["conflicts"]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for process in readers:
            out, _ = process.communicate(timeout=300)
            if process.returncode != 0:
                stats.failures.append(f"a reader failed with exit code {process.returncode}")
            else:
                other = ReadStats(**json.loads(out))
                stats.add(other)
    for result in results:
        stats.add(result)
    with SplitDataLoader(url) as loader:
        final = loader.get_many(range(len(loader)))
    verdict = check_snapshot(final, size)
    if verdict != {f"w{k}": commits for k in range(writers)}:
        stats.failures.append(f"the final dataset holds {verdict}, not every commit")
    final_stats = ReadStats(snapshots=1, records=len(final), lengths=[len(final)])
    if isinstance(verdict, dict):
        final_stats.seen = verdict
    stats.add(final_stats)
    return stats, conflicts


def main(argv: list[str]) -> None:
    if argv[0] == "writer":
        conflicts = append(argv[1], argv[2], int(argv[3]), int(argv[4]))
        print(json.dumps({"conflicts": conflicts}))
    else:
        stats = read_snapshots(argv[1], int(argv[3]), time.monotonic() + float(argv[2]))
        print(json.dumps(asdict(stats)))


if __name__ == "__main__":
    main(sys.argv[1:])
