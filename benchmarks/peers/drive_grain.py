"""Driver for ArrayRecord (``array-record``) read through Grain (``grain``), public APIs only.

Write: ``ArrayRecordWriter(path, "group_size:1,uncompressed")``, one
``write(bytes(record))`` per record (it takes no ``memoryview``; the copy is timed too),
into files of at most 64 MiB of records. ``group_size:1`` is what Grain's documentation
asks for (it logs an error for any other group size, since reading one record would decode
its whole group); ``uncompressed`` turns off the default compression. Read:
``ArrayRecordDataSource(paths)``: ``source[i]`` for random access and its batch path
``source.__getitems__(indices)`` (records grouped per file, files read on parallel threads)
as a row of its own; ``grain.MapDataset.source(source).to_iter_dataset()`` for the
sequential pass and ``.shuffle(seed=1234)`` before it for the shuffled pass, with Grain's
default read options (16 threads, a 500-record buffer); the batch path's sequential pass is
``__getitems__`` over consecutive blocks of 1,024 records (64 MiB at most). ArrayRecord
reads local files only (no S3).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import driver_common as c
import grain
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter

IMPORTED = c.vm_hwm()
FILE_BYTES = 64 << 20
WRITER_OPTIONS = "group_size:1,uncompressed"
SHUFFLE_SEED = 1234
BLOCK = 1024  # records per __getitems__ call of the batch path's sequential pass


def info() -> dict[str, Any]:
    return {
        "version": f"array-record {importlib.metadata.version('array-record')}, "
        f"grain {importlib.metadata.version('grain')}",
        "vmhwm_imports": IMPORTED,
    }


def paths(spec: c.Spec) -> list[str]:
    found = sorted(str(p) for p in Path(spec["data"]).glob("*.array_record"))
    c.check(bool(found), f"no ArrayRecord files in {spec['data']}")
    return found


def phase_write(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    target = spec["data"]
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    per_file = max(1, FILE_BYTES // inputs.workload.size)
    source = inputs.records()

    def write() -> None:
        writer = None
        for index, record in enumerate(source):
            if index % per_file == 0:
                if writer is not None:
                    writer.close()
                name = os.path.join(target, f"data-{index // per_file:05d}.array_record")
                writer = ArrayRecordWriter(name, WRITER_OPTIONS)
            writer.write(bytes(record))  # type: ignore[union-attr] # takes bytes only
        if writer is not None:
            writer.close()

    seconds, _ = c.timed(write)
    peak = c.vm_hwm()
    n = inputs.workload.count
    data = ArrayRecordDataSource(paths(spec))
    c.check(len(data) == n, f"{len(data)} records after writing {n}")
    disk, files = c.disk_usage(target)
    return c.pass_result(
        seconds, n, inputs.workload.total_bytes, vmhwm=peak, disk=disk, files=files
    )


def full_pass(spec: c.Spec, shuffle: bool) -> c.Result:
    inputs = c.Inputs(spec)
    data = ArrayRecordDataSource(paths(spec))

    block = max(1, min(BLOCK, c.BATCH_BYTES // inputs.workload.size))

    def blocks() -> Iterator[bytes]:
        for start in range(0, len(data), block):
            yield from data.__getitems__(range(start, min(start + block, len(data))))

    def stream() -> Any:
        if spec.get("batch"):
            return blocks()
        dataset = grain.MapDataset.source(data)
        if shuffle:
            dataset = dataset.shuffle(seed=SHUFFLE_SEED)
        return dataset.to_iter_dataset()

    return c.run_pass(spec, inputs, stream, ordered=not shuffle, what="MapDataset iteration")


def phase_random(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    data = ArrayRecordDataSource(paths(spec))
    return c.run_random(
        spec, inputs, data.__getitem__, data.__getitems__, what="ArrayRecordDataSource"
    )


PHASES: dict[str, c.Phase] = {
    "write": phase_write,
    "sequential": lambda spec: full_pass(spec, shuffle=False),
    "shuffled": lambda spec: full_pass(spec, shuffle=True),
    "random": phase_random,
}

if __name__ == "__main__":
    c.main(PHASES, info)
