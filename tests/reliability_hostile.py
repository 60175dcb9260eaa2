"""Hostile manifests: names that escape the dataset, absurd sizes, bombs, unknown codecs.

Each case edits the manifest of an intact dataset (and drops its checksum, as a hostile
writer would recompute or omit it), then opens the dataset and reads it a little. Every
case must end in a specific error of the library before any file outside the dataset is
touched, and within a bounded amount of memory. :func:`run_cases` watches both: every
``open`` and directory listing of the process (through an audit hook) must stay inside
the dataset's folder, and the peak of traced allocations stays under
:func:`memory_limit`: a fixed allowance plus what parsing the manifest takes (the
manifest's size bounds it), or plus the manifest's size limit for a manifest over it.
"""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import SplitDataError
from splitdataloader.format import MAX_MANIFEST_BYTES

MEMORY_ALLOWANCE = 32 << 20
#: Python objects parsed from JSON take several times the bytes of their text.
JSON_EXPANSION = 8


def memory_limit(manifest_size: int) -> int:
    """The most a hostile manifest of ``manifest_size`` bytes may make a reader allocate."""
    if manifest_size > MAX_MANIFEST_BYTES:  # read up to the limit, rejected unparsed
        return MEMORY_ALLOWANCE + MAX_MANIFEST_BYTES + 1
    return MEMORY_ALLOWANCE + JSON_EXPANSION * manifest_size


Edit = Callable[[dict[str, Any]], Any]

UNSAFE_NAMES = [
    "../secret.txt",
    "../../secret.txt",
    "data/../../secret.txt",
    "data/../manifest.json",
    "{root}/../secret.txt",
    "/etc/passwd",
    "//etc/passwd",
    "s3://bucket/data/x.seg",
    "file:///etc/passwd",
    "memory://elsewhere/x",
    "simplecache::file:///etc/passwd",
    "data//x.seg",
    "data/",
    "data/.",
    "./data/x.seg",
    "data/x.seg/..",
    "C:\\secret.txt",
    "data\\..\\..\\secret.txt",
    "\\\\host\\share\\x",
    "data/x\x00.seg",
    "data/x\n.seg",
    "data/~/x",
    "",
    "data/" + "x" * 5000,
]

NAME_FIELDS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "segment": lambda doc, name: doc["commits"][0]["segments"][0].__setitem__("name", name),
    "index": lambda doc, name: doc["commits"][0]["index"].__setitem__("name", name),
    "resource": lambda doc, name: doc.__setitem__("resources", [name]),
}


def _commit(doc: dict[str, Any]) -> dict[str, Any]:
    commit: dict[str, Any] = doc["commits"][0]
    return commit


def _huge_commit(doc: dict[str, Any]) -> None:
    """A valid manifest declaring 2**40 records: its files cannot hold them."""
    records = 1 << 40
    commit = _commit(doc)
    bins = commit["bins"]
    commit["records"] = records
    commit["index"]["size"] = 32 + 24 * records
    for k, segment in enumerate(commit["segments"]):
        share = records // bins + (1 if k < records % bins else 0)
        segment.update(bin=k, records=share, size=16 + 16 * share + (1 << 50))
    commit["segments"] = commit["segments"][:bins]
    doc["records"] = records


SIZE_CASES: dict[str, Edit] = {
    "records 2**62 + 1": lambda doc: doc.__setitem__("records", (1 << 62) + 1),
    "records -1": lambda doc: doc.__setitem__("records", -1),
    "records 2**64": lambda doc: _commit(doc).__setitem__("records", 1 << 64),
    "records as a float": lambda doc: doc.__setitem__("records", float(doc["records"])),
    "records as true": lambda doc: doc.__setitem__("records", True),
    "bins 0": lambda doc: doc.__setitem__("bins", 0),
    "bins 2**20 + 1": lambda doc: doc.__setitem__("bins", (1 << 20) + 1),
    "commit bins 2**31": lambda doc: _commit(doc).__setitem__("bins", 1 << 31),
    "segment size -1": lambda doc: _commit(doc)["segments"][0].__setitem__("size", -1),
    "segment size 2**63": lambda doc: _commit(doc)["segments"][0].__setitem__("size", 1 << 63),
    "segment bin -1": lambda doc: _commit(doc)["segments"][0].__setitem__("bin", -1),
    "segment bin past the bins": lambda doc: _commit(doc)["segments"][0].__setitem__("bin", 99),
    "segment records beyond its size": lambda doc: _commit(doc)["segments"][0].__setitem__(
        "records", 1 << 40
    ),
    "index size off by one": lambda doc: _commit(doc)["index"].__setitem__(
        "size", _commit(doc)["index"]["size"] + 1
    ),
    "layout start -1": lambda doc: _commit(doc)["layout"].__setitem__("start", -1),
    "layout start = bins": lambda doc: _commit(doc)["layout"].__setitem__(
        "start", _commit(doc)["bins"]
    ),
    "layout order not a permutation": lambda doc: _commit(doc)["layout"].__setitem__(
        "order", [0] * _commit(doc)["bins"]
    ),
    "layout order of 2**20 bins": lambda doc: _commit(doc)["layout"].__setitem__(
        "order", list(range(1 << 20))
    ),
    "unknown layout type": lambda doc: _commit(doc)["layout"].__setitem__("type", "hash"),
    "2**40 records declared, valid otherwise": _huge_commit,
    "generation -1": lambda doc: doc.__setitem__("generation", -1),
    "session not hexadecimal": lambda doc: _commit(doc).__setitem__("session", "../../x"),
    "commits not a list": lambda doc: doc.__setitem__("commits", {"0": _commit(doc)}),
    "unknown codec": lambda doc: doc.__setitem__("codecs", [{"id": "no-such-codec"}]),
    "codec without an id": lambda doc: doc.__setitem__("codecs", [{"level": 3}]),
    "codec id not a string": lambda doc: doc.__setitem__("codecs", [{"id": ["zstd"]}]),
    "codec option of the wrong type": lambda doc: doc.__setitem__(
        "codecs", [{"id": "zstd", "level": "high"}]
    ),
    "codec dictionary outside meta/": lambda doc: doc.__setitem__(
        "codecs",
        [
            {
                "id": "zstd",
                "dictionary": True,
                "dictionary_name": "../secret.txt",
                "dictionary_id": 1,
                "dictionary_sha256": "0" * 64,
            }
        ],
    ),
    "unknown checksum": lambda doc: doc.__setitem__("checksum", "md5"),
    "future format version": lambda doc: doc.__setitem__("format_version", 3),
    "manifest checksum of the wrong form": lambda doc: doc.__setitem__(
        "manifest_checksum", "md5:0"
    ),
}

#: Whole manifests: (name, bytes).
RAW_CASES: dict[str, Callable[[], bytes]] = {
    "nested 100,000 deep": lambda: b"[" * 100_000 + b"]" * 100_000,
    "an integer of 5,000 digits": lambda: b'{"records": ' + b"9" * 5000 + b"}",
    "NaN and Infinity": lambda: (
        b'{"format": "splitdataloader", "format_version": 2, '
        b'"checksum": "xxh3_64", "records": NaN, "bins": Infinity, "commits": []}'
    ),
    "not UTF-8": lambda: b'{"format": "\xff\xfe"}',
    "a JSON list": lambda: b"[1, 2, 3]",
    "empty": lambda: b"",
    "over 64 MiB": lambda: b'{"pad": "' + b" " * MAX_MANIFEST_BYTES + b'"}',
}


@dataclass
class HostileStats:
    cases: int = 0
    rejected: int = 0
    #: Error classes the rejections raised.
    errors: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


_WATCHED: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHED and event in ("open", "os.listdir", "os.scandir"):
        path = args[0] if args else None
        if isinstance(path, (str, bytes, os.PathLike)):
            _WATCHED[-1].append(os.fsdecode(path))


_HOOKED: list[bool] = []


def watch_paths() -> list[str]:
    """Start recording the paths this process opens or lists (stop with :func:`unwatch`)."""
    if not _HOOKED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: one, gated by _WATCHED
        _HOOKED.append(True)
    _WATCHED.append([])
    return _WATCHED[-1]


def unwatch() -> None:
    _WATCHED.pop()


def base_document(folder: Path) -> dict[str, Any]:
    """The manifest of a small intact dataset in ``folder``."""
    write_split_data(str(folder), [b"record %d" % k for k in range(9)], splits=3)
    document: dict[str, Any] = json.loads((folder / "manifest.json").read_bytes())
    document.pop("manifest_checksum")
    return document


def try_case(folder: Path, manifest: bytes, label: str, stats: HostileStats) -> None:
    """Write ``manifest`` into the dataset in ``folder``, open it and read from it."""
    (folder / "manifest.json").write_bytes(manifest)
    limit = memory_limit(len(manifest))
    del manifest
    outside = str(folder.parent)
    inside = str(folder) + os.sep
    stats.cases += 1
    paths = watch_paths()
    tracemalloc.start()
    error: BaseException | None = None
    try:
        with SplitDataLoader(str(folder)) as loader:
            if len(loader):
                loader[0]
                loader[len(loader) - 1]
                loader.get_many([0, len(loader) - 1])
                next(iter(loader.iterate_binwise()))
                next(iter(loader.iterate_binwise(shuffle=True, seed=1)))
    except Exception as err:
        error = err
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        unwatch()
    escaped = [p for p in paths if p.startswith(outside) and not p.startswith(inside)]
    escaped = [p for p in escaped if p != str(folder)]
    if escaped:
        stats.failures.append(f"{label}: touched {escaped[:3]} outside the dataset")
    if peak > limit:
        stats.failures.append(f"{label}: {peak >> 20} MiB allocated at the peak")
    if error is None:
        stats.failures.append(f"{label}: read without an error")
    elif not isinstance(error, SplitDataError):
        stats.failures.append(f"{label}: unspecific {type(error).__name__}: {error}")
    else:
        stats.rejected += 1
        name = type(error).__name__
        stats.errors[name] = stats.errors.get(name, 0) + 1


def run_cases(scratch: Path) -> HostileStats:
    """Every hostile case, each on a fresh copy of a small dataset under ``scratch``."""
    stats = HostileStats()
    (scratch / "secret.txt").write_bytes(b"outside the dataset")
    number = 0

    def fresh() -> tuple[Path, dict[str, Any]]:
        nonlocal number
        number += 1
        folder = scratch / f"case-{number}"
        return folder, base_document(folder)

    for field_name, put in NAME_FIELDS.items():
        for name in UNSAFE_NAMES:
            folder, document = fresh()
            put(document, name.replace("{root}", str(folder)))
            raw = json.dumps(document).encode()
            try_case(folder, raw, f"{field_name} named {name!r}", stats)
    for label, edit in SIZE_CASES.items():
        folder, document = fresh()
        edit(document)
        try_case(folder, json.dumps(document).encode(), label, stats)
    for label, make in RAW_CASES.items():
        folder, _ = fresh()
        try_case(folder, make(), label, stats)
    return stats
