"""Crash trials: writers killed with SIGKILL at every storage operation, or at random times.

A trial writes the base dataset, has :mod:`crash_zygote` fork a writer that runs the
plan (four commits: appends, a replacement, an append) and dies by SIGKILL at a chosen
storage operation or after a random delay, then checks the dataset:

1. it opens, and holds exactly the records of the last commit the writer finished, or of
   the one it was committing when it died (whose manifest write may have landed);
2. :func:`splitdataloader.verify.repair` removes every file the manifest does not list,
   and the records stay the same;
3. a new append succeeds and the dataset then holds those records plus the new one.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from crash_zygote import states, write_base
from reference_model import to_fs

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import SplitDataError
from splitdataloader.format import MANIFEST_NAME
from splitdataloader.verify import repair

ZYGOTE = Path(__file__).with_name("crash_zygote.py")
MANIFEST_OP = "Storage.commit_manifest"


class Zygote:
    """The forking server of :mod:`crash_zygote`, in a subprocess."""

    def __init__(self) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def run(
        self, url: str, log: str, kill_at: int | None = None, delay: float | None = None
    ) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        request = {"url": url, "log": log, "kill_at": kill_at, "delay": delay}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"the crash zygote died: {self._stderr.read().decode()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def errors(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class CrashStats:
    """What a series of kills did and found."""

    kills: int = 0
    #: Runs that finished before the kill came (timed kills only).
    finished: int = 0
    #: Kills that came while a manifest write was in flight.
    in_commit: int = 0
    #: Records checked after the kills (reads of every record, before and after repair
    #: and after the new append).
    records_checked: int = 0
    #: Files repair removed, over all kills.
    orphans_removed: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: CrashStats) -> None:
        self.kills += other.kills
        self.finished += other.finished
        self.in_commit += other.in_commit
        self.records_checked += other.records_checked
        self.orphans_removed += other.orphans_removed
        self.failures.extend(other.failures)


def commits_done(log: str) -> tuple[int, bool]:
    """(manifest writes finished, whether one had begun and not finished) per the log."""
    begun = ended = 0
    if os.path.exists(log):
        with open(log) as handle:
            for line in handle:
                if line == f"begin {MANIFEST_OP}\n":
                    begun += 1
                elif line == f"end {MANIFEST_OP}\n":
                    ended += 1
    return ended, begun > ended


def operation_count(zygote: Zygote, url: str, scratch: str) -> tuple[int, float]:
    """(storage operations, seconds) of an uninterrupted run of the plan."""
    log = os.path.join(scratch, "full.log")
    for _ in range(2):  # the second run's time: the first one warms caches up
        write_base(url)
        if os.path.exists(log):
            os.unlink(log)
        started = time.monotonic()
        answer = zygote.run(url, log)
        elapsed = time.monotonic() - started
    if answer["exitcode"] != 0:
        raise RuntimeError(f"the uninterrupted plan failed: {answer} {zygote.errors()}")
    with open(log) as handle:
        last = handle.read().splitlines()[-1]
    assert last.startswith("done "), last
    with SplitDataLoader(url) as loader:
        assert loader.get_many(range(len(loader))) == states()[-1]
    return int(last.split()[1]), elapsed


def read_records(url: str) -> list[bytes]:
    with SplitDataLoader(url) as loader:
        records = loader.get_many(range(len(loader)))
        assert sorted(loader.iterate_binwise()) == sorted(records), "bin-wise pass differs"
        return records


def listed_files(url: str) -> set[str]:
    with SplitDataLoader(url) as loader:
        assert loader.manifest is not None
        return {MANIFEST_NAME, *loader.manifest.files()}


def stored(url: str) -> set[str]:
    fs, root = to_fs(url)
    return {path[len(root) + 1 :] for path in fs.find(root)}


def kill_once(
    zygote: Zygote,
    url: str,
    log: str,
    *,
    kill_at: int | None = None,
    delay: float | None = None,
    check_repair: bool = True,
) -> CrashStats:
    """One trial: base dataset, killed plan, then the three checks of the module."""
    stats = CrashStats()
    label = f"kill at operation {kill_at}" if kill_at is not None else f"kill after {delay:.4f} s"
    write_base(url)
    if os.path.exists(log):
        os.unlink(log)
    answer = zygote.run(url, log, kill_at=kill_at, delay=delay)
    if answer["signal"] is None:
        if answer["exitcode"] != 0 or kill_at is not None:
            stats.failures.append(f"{label}: the writer was not killed: {answer}")
            return stats
        stats.finished += 1
    else:
        stats.kills += 1
    done, in_flight = commits_done(log)
    stats.in_commit += in_flight
    allowed = states()[done : done + 2] if in_flight else [states()[done]]
    try:
        records = read_records(url)
    except (SplitDataError, AssertionError) as err:
        stats.failures.append(f"{label}: the dataset does not open or read: {err!r}")
        return stats
    stats.records_checked += len(records)
    if records not in allowed:
        stats.failures.append(
            f"{label}: {len(records)} records, not those of commit {done}"
            + (" or the one in flight" if in_flight else "")
        )
        return stats
    if check_repair:
        report = repair(url, grace_period=0)
        stats.orphans_removed += len(report.removed)
        leftover = stored(url) - listed_files(url)
        if leftover:
            stats.failures.append(f"{label}: repair left {sorted(leftover)[:3]}")
        if read_records(url) != records:
            stats.failures.append(f"{label}: repair changed the records")
        stats.records_checked += len(records)
    tail = b"after-the-crash"
    try:
        write_split_data(url, [tail])
        after = read_records(url)
    except (SplitDataError, AssertionError) as err:
        stats.failures.append(f"{label}: appending after the crash failed: {err!r}")
        return stats
    stats.records_checked += len(after)
    if after != [*records, tail]:
        stats.failures.append(f"{label}: the append after the crash lost or changed records")
    return stats


def run_kills(
    url_of: Callable[[int], str],
    scratch: str,
    *,
    points: int | None = None,
    timed: int = 0,
    seed: int = 0,
    check_repair: bool = True,
) -> CrashStats:
    """Kill the plan at ``points`` operations spread evenly over all of them (every one
    when ``None``), then ``timed`` times after random delays. ``url_of(k)`` gives the
    dataset URL of trial ``k``."""
    stats = CrashStats()
    rng = random.Random(seed)
    with Zygote() as zygote:
        total, seconds = operation_count(zygote, url_of(-1), scratch)
        chosen = range(1, total + 1)
        if points is not None and points < total:
            chosen = sorted(rng.sample(range(1, total + 1), points))  # type: ignore[assignment]
        log = os.path.join(scratch, "kill.log")
        for trial, kill_at in enumerate(chosen):
            stats.add(
                kill_once(zygote, url_of(trial), log, kill_at=kill_at, check_repair=check_repair)
            )
        for trial in range(timed):
            delay = rng.uniform(0, seconds * 1.1)
            stats.add(
                kill_once(
                    zygote, url_of(10_000 + trial), log, delay=delay, check_repair=check_repair
                )
            )
    return stats
