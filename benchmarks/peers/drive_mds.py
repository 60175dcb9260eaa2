"""Driver for MosaicML Streaming (``mosaicml-streaming``), through its public API.

Write: ``MDSWriter(out=path, columns={"data": "bytes"})`` with its defaults (no
compression, no hashes, shards of at most 64 MiB), one ``write({"data": bytes(record)})``
per record (MDS refuses a ``memoryview``, so the copy is timed too). Read:
``StreamingDataset(local=path)`` with its defaults; ``dataset[i]`` for random access,
iteration for the sequential pass, ``shuffle=True`` (default algorithm ``py1e``, default
seed) for the shuffled pass. Iterating requires ``batch_size`` ("the same as the
DataLoader"; it also sets the read-ahead, ``predownload``, to 8 batches): 256 throughout. On
S3, ``StreamingDataset(remote="s3://...", local=<empty cache folder>)``: every shard that a
read touches is downloaded whole into the local cache (with boto3) before it is read, for
iteration and for ``dataset[i]`` alike.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from typing import Any

import driver_common as c
from streaming import MDSWriter, StreamingDataset
from streaming.base.util import clean_stale_shared_memory

IMPORTED = c.vm_hwm()
# A common per-device batch. Iterating sample by sample, 1 is 7x slower than 256 here (the
# reader thread may run only 8 samples ahead), and 2,048 about 2x faster.
BATCH_SIZE = 256


def info() -> dict[str, Any]:
    return {"version": importlib.metadata.version("mosaicml-streaming"), "vmhwm_imports": IMPORTED}


def payload(sample: dict[str, Any]) -> Any:
    return sample["data"]


def open_dataset(spec: c.Spec, shuffle: bool = False) -> StreamingDataset:
    clean_stale_shared_memory()
    s3 = spec.get("s3")
    options: dict[str, Any] = {"shuffle": shuffle, "batch_size": BATCH_SIZE}
    if s3 is None:
        return StreamingDataset(local=spec["data"], **options)
    # MDS reads the endpoint and the credentials from the environment (boto3).
    os.environ.update(
        {
            "S3_ENDPOINT_URL": s3["endpoint"],
            "AWS_ACCESS_KEY_ID": s3["key"],
            "AWS_SECRET_ACCESS_KEY": s3["secret"],
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
    )
    shutil.rmtree(s3["cache"], ignore_errors=True)
    return StreamingDataset(
        remote=f"s3://{s3['bucket']}/{s3['prefix']}", local=s3["cache"], **options
    )


def phase_write(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    target = spec["data"]
    shutil.rmtree(target, ignore_errors=True)
    source = inputs.records()

    def write() -> None:
        with MDSWriter(out=target, columns={"data": "bytes"}) as writer:
            for record in source:
                writer.write({"data": bytes(record)})  # MDS takes bytes only

    seconds, _ = c.timed(write)
    peak = c.vm_hwm()
    n = inputs.workload.count
    dataset = open_dataset(spec)
    c.check(len(dataset) == n, f"{len(dataset)} samples after writing {n}")
    for index in (0, n // 2, n - 1):
        c.check(payload(dataset[index]) == inputs.record(index), f"sample {index} is wrong")
    disk, files = c.disk_usage(target)
    return c.pass_result(
        seconds, n, inputs.workload.total_bytes, vmhwm=peak, disk=disk, files=files
    )


def full_pass(spec: c.Spec, shuffle: bool) -> c.Result:
    inputs = c.Inputs(spec)
    dataset = open_dataset(spec, shuffle=shuffle)  # the check runs a second epoch of it
    return c.run_pass(
        spec, inputs, lambda: iter(dataset), payload, ordered=not shuffle, what="iteration"
    )


def phase_random(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    dataset = open_dataset(spec)
    return c.run_random(spec, inputs, lambda i: payload(dataset[i]), what="dataset[i]")


PHASES: dict[str, c.Phase] = {
    "write": phase_write,
    "sequential": lambda spec: full_pass(spec, shuffle=False),
    "shuffled": lambda spec: full_pass(spec, shuffle=True),
    "random": phase_random,
}

if __name__ == "__main__":
    c.main(PHASES, info)
