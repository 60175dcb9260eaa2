"""Driver for splitdataloader: this package, and its 0.0.1 release, through the public API.

Defaults throughout: ``write_split_data(target, records)`` (256 bins in both versions),
``SplitDataLoader(path)``, ``loader[i]``, ``iterate_binwise()`` and
``iterate_binwise(shuffle=True)`` (this package is given ``seed=1234``; 0.0.1 takes no
seed). ``get_many`` (this package only) is the batch read path. On S3 this package reads
through fsspec/s3fs: whole segments (with read-ahead) when iterating, one ranged GET per
record for ``loader[i]``, merged concurrent ranged GETs for ``get_many``. 0.0.1 reads
local files only.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

import driver_common as c

import splitdataloader
from splitdataloader import SplitDataLoader, write_split_data

VERSION = importlib.metadata.version("splitdataloader")
LEGACY = VERSION == "0.0.1"
IMPORTED = c.vm_hwm()
SHUFFLE_SEED = 1234


def info() -> dict[str, Any]:
    return {
        "version": VERSION,
        "module": str(Path(splitdataloader.__file__ or "?").resolve().parent),
        "vmhwm_imports": IMPORTED,
    }


def open_loader(spec: c.Spec) -> Any:
    s3 = spec.get("s3")
    if LEGACY:
        c.check(s3 is None, "splitdataloader 0.0.1 reads local files only")
        return SplitDataLoader(spec["data"])
    if s3 is None:
        return SplitDataLoader(spec["data"])
    options = {
        "key": s3["key"],
        "secret": s3["secret"],
        "endpoint_url": s3["endpoint"],
        "config_kwargs": {"response_checksum_validation": "when_required"},
    }
    return SplitDataLoader(f"s3://{s3['bucket']}/{s3['prefix']}", storage_options=options)


def phase_write(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    target = spec["data"]
    shutil.rmtree(target, ignore_errors=True)
    source = inputs.records()
    seconds, _ = c.timed(lambda: write_split_data(target, source))
    peak = c.vm_hwm()
    loader = SplitDataLoader(target)
    n = inputs.workload.count
    c.check(len(loader) == n, f"len() is {len(loader)} after writing {n} records")
    for index in (0, n // 2, n - 1):
        c.check(loader[index] == inputs.record(index), f"record {index} reads back wrong")
    disk, files = c.disk_usage(target)
    return c.pass_result(
        seconds, n, inputs.workload.total_bytes, vmhwm=peak, disk=disk, files=files
    )


def full_pass(spec: c.Spec, shuffle: bool) -> c.Result:
    inputs = c.Inputs(spec)
    loader = open_loader(spec)

    def stream() -> Any:
        if shuffle and not LEGACY:
            return loader.iterate_binwise(shuffle=True, seed=SHUFFLE_SEED)
        return loader.iterate_binwise(shuffle=shuffle)

    return c.run_pass(spec, inputs, stream, ordered=False, what="iterate_binwise")


def phase_random(spec: c.Spec) -> c.Result:
    inputs = c.Inputs(spec)
    loader = open_loader(spec)
    c.check(len(loader) == inputs.workload.count, f"len() is {len(loader)}")
    get_many = None if LEGACY else loader.get_many
    return c.run_random(spec, inputs, loader.__getitem__, get_many, what="random reads")


PHASES: dict[str, c.Phase] = {
    "write": phase_write,
    "sequential": lambda spec: full_pass(spec, shuffle=False),
    "shuffled": lambda spec: full_pass(spec, shuffle=True),
    "random": phase_random,
}

if __name__ == "__main__":
    c.main(PHASES, info)
