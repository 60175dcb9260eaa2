"""Driver for WebDataset (``webdataset``), through its public API.

Write: ``ShardWriter(f"{path}/shard-%06d.tar")`` with its defaults (at most 100,000 samples
or 3 GB per shard, no compression), one ``write({"__key__": ..., "bin": bytes(record)})``
per record (``verbose=0`` only silences its progress lines). Read:
``WebDataset(shard_paths, shardshuffle=False)`` for the sequential pass, and
``WebDataset(shard_paths, shardshuffle=100).shuffle(1000)`` for the shuffled pass, as its
documentation shows (shards in random order, records through a 1,000-sample buffer: an
approximate shuffle). A tar file has no index, so WebDataset has no random access. On S3,
each shard is streamed whole by one GET through a ``pipe:`` URL, the form its documentation
gives for object stores: ``pipe:curl`` with curl's own SigV4 signing (``pipe:aws s3 cp ...
-``, the other documented form, hangs against the local server: its last ranged GET of a
shard is open-ended, which ``rclone serve s3`` never answers).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

import driver_common as c
import webdataset as wds

IMPORTED = c.vm_hwm()
SHARD_PATTERN = "shard-%06d.tar"


def info() -> dict[str, Any]:
    return {"version": importlib.metadata.version("webdataset"), "vmhwm_imports": IMPORTED}


def payload(sample: dict[str, Any]) -> Any:
    return sample["bin"]


def shard_urls(spec: c.Spec) -> list[str]:
    shards = sorted(p.name for p in Path(spec["data"]).glob("shard-*.tar"))
    c.check(bool(shards), f"no shards in {spec['data']}")
    s3 = spec.get("s3")
    if s3 is None:
        return [str(Path(spec["data"]) / name) for name in shards]
    # One signed GET per shard, streamed: curl signs it (SigV4) itself.
    curl = f"pipe:curl -s -f --aws-sigv4 aws:amz:us-east-1:s3 --user {s3['key']}:{s3['secret']}"
    return [f"{curl} {s3['endpoint']}/{s3['bucket']}/{s3['prefix']}/{name}" for name in shards]


def open_dataset(spec: c.Spec, shuffle: bool) -> Any:
    urls = shard_urls(spec)
    if shuffle:
        return wds.WebDataset(urls, shardshuffle=100).shuffle(1000)
    return wds.WebDataset(urls, shardshuffle=False)


def phase_write(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    target = spec["data"]
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    source = inputs.records()

    def write() -> None:
        with wds.ShardWriter(os.path.join(target, SHARD_PATTERN), verbose=0) as sink:
            for index, record in enumerate(source):
                # Its default encoder takes bytes, not a memoryview: the copy is timed too.
                sink.write({"__key__": f"{index:09d}", "bin": bytes(record)})

    seconds, _ = c.timed(write)
    peak = c.vm_hwm()
    disk, files = c.disk_usage(target)
    return c.pass_result(
        seconds,
        inputs.workload.count,
        inputs.workload.total_bytes,
        vmhwm=peak,
        disk=disk,
        files=files,
    )


def full_pass(spec: c.Spec, shuffle: bool) -> c.Result:
    inputs = c.Inputs(spec)
    return c.run_pass(
        spec,
        inputs,
        lambda: iter(open_dataset(spec, shuffle)),
        payload,
        ordered=not shuffle,
        what="WebDataset iteration",
    )


PHASES: dict[str, c.Phase] = {
    "write": phase_write,
    "sequential": lambda spec: full_pass(spec, shuffle=False),
    "shuffled": lambda spec: full_pass(spec, shuffle=True),
}

if __name__ == "__main__":
    c.main(PHASES, info)
