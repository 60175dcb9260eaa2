"""The raw limits of the machine on the same bytes, measured in the same run as the systems.

Write, ``os.pread`` loop and ``readinto`` come from ``phases.py`` (the limits of
``run.py``): the records written back to back into one buffered file, a Python loop of
``os.pread`` of one record at the same random indices, and ``readinto`` of that file
through a reused page-aligned 1 MiB buffer. Two more are measured here: ``memcpy``, the
same number of bytes copied from memory into a reused page-aligned 1 MiB buffer, and
``bytes()`` of every record, the allocation and copy that any API returning a fresh
``bytes`` per record pays at the least.
"""

from __future__ import annotations

import mmap
import platform
from typing import Any

import driver_common as c
import phases

CHUNK = 1 << 20


def info() -> dict[str, Any]:
    return {"version": f"Python {platform.python_version()}"}


def phase_memcpy(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    pool = memoryview(inputs.pool)
    total = inputs.workload.total_bytes
    blocks = len(pool) // CHUNK
    region = mmap.mmap(-1, CHUNK)
    buffer = memoryview(region)

    def copy() -> int:
        done = 0
        while done < total:
            size = min(CHUNK, total - done)
            start = (done // CHUNK % blocks) * CHUNK
            buffer[:size] = pool[start : start + size]
            done += size
        return done

    seconds, done = c.timed(copy)
    last = ((total - 1) // CHUNK % blocks) * CHUNK
    tail = total - (total - 1) // CHUNK * CHUNK
    c.check(buffer[:tail] == pool[last : last + tail], "memcpy: the last block differs")
    buffer.release()
    region.close()
    return c.pass_result(seconds, inputs.workload.count, done)


def phase_bytes_copy(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    views = list(inputs.records())

    def copy() -> int:
        nbytes = 0
        for view in views:
            nbytes += len(bytes(view))
        return nbytes

    seconds, nbytes = c.timed(copy)
    c.check(nbytes == inputs.workload.total_bytes, f"bytes(): {nbytes} bytes")
    c.check(bytes(views[-1]) == inputs.record(len(views) - 1), "bytes(): wrong copy")
    return c.pass_result(seconds, len(views), nbytes)


PHASES: dict[str, c.Phase] = {
    "raw-write": phases.phase_raw_write,
    "raw-pread": phases.phase_raw_pread,
    "raw-readinto": phases.phase_raw_readinto,
    "memcpy": phase_memcpy,
    "bytes-copy": phase_bytes_copy,
}

if __name__ == "__main__":
    c.main(PHASES, info)
