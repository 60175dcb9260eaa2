"""One benchmark phase, run in a fresh process: ``python phases.py '<json spec>'``.

The driver (``run.py``) starts this script once per phase, per system and per run, with the
interpreter of the system under test: the virtual environment holding splitdataloader 0.0.1,
or the current interpreter for this package and the raw-I/O limits. A fresh process makes
the peak-memory figure (``VmHWM`` in ``/proc/self/status``, imports included) belong to a
single phase.

Each phase times only its work loop with ``time.perf_counter``, then checks what it read or
wrote outside the timed region (a second, untimed pass fingerprints every record with
crc32 and compares with the fingerprints computed from the seeded pool), and prints one JSON
object on stdout. A wrong record, a wrong count or a wrong size raises ``BenchmarkError``:
the process exits non-zero and the driver stops.

Only the standard library is imported here besides the package under test, so that the
0.0.1 environment needs nothing else installed.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from workloads import (
    BINS,
    Workload,
    concatenated_crc,
    expected_keys,
    record_key,
    records,
)

READ_CHUNK = 1024 * 1024
WRITE_SAMPLE = 200
Spec = dict[str, Any]
Result = dict[str, Any]


class BenchmarkError(AssertionError):
    """The phase read or wrote something other than the expected bytes."""


def vm_hwm_bytes() -> int:
    """The kernel's resident-memory high-water mark of this process, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchmarkError("no VmHWM line in /proc/self/status")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkError(message)


def library_info() -> dict[str, str]:
    import importlib.metadata  # noqa: PLC0415

    import splitdataloader  # noqa: PLC0415

    return {
        "lib_version": importlib.metadata.version("splitdataloader"),
        "lib_file": str(Path(splitdataloader.__file__ or "?").resolve().parent),
    }


def open_loader(spec: Spec) -> Any:
    """A loader of the system under test; 0.0.1 takes no keyword arguments."""
    from splitdataloader import SplitDataLoader  # noqa: PLC0415

    if spec["system"] == "old":
        return SplitDataLoader(spec["data"])
    return SplitDataLoader(spec["data"], verify=spec.get("verify", True))


def close_loader(loader: Any) -> None:
    close = getattr(loader, "close", None)
    if close is not None:
        close()


def binwise(loader: Any, spec: Spec, shuffle: bool) -> Iterator[bytes]:
    """``iterate_binwise``; only this package takes a seed (0.0.1 shuffles unseeded)."""
    if spec["system"] == "old" or not shuffle:
        return iter(loader.iterate_binwise(shuffle=shuffle))
    return iter(loader.iterate_binwise(shuffle=True, seed=spec["shuffle_seed"]))


def load(spec: Spec) -> tuple[Workload, bytes]:
    return Workload.from_json(spec["workload"]), Path(spec["pool"]).read_bytes()


def compare_multiset(got: list[int], want: list[int], what: str) -> None:
    check(len(got) == len(want), f"{what}: {len(got)} records, expected {len(want)}")
    got.sort()
    want = sorted(want)
    if got != want:
        missing = len(set(want) - set(got))
        raise BenchmarkError(f"{what}: wrong record contents ({missing} expected records absent)")


def clear(target: str) -> None:
    """Remove the previous round's output right before the timed region.

    Done here rather than in the driver so that the write reuses the page-cache pages just
    freed: on a virtual machine that returns free memory to its host after a moment, fresh
    pages cost a host fault each, which would be measured instead of the write.
    """
    if os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.exists(target):
        os.unlink(target)


def phase_write(spec: Spec) -> Result:
    """Write all records to ``BINS`` bins, timing ``write_split_data`` alone."""
    from splitdataloader import write_split_data  # noqa: PLC0415

    workload, pool = load(spec)
    offsets = workload.offsets()
    target = spec["data"]
    clear(target)
    source = records(pool, offsets, workload.size)
    if spec["system"] == "old":
        start = time.perf_counter()
        written = write_split_data(target, source, splits=BINS)
        seconds = time.perf_counter() - start
        written = workload.count if written is None else written
    else:
        start = time.perf_counter()
        written = write_split_data(target, source, splits=BINS, durable=spec["durable"])
        seconds = time.perf_counter() - start
    peak = vm_hwm_bytes()
    check(written == workload.count, f"write returned {written}, expected {workload.count}")

    loader = open_loader(spec)
    check(len(loader) == workload.count, f"len()={len(loader)}, expected {workload.count}")
    rng = random.Random(workload.seed)
    sample = {0, workload.count - 1} | {rng.randrange(workload.count) for _ in range(WRITE_SAMPLE)}
    view = memoryview(pool)
    for index in sorted(sample):
        want = view[offsets[index] : offsets[index] + workload.size]
        check(loader[index] == want, f"record {index} reads back wrong after the write")
    close_loader(loader)
    return {
        "seconds": seconds,
        "records": workload.count,
        "bytes": workload.total_bytes,
        "vmhwm": peak,
        **library_info(),
    }


def phase_random(spec: Spec) -> Result:
    """``loader[i]`` at the workload's seeded random indices."""
    workload, pool = load(spec)
    indices = workload.random_indices()
    loader = open_loader(spec)
    check(len(loader) == workload.count, f"len()={len(loader)}, expected {workload.count}")
    nbytes = 0
    start = time.perf_counter()
    for index in indices:
        nbytes += len(loader[index])
    seconds = time.perf_counter() - start
    check(nbytes == len(indices) * workload.size, f"random reads returned {nbytes} bytes")

    keys = expected_keys(pool, workload)
    for index in indices:
        check(record_key(loader[index]) == keys[index], f"loader[{index}] is wrong")
    close_loader(loader)
    return {"seconds": seconds, "records": len(indices), "bytes": nbytes, **library_info()}


def timed_pass(stream: Iterable[bytes]) -> tuple[float, int, int]:
    count = 0
    nbytes = 0
    start = time.perf_counter()
    for record in stream:
        count += 1
        nbytes += len(record)
    return time.perf_counter() - start, count, nbytes


def full_pass(spec: Spec, shuffle: bool) -> Result:
    workload = Workload.from_json(spec["workload"])  # the pool is loaded after the timing
    loader = open_loader(spec)
    seconds, count, nbytes = timed_pass(binwise(loader, spec, shuffle))
    peak = vm_hwm_bytes()
    check(count == workload.count, f"pass yielded {count} records, expected {workload.count}")
    check(nbytes == workload.total_bytes, f"pass yielded {nbytes} bytes")

    _, pool = load(spec)
    got = [record_key(r) for r in binwise(loader, spec, shuffle)]
    compare_multiset(got, expected_keys(pool, workload), "iterate_binwise")
    close_loader(loader)
    return {"seconds": seconds, "records": count, "bytes": nbytes, "vmhwm": peak, **library_info()}


def phase_sequential(spec: Spec) -> Result:
    """One full ``iterate_binwise()`` pass."""
    return full_pass(spec, shuffle=False)


def phase_shuffled(spec: Spec) -> Result:
    """One full ``iterate_binwise(shuffle=True)`` pass."""
    return full_pass(spec, shuffle=True)


def file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as reader:
        while chunk := reader.read(READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def phase_raw_write(spec: Spec) -> Result:
    """Limit: the same records written back to back into one buffered file."""
    workload, pool = load(spec)
    offsets = workload.offsets()
    target = spec["data"]
    clear(target)
    source = records(pool, offsets, workload.size)
    start = time.perf_counter()
    with open(target, "wb") as writer:
        for record in source:
            writer.write(record)
        if spec["fsync"]:
            writer.flush()
            os.fsync(writer.fileno())
    seconds = time.perf_counter() - start
    peak = vm_hwm_bytes()
    check(os.path.getsize(target) == workload.total_bytes, "single file has the wrong size")
    check(file_crc(target) == concatenated_crc(pool, workload), "single file has wrong bytes")
    return {
        "seconds": seconds,
        "records": workload.count,
        "bytes": workload.total_bytes,
        "vmhwm": peak,
    }


def phase_raw_pread(spec: Spec) -> Result:
    """Limit: a Python loop of ``os.pread`` of one record at the same random indices."""
    workload, pool = load(spec)
    size = workload.size
    indices = workload.random_indices()
    positions = [index * size for index in indices]
    fd = os.open(spec["data"], os.O_RDONLY)
    try:
        nbytes = 0
        start = time.perf_counter()
        for position in positions:
            nbytes += len(os.pread(fd, size, position))
        seconds = time.perf_counter() - start
        check(nbytes == len(indices) * size, f"pread returned {nbytes} bytes")
        keys = expected_keys(pool, workload)
        for index, position in zip(indices, positions, strict=True):
            check(record_key(os.pread(fd, size, position)) == keys[index], "pread mismatch")
    finally:
        os.close(fd)
    return {"seconds": seconds, "records": len(indices), "bytes": nbytes}


def phase_raw_readinto(spec: Spec) -> Result:
    """Limit: ``readinto`` of the whole single file through one reused 1 MiB buffer."""
    workload = Workload.from_json(spec["workload"])
    # A page-aligned buffer: on some CPUs (seen on AMD EPYC) the kernel's copy into a user
    # buffer that starts 1..31 bytes past a page boundary, as a fresh 1 MiB bytearray does,
    # runs several times slower, which would understate the limit.
    region = mmap.mmap(-1, READ_CHUNK)
    buffer = memoryview(region)
    buffer[:] = bytes(READ_CHUNK)
    nbytes = 0
    with open(spec["data"], "rb", buffering=0) as reader:
        start = time.perf_counter()
        while got := reader.readinto(buffer):
            nbytes += got
        seconds = time.perf_counter() - start
    peak = vm_hwm_bytes()
    buffer.release()
    region.close()
    check(nbytes == workload.total_bytes, f"readinto returned {nbytes} bytes")
    _, pool = load(spec)
    check(file_crc(spec["data"]) == concatenated_crc(pool, workload), "single file changed")
    return {"seconds": seconds, "records": workload.count, "bytes": nbytes, "vmhwm": peak}


def small_records(pool: bytes, count: int, size: int) -> Iterator[memoryview]:
    room = len(pool) - size
    return records(pool, ((i * 40_503) % room for i in range(count)), size)


def phase_prepare_open(spec: Spec) -> Result:
    """Write (or keep, when it reads back right) the dataset of the opening-time phase."""
    from splitdataloader import SplitDataLoader, write_split_data  # noqa: PLC0415

    pool = Path(spec["pool"]).read_bytes()
    count, size, target = spec["count"], spec["size"], spec["data"]
    probe = sorted({0, count - 1, count // 2, count // 3})
    view = memoryview(pool)
    room = len(pool) - size

    def intact() -> bool:
        try:
            with SplitDataLoader(target) as loader:
                if len(loader) != count:
                    return False
                for i in probe:
                    offset = (i * 40_503) % room
                    if loader[i] != view[offset : offset + size]:
                        return False
        except Exception:  # any failure to read the cached copy means: write it again
            return False
        return True

    reused = os.path.exists(target) and intact()
    seconds = 0.0
    if not reused:
        start = time.perf_counter()
        written = write_split_data(
            target, small_records(pool, count, size), splits=BINS, start_clean=True
        )
        seconds = time.perf_counter() - start
        check(written == count, f"wrote {written} records, expected {count}")
        check(intact(), f"the {count}-record dataset does not read back right")
    return {"seconds": seconds, "records": count, "reused": reused, **library_info()}


def phase_open(spec: Spec) -> Result:
    """Median time of ``SplitDataLoader(path)`` + ``len()`` over many repetitions."""
    from splitdataloader import SplitDataLoader  # noqa: PLC0415

    target, count = spec["data"], spec["count"]
    times: list[float] = []
    budget_end = time.perf_counter() + spec["budget_s"]
    while len(times) < spec["min_reps"] or (
        len(times) < spec["max_reps"] and time.perf_counter() < budget_end
    ):
        start = time.perf_counter()
        loader = SplitDataLoader(target)
        length = len(loader)
        times.append(time.perf_counter() - start)
        close_loader(loader)
        check(length == count, f"len()={length}, expected {count}")
    return {
        "seconds": statistics.median(times),
        "reps": len(times),
        "records": count,
        **library_info(),
    }


PHASES: dict[str, Callable[[Spec], Result]] = {
    "write": phase_write,
    "random": phase_random,
    "sequential": phase_sequential,
    "shuffled": phase_shuffled,
    "raw-write": phase_raw_write,
    "raw-pread": phase_raw_pread,
    "raw-readinto": phase_raw_readinto,
    "prepare-open": phase_prepare_open,
    "open": phase_open,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} '<json spec>'", file=sys.stderr)
        return 2
    spec: Spec = json.loads(argv[1])
    result = PHASES[spec["phase"]](spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
