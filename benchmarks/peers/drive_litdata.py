"""Driver for LitData (``litdata``), through its public API.

Write: ``optimize(fn=..., inputs=range(count), output_dir=path, chunk_bytes="64MB")``, the
form of its documentation, with its defaults otherwise (no compression; one worker process
per core). ``fn`` returns ``{"data": bytes(record)}`` (the bytes serializer; a
``memoryview`` is not one of its types, so the copy is timed too). Read:
``StreamingDataset(path)`` with its defaults: ``dataset[i]``, iteration, and
``shuffle=True`` (default seed). On S3, ``StreamingDataset("s3://...", cache_dir=<empty
folder>, storage_options=...)``: iteration downloads whole chunks into the cache
(obstore); ``dataset[i]`` outside iteration fetches only that item's bytes with a ranged
GET (its ``on_demand_bytes`` path). Its default ``batch_decode="auto"`` decodes a batch of
neighbouring items for every ``dataset[i]``; the faster ``batch_decode=False`` is measured
as a row of its own.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from typing import Any

import driver_common as c
from litdata import StreamingDataset, optimize

IMPORTED = c.vm_hwm()
CHUNK_BYTES = "64MB"
INPUTS_ENV = "PEERS_BENCH_INPUTS"  # how optimize's worker processes find the records
_POOL: dict[str, Any] = {}  # filled in each worker process on first use


def info() -> dict[str, Any]:
    return {
        "version": importlib.metadata.version("litdata"),
        "vmhwm_imports": IMPORTED,
        # Its environment holds a torchvision that cannot load beside the CPU torch: the
        # report shows that these paths never import it.
        "torchvision_imported": "torchvision" in sys.modules,
    }


def payload(sample: dict[str, Any]) -> Any:
    return sample["data"]


def make_sample(index: int) -> dict[str, bytes]:
    """``fn`` of ``optimize``: the record at input position ``index``."""
    if not _POOL:
        inputs = c.Inputs(json.loads(os.environ[INPUTS_ENV]))
        _POOL["view"] = memoryview(inputs.pool)
        _POOL["offsets"] = inputs.workload.offsets()
        _POOL["size"] = inputs.workload.size
    offset = _POOL["offsets"][index]
    return {"data": bytes(_POOL["view"][offset : offset + _POOL["size"]])}


def open_dataset(spec: c.Spec, shuffle: bool = False) -> StreamingDataset:
    s3 = spec.get("s3")
    tuned = {"batch_decode": False} if spec.get("batch_decode") is False else {}
    if s3 is None:
        return StreamingDataset(spec["data"], shuffle=shuffle, **tuned)
    os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
    # Its chunk downloads go through obstore, which refuses a plain-http endpoint (the local
    # server's) unless told otherwise; a real S3 endpoint is https and needs no such line.
    os.environ["AWS_ALLOW_HTTP"] = "true"
    shutil.rmtree(s3["cache"], ignore_errors=True)
    options = {
        "endpoint_url": s3["endpoint"],
        "aws_access_key_id": s3["key"],
        "aws_secret_access_key": s3["secret"],
    }
    return StreamingDataset(
        f"s3://{s3['bucket']}/{s3['prefix']}",
        cache_dir=s3["cache"],
        storage_options=options,
        shuffle=shuffle,
        **tuned,
    )


def phase_write(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    target = spec["data"]
    shutil.rmtree(target, ignore_errors=True)
    os.environ[INPUTS_ENV] = json.dumps({"workload": spec["workload"], "pool": spec["pool"]})
    _POOL.clear()
    n = inputs.workload.count
    with c.TreePeak() as tree:  # optimize writes in worker processes
        seconds, _ = c.timed(
            lambda: optimize(
                fn=make_sample, inputs=list(range(n)), output_dir=target, chunk_bytes=CHUNK_BYTES
            )
        )
    peak = max(c.vm_hwm(), tree.peak)
    dataset = open_dataset(spec)
    c.check(len(dataset) == n, f"{len(dataset)} items after writing {n}")
    disk, files = c.disk_usage(target)
    return c.pass_result(
        seconds, n, inputs.workload.total_bytes, vmhwm=peak, disk=disk, files=files
    )


def full_pass(spec: c.Spec, shuffle: bool) -> c.Result:
    inputs = c.Inputs(spec)
    dataset = open_dataset(spec, shuffle=shuffle)  # the check runs a second epoch of it
    # optimize's workers interleave their chunks: the stored order is not the input order.
    return c.run_pass(spec, inputs, lambda: iter(dataset), payload, ordered=False, what="iteration")


def stored_order(spec: c.Spec, inputs: c.Inputs) -> list[int]:
    """Input position of every item in the dataset's own order, from an unshuffled pass over
    the local copy: ``optimize``'s workers interleave their chunks, so it is not the input
    order. The random reads are then checked against it, which also checks that ``dataset[i]``
    and iteration agree."""
    got = c.fingerprints(StreamingDataset(spec["data"]), payload)
    c.check_multiset(got, inputs, "StreamingDataset iteration")
    position = {key: i for i, key in enumerate(inputs.keys)}  # crc32: a rare tie is harmless
    return [position[key] for key in got]


def phase_random(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    dataset = open_dataset(spec)

    def positions(indices: list[int]) -> list[int]:
        order = stored_order(spec, inputs)
        return [order[i] for i in indices]

    return c.run_random(
        spec, inputs, lambda i: payload(dataset[i]), positions=positions, what="dataset[i]"
    )


PHASES: dict[str, c.Phase] = {
    "write": phase_write,
    "sequential": lambda spec: full_pass(spec, shuffle=False),
    "shuffled": lambda spec: full_pass(spec, shuffle=True),
    "random": phase_random,
}

if __name__ == "__main__":
    c.main(PHASES, info)
