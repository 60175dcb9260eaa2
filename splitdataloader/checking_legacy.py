"""Checking a splitdataloader 0.0.1 dataset as far as its format allows.

Owns :func:`check_legacy`, the 0.0.1 counterpart of :class:`~splitdataloader.checking.Checker`:
every entry of ``index.dat`` must point at a packet of its length in its bin file, and every
bin file must end on a packet boundary. 0.0.1 stored no checksums, so record bytes cannot be
checked. Problems are collected in a :class:`~splitdataloader.checking.ProblemList`; nothing
is raised for damaged data, and nothing is written. Reading 0.0.1 datasets is
:mod:`splitdataloader.legacy`'s job, not this module's.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from .checking import Counters, Problem, ProblemList, ProgressCallback
from .legacy import LEGACY_INDEX_NAME, legacy_bin_names
from .storage import Storage

__all__ = ["check_legacy"]

_LEGACY_TRIPLET = np.dtype([("bin", "<u4"), ("position", "<u4"), ("length", "<u4")])
_LEGACY_CHUNK = 1 << 20


def check_legacy(
    storage: Storage, problems: ProblemList, progress: ProgressCallback | None
) -> Counters:
    """Check a 0.0.1 dataset as far as its format allows: every index entry points at a
    packet of its length, and every bin file ends on a packet boundary.

    Returns the records the dataset holds (``Counters.records`` counts the checked ones).
    """
    report = Counters()
    max_problems = problems.limit
    index_size = storage.size(LEGACY_INDEX_NAME)
    if index_size % _LEGACY_TRIPLET.itemsize:
        problems.add(
            Problem(
                LEGACY_INDEX_NAME,
                None,
                f"{index_size % _LEGACY_TRIPLET.itemsize} bytes after its last entry",
            )
        )
    report.total = index_size // _LEGACY_TRIPLET.itemsize
    packets: dict[int, tuple[Any, Any]] = {}
    nbytes = 0
    for name in legacy_bin_names(storage):
        bin_id = int(name[3:11])
        starts, lengths, size = _legacy_packets(storage, name, problems)
        packets[bin_id] = (starts, lengths)
        nbytes += size
        report.files += 1
        if progress is not None:
            progress(0, size)
    report.files += 1
    checked = 0
    for lo in range(0, report.total, _LEGACY_CHUNK):
        hi = min(lo + _LEGACY_CHUNK, report.total)
        size = _LEGACY_TRIPLET.itemsize
        data = storage.read_range(LEGACY_INDEX_NAME, lo * size, hi * size)
        nbytes += len(data)
        entries = np.frombuffer(data, dtype=_LEGACY_TRIPLET)
        for bin_id in np.unique(entries["bin"]).tolist():
            picked = np.flatnonzero(entries["bin"] == bin_id)
            if bin_id not in packets:
                for k in picked[:max_problems].tolist():
                    problems.add(Problem(f"bin{bin_id:08d}.dat", lo + k, "its bin file is missing"))
                problems.count += max(0, len(picked) - max_problems)
                continue
            starts, lengths = packets[bin_id]
            positions = entries["position"][picked].astype(np.int64)
            at = np.searchsorted(starts, positions)
            inside = at < len(starts)
            found = np.zeros(len(picked), dtype=bool)
            found[inside] = (starts[at[inside]] == positions[inside]) & (
                lengths[at[inside]] == entries["length"][picked][inside]
            )
            for k in np.flatnonzero(~found).tolist():
                problems.add(
                    Problem(
                        f"bin{bin_id:08d}.dat",
                        lo + int(picked[k]),
                        f"no packet of {int(entries['length'][picked[k]])} bytes starts here",
                        int(positions[k]),
                    )
                )
        checked += hi - lo
        if progress is not None:
            progress(hi - lo, len(data))
    report.records = checked
    report.nbytes = nbytes
    return report


def _legacy_packets(storage: Storage, name: str, problems: ProblemList) -> tuple[Any, Any, int]:
    """Start offsets and lengths of a 0.0.1 bin file's packets."""
    data = storage.read_file(name)
    starts = array.array("q")
    lengths = array.array("q")
    position = 0
    end = len(data)
    while position < end:
        if position + 4 > end:
            problems.add(Problem(name, None, "ends inside a packet's length", position))
            break
        length = int.from_bytes(data[position : position + 4], "little")
        if position + 4 + length > end:
            problems.add(Problem(name, None, f"a packet of {length} bytes runs past the end"))
            break
        starts.append(position)
        lengths.append(length)
        position += 4 + length
    return np.frombuffer(starts, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64), end
