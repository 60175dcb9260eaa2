"""What every peer driver shares: the spec, timing, peak memory and the byte checks.

A driver is a small script run by ``benchmarks/peers.py`` with the interpreter of one
system's virtual environment: ``python drive_x.py '<json spec>'``. It runs one phase (a
write, a pass, random reads) through that system's public API, times the work loop alone
with ``time.perf_counter``, then checks, untimed, every record it read against crc32
fingerprints of the seeded input, and prints one JSON object as its last line of output.
A wrong record, count or size raises :class:`BenchmarkError`, so the process exits
non-zero and the orchestrator stops before any number is reported.

Only the standard library and ``workloads.py`` (one folder up) are imported here, so that
the same helpers run in every environment.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # workloads.py

from workloads import Workload, expected_keys, record_key, records

Spec = dict[str, Any]
Result = dict[str, Any]
Phase = Callable[[Spec], Result]


class BenchmarkError(AssertionError):
    """A system read or wrote other bytes than the benchmark gave it."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkError(message)


def vm_hwm() -> int:
    """The resident-memory high-water mark of this process, in bytes (imports included)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchmarkError("no VmHWM line in /proc/self/status")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # the process ended meanwhile
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children", encoding="ascii") as children:
                kids = [int(k) for k in children.read().split()]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


class TreePeak:
    """Peak summed RSS of this process and its children, sampled every 50 ms.

    For systems that write with worker processes, whose memory ``VmHWM`` does not see.
    Pages shared by a parent and a forked child count twice, so this errs high.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self._interval):
            total = _rss(me) + sum(_rss(kid) for kid in _descendants(me))
            self.peak = max(self.peak, total)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Inputs:
    """The workload of a spec, its byte pool, and the fingerprints derived from them."""

    def __init__(self, spec: Spec) -> None:
        self.workload = Workload.from_json(spec["workload"])
        self._pool_path = spec["pool"]
        self._pool: bytes | None = None
        self._keys: list[int] | None = None

    @property
    def pool(self) -> bytes:
        if self._pool is None:
            self._pool = Path(self._pool_path).read_bytes()
        return self._pool

    def records(self) -> Iterator[memoryview]:
        """Zero-copy views of every record, in input order."""
        return records(self.pool, self.workload.offsets(), self.workload.size)

    def record(self, index: int) -> memoryview:
        offset = self.workload.offsets()[index]
        return memoryview(self.pool)[offset : offset + self.workload.size]

    def indices(self, spec: Spec) -> list[int]:
        """The seeded indices of a random-access phase (the first ``spec["reads"]``)."""
        every = self.workload.random_indices()
        return every[: spec["reads"]] if spec.get("reads") else every

    @property
    def keys(self) -> list[int]:
        """Fingerprint of every record, in input order."""
        if self._keys is None:
            self._keys = expected_keys(self.pool, self.workload)
        return self._keys


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``work`` with the garbage collector held off; its seconds and its result.

    On S3, the proxy's request counts of the block are kept for the phase's result.
    """
    gc.collect()
    _Requests.fetch()
    gc.disable()
    try:
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
    finally:
        gc.enable()
    _Requests.last = _Requests.fetch()
    return seconds, result


def same(item: Any) -> Any:
    return item


def drain(
    stream: Iterable[Any], payload: Callable[[Any], Any] = same, budget_s: float | None = None
) -> tuple[int, int]:
    """Consume ``stream``; count its items and the bytes of ``payload(item)``.

    With ``budget_s``, stop after the first item read once that many seconds have passed
    (checked every 256 items): the rate of a partial pass, for systems too slow to finish
    one within the run's time.
    """
    count = nbytes = 0
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    for item in stream:
        count += 1
        nbytes += len(payload(item))
        if deadline is not None and not count & 255 and time.perf_counter() > deadline:
            break
    return count, nbytes


def fingerprints(
    stream: Iterable[Any], payload: Callable[[Any], Any] = same, limit: int | None = None
) -> list[int]:
    """crc32 fingerprints of the first ``limit`` items (all by default)."""
    keys = []
    for item in stream:
        if limit is not None and len(keys) == limit:
            break
        keys.append(record_key(payload(item)))
    return keys


def check_multiset(got: list[int], inputs: Inputs, what: str, partial: bool = False) -> None:
    """Every input record exactly once, in any order (``partial``: at most once)."""
    want = inputs.keys
    if partial:
        extra = Counter(got) - Counter(want)
        check(not extra, f"{what}: {sum(extra.values()):,} records read are not input records")
        return
    check(len(got) == len(want), f"{what}: {len(got):,} records, expected {len(want):,}")
    if Counter(got) != Counter(want):
        missing = len(set(want) - set(got))
        raise BenchmarkError(f"{what}: wrong contents ({missing:,} input records absent)")


def check_pass(
    got: list[int], inputs: Inputs, what: str, *, count: int, ordered: bool
) -> dict[str, Any]:
    """Check a full or partial pass (``count`` items timed); ``ordered``: in input order.

    Returns the fields a pass adds to its result.
    """
    partial = count < inputs.workload.count
    check(len(got) == count, f"{what}: the check read {len(got):,} items, the pass {count:,}")
    check_multiset(got, inputs, what, partial=partial)
    if ordered:
        check(got == inputs.keys[:count], f"{what}: not in input order")
    return {"partial": partial}


BATCH_RECORDS = 256  # records per call of a batch read path, at most
BATCH_BYTES = 64 << 20  # bytes per call of a batch read path, at most


def run_random(
    spec: Spec,
    inputs: Inputs,
    get_one: Callable[[int], Any],
    get_many: Callable[[list[int]], Iterable[Any]] | None = None,
    positions: Callable[[list[int]], list[int]] | None = None,
    *,
    what: str,
) -> Result:
    """Time reads of the seeded indices, one by one or (``spec["batch"]``) through
    ``get_many`` in batches of at most 256 records or 64 MiB; then check them.

    Records are counted and dropped as they come, as a training loop would use them. The
    check reads the same indices again, untimed: record ``k`` must be the input record at
    ``positions(indices)[k]`` (the indices themselves unless the system reorders).
    """
    indices = inputs.indices(spec)
    size = inputs.workload.size
    if spec.get("batch"):
        if get_many is None:
            raise BenchmarkError(f"{what}: no batch read path")
        per_call = max(1, min(BATCH_RECORDS, BATCH_BYTES // size))
        groups = [indices[k : k + per_call] for k in range(0, len(indices), per_call)]

        def records() -> Iterator[Any]:
            for group in groups:
                yield from get_many(group)
    else:

        def records() -> Iterator[Any]:
            for index in indices:
                yield get_one(index)

    seconds, (count, nbytes) = timed(lambda: drain(records()))
    check(count == len(indices), f"{what}: {count:,} records for {len(indices):,} indices")
    check(nbytes == count * size, f"{what}: {nbytes:,} bytes in {count:,} records")
    if spec.get("check", True):
        order = positions(indices) if positions else indices
        keys = inputs.keys
        for k, (record, position) in enumerate(zip(records(), order, strict=True)):
            ok = record_key(record) == keys[position]
            check(ok, f"{what}: read {k} (input record {position}) is wrong")
    return pass_result(seconds, count, nbytes)


def run_pass(
    spec: Spec,
    inputs: Inputs,
    stream: Callable[[], Iterable[Any]],
    payload: Callable[[Any], Any] = same,
    *,
    ordered: bool,
    what: str,
) -> Result:
    """Time one pass over ``stream()`` (within ``spec["budget_s"]``), then check it.

    The check is a second, untimed pass over a new ``stream()`` that fingerprints as many
    items as the timed pass read (first run of a step only; repeats check the count and
    the bytes). Peak memory is taken when the timed pass ends.
    """
    budget = spec.get("budget_s")
    seconds, (count, nbytes) = timed(lambda: drain(stream(), payload, budget))
    peak = vm_hwm()
    check(nbytes == count * inputs.workload.size, f"{what}: {nbytes:,} bytes in {count:,} items")
    if spec.get("check", True):
        got = fingerprints(stream(), payload, limit=count)
        extra = check_pass(got, inputs, what, count=count, ordered=ordered)
    else:
        extra = {"partial": count < inputs.workload.count}
    return pass_result(seconds, count, nbytes, vmhwm=peak, **extra)


def disk_usage(path: str) -> tuple[int, int]:
    """Bytes (apparent size) and number of the files under ``path``."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


class _Requests:
    """Requests the benchmark's S3 proxy saw during the last timed block (none without S3).

    The proxy of ``peers.py`` answers ``GET <control>/counts`` with its counts since the
    previous such request; :func:`timed` asks right before and right after its block.
    """

    control: str | None = None
    last: dict[str, int] = {}  # noqa: RUF012 - one process, one phase at a time

    @classmethod
    def fetch(cls) -> dict[str, int]:
        if not cls.control:
            return {}
        with urllib.request.urlopen(f"{cls.control}/counts", timeout=30) as answer:
            counts: dict[str, int] = json.loads(answer.read())
            return counts


def pass_result(seconds: float, count: int, nbytes: int, **extra: Any) -> Result:
    return {"seconds": seconds, "records": count, "bytes": nbytes, **extra}


def main(phases: dict[str, Phase], info: Callable[[], dict[str, Any]]) -> None:
    """Run the steps of the spec in ``sys.argv[1]`` in order; print their results as JSON.

    The spec is ``{"common": {...}, "steps": [{...}, ...]}``; each step is merged over the
    common part, names its ``phase`` and runs ``repeat`` times (default 1), or fewer once its
    runs have taken ``repeat_budget_s`` seconds of timed work; the first run checks every
    record it read (``check``), the repeats their count and size. Prints one list of
    results per step. Peak memory (``vmhwm``) is the process's high-water mark when a run's
    timed work ended, so only the first run of the first step has a peak of its own.
    """
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} '<json spec>'")
    spec: Spec = json.loads(sys.argv[1])
    out: list[list[Result]] = []
    for step in spec["steps"]:
        merged = {**spec.get("common", {}), **step}
        runs: list[Result] = []
        spent = 0.0
        while len(runs) < merged.get("repeat", 1) and spent < merged.get("repeat_budget_s", 1e9):
            _Requests.control = (merged.get("s3") or {}).get("control")
            _Requests.last = {}
            result = phases[merged["phase"]]({**merged, "check": not runs})
            if _Requests.last:
                result["requests"] = _Requests.last
            result.setdefault("vmhwm", vm_hwm())
            result.update(info())
            runs.append(result)
            spent += result["seconds"]
        out.append(runs)
    print(json.dumps(out), flush=True)
