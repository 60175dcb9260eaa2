"""Load: random reads from many threads and processes for a bounded time, every byte checked.

Record ``i`` of the soak dataset is a function of ``i`` alone (:func:`record`), so any
reader can check any record it gets without holding the dataset. :func:`soak` runs
reader threads sharing one loader in this process, and reader processes (this file run
as a script: ``URL SECONDS THREADS``) doing the same, for a bounded time; each reader
mixes ``loader[i]`` and batches of ``get_many``. Memory must stay flat: each process
measures its resident set after a warm-up and at the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from splitdataloader import SplitDataLoader, write_split_data

RECORDS = 3000
BINS = 16
WARM_UP = 0.5
_TALLY = threading.Lock()


def record(i: int) -> bytes:
    """Record ``i``: its number, then a payload drawn from a generator seeded with it."""
    size = (i * 7919) % 2500
    return b"%08d:" % i + random.Random(i).randbytes(size)


def write_soak_dataset(url: str) -> None:
    """The soak dataset: :data:`RECORDS` records in :data:`BINS` bins, in three commits."""
    third = RECORDS // 3
    write_split_data(url, (record(i) for i in range(third)), splits=BINS, start_clean=True)
    write_split_data(url, (record(i) for i in range(third, 2 * third)))
    write_split_data(url, (record(i) for i in range(2 * third, RECORDS)))


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class SoakStats:
    records_checked: int = 0
    reads: int = 0
    #: Growth of the resident set from the end of the warm-up to the end, per process.
    growth: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, other: SoakStats) -> None:
        self.records_checked += other.records_checked
        self.reads += other.reads
        self.growth += other.growth
        self.failures += other.failures


def read_randomly(loader: SplitDataLoader, until: float, seed: int, stats: SoakStats) -> None:
    rng = random.Random(seed)
    count = len(loader)
    checked = reads = 0
    try:
        while time.monotonic() < until:
            if rng.random() < 0.5:
                i = rng.randrange(count)
                got = [loader[i]]
                wanted = [i]
            else:
                wanted = [rng.randrange(count) for _ in range(32)]
                got = loader.get_many(wanted)
            reads += 1
            for i, data in zip(wanted, got):
                if data != record(i):
                    stats.failures.append(f"record {i} came back wrong")
                    return
            checked += len(wanted)
    except Exception as err:
        stats.failures.append(f"a reader failed: {type(err).__name__}: {err}")
    finally:
        with _TALLY:
            stats.records_checked += checked
            stats.reads += reads


def soak_here(url: str, seconds: float, threads: int, seed: int = 0) -> SoakStats:
    """``threads`` threads reading one shared loader for ``seconds``."""
    stats = SoakStats()
    with SplitDataLoader(url) as loader:
        if len(loader) != RECORDS:
            stats.failures.append(f"{len(loader)} records, not {RECORDS}")
            return stats
        warm = SoakStats()
        read_randomly(loader, time.monotonic() + WARM_UP, seed, warm)
        before = resident_bytes()
        until = time.monotonic() + seconds
        parts = [SoakStats() for _ in range(threads)]
        workers = [
            threading.Thread(target=read_randomly, args=(loader, until, seed + 1 + k, parts[k]))
            for k in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        stats.growth.append(resident_bytes() - before)
        stats.add(warm)
        for part in parts:
            stats.add(part)
    return stats


def soak(url: str, seconds: float, threads: int = 4, processes: int = 2) -> SoakStats:
    """Reader processes and threads at once, against the dataset at ``url``."""
    script = [sys.executable, os.path.abspath(__file__), url, str(seconds), str(threads)]
    children = [
        subprocess.Popen([*script, str(100 * (k + 1))], stdout=subprocess.PIPE, text=True)
        for k in range(processes)
    ]
    stats = soak_here(url, seconds, threads)
    for child in children:
        out, _ = child.communicate(timeout=seconds + 300)
        if child.returncode != 0:
            stats.failures.append(f"a reader process failed with exit code {child.returncode}")
            continue
        stats.add(SoakStats(**json.loads(out)))
    return stats


if __name__ == "__main__":
    url, seconds, threads, seed = sys.argv[1:5]
    result = soak_here(url, float(seconds), int(threads), int(seed))
    print(json.dumps(asdict(result)))
