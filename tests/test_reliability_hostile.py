"""Hostile input: unsafe names, absurd sizes, bombs, moved index entries, and fuzzing.

Hostile manifests (:mod:`reliability_hostile`) must be rejected with a specific error
before any I/O outside the dataset and within bounded memory. Index parts whose entries
were moved or swapped still point at intact records, only the wrong ones: the readers
must refuse them and keep serving the entries still in place. The parsers of untrusted
bytes (manifest, index parts, frames) are fuzzed with hypothesis through the targets of
:mod:`fuzz_targets`, and every case kept in ``fuzz_corpus/`` (found by the coverage-guided
fuzzer, ``fuzz_parsers.py``, or by hand) is replayed as a regression test.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from fuzz_targets import TARGETS, frames_target, index_target, manifest_target
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_model import to_fs
from reliability_hostile import run_cases
from reliability_kit import WRITERS, copy_dataset, read_out, stored_names

from splitdataloader.format import FRAME_HEADER, INDEX_ENTRY, SEGMENT_HEADER

CORPUS = Path(__file__).with_name("fuzz_corpus")
CORPUS_FILES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


# ---------------------------------------------------------------- hostile manifests


def test_hostile_manifests_are_rejected_inside_the_dataset(tmp_path: Path) -> None:
    stats = run_cases(tmp_path)
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.cases == stats.rejected > 100
    # Names are refused as unsafe, never resolved.
    assert stats.errors["UnsafeDatasetError"] >= 72


# ---------------------------------------------------------------- moved index entries


def index_of(target: str) -> tuple[Any, str, bytearray]:
    fs, root = to_fs(target)
    part = next(n for n in stored_names(target) if n.startswith("index/"))
    return fs, f"{root}/{part}", bytearray(fs.cat_file(f"{root}/{part}"))


def entry_span(k: int, count: int = 1) -> slice:
    start = 32 + INDEX_ENTRY.size * k
    return slice(start, start + INDEX_ENTRY.size * count)


def moved(data: bytes, source: int, target: int, count: int = 1) -> bytes:
    """``data`` with ``count`` entries from ``source`` copied over those at ``target``."""
    out = bytearray(data)
    out[entry_span(target, count)] = data[entry_span(source, count)]
    return bytes(out)


def swapped(data: bytes, first: int, second: int) -> bytes:
    out = bytearray(data)
    out[entry_span(first)], out[entry_span(second)] = (
        data[entry_span(second)],
        data[entry_span(first)],
    )
    return bytes(out)


# The first commit holds 40 records in 4 bins: entries 0-9 are bin 0's, 10-19 bin 1's.
MOVES = {
    "two entries of a bin swapped": lambda d: swapped(d, 0, 4),
    "two entries of different bins swapped": lambda d: swapped(d, 3, 13),
    "three entries copied over three others of their bin": lambda d: moved(d, 1, 5, 3),
    "bin 1's first entries copied over bin 0's": lambda d: moved(d, 10, 0, 4),
    "entries shifted by one within a bin": lambda d: moved(d, 0, 1, 8),
}


@pytest.mark.parametrize("move", list(MOVES))
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_moved_index_entries_are_refused(move: str, backend: str, tmp_path: Path) -> None:
    root = str(tmp_path) if backend == "local" else f"memory://moved-{uuid.uuid4().hex}"
    reference = WRITERS["v2"](f"{root}/reference", "v2")
    target = f"{root}/moved"
    copy_dataset(reference.url, target)
    fs, path, data = index_of(target)
    damaged = MOVES[move](bytes(data))
    assert damaged != bytes(data)
    fs.pipe_file(path, damaged)
    tally = read_out(reference, target, move)
    assert tally.failures == [], tally.failures[:5]
    assert tally.caught.get("CorruptDataError", 0) > 0
    # Records whose entries are still in place stay readable by random access.
    assert tally.correct >= len(reference.records) - 12


def test_one_damaged_entry_costs_one_record(tmp_path: Path) -> None:
    reference = WRITERS["v2"](str(tmp_path / "reference"), "v2")
    target = str(tmp_path / "damaged")
    copy_dataset(reference.url, target)
    fs, path, data = index_of(target)
    values = list(INDEX_ENTRY.unpack_from(data, 32 + 24 * 6))
    values[2] += 1  # entry 6's offset, one byte off
    INDEX_ENTRY.pack_into(data, 32 + 24 * 6, *values)
    fs.pipe_file(path, bytes(data))
    with reference.open(target) as loader:
        readable = []
        for i, record in enumerate(reference.records):
            try:
                readable.append(loader[i] == record)
            except Exception:
                readable.append(False)
    assert readable.count(False) == 1


# ---------------------------------------------------------------- fuzzing


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_corpus(path: Path) -> None:
    """Every kept case, replayed through its target."""
    TARGETS[path.parent.name](path.read_bytes())


def test_corpus_has_every_target() -> None:
    assert {p.parent.name for p in CORPUS_FILES} == set(TARGETS)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2**32 - 1, 2**62, 2**62 + 1, 2**63, 2**64])
    | st.floats(allow_nan=False)
    | st.sampled_from(["../x", "/etc/passwd", "s3://b/x", "data/x", "index/x", "meta/x", ""])
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def seed_manifest() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CORPUS / "manifest" / "seed-intact.json").read_bytes())
    document.pop("manifest_checksum")
    return document


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths_of(child, (*prefix, index))
    return found


SEED_PATHS = paths_of(seed_manifest())[1:]


@settings(max_examples=300)
@given(st.data())
def test_fuzz_manifest_fields(data: st.DataObject) -> None:
    """A valid manifest with one to three values replaced by arbitrary JSON."""
    document = seed_manifest()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(SEED_PATHS))
        parent: Any = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed the path
    manifest_target(json.dumps(document).encode())


@settings(max_examples=200)
@given(st.binary(max_size=2048))
def test_fuzz_manifest_bytes(data: bytes) -> None:
    manifest_target(data)


SEED_INDEX = (CORPUS / "index" / "seed-intact.idx").read_bytes()
extreme = st.sampled_from([0, 1, 15, 16, 31, 32, 2**31, 2**32 - 1, 2**63, 2**64 - 1])


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, 3), extreme | st.integers(0, 2**64 - 1)),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_index_entry_fields(changes: list[tuple[int, int, int]]) -> None:
    """Index entries with fields set to arbitrary and extreme values."""
    data = bytearray(SEED_INDEX)
    limits = [2**32 - 1, 2**32 - 1, 2**64 - 1, 2**64 - 1]
    for entry, field, value in changes:
        values = list(INDEX_ENTRY.unpack_from(data, 32 + 24 * entry))
        values[field] = min(value, limits[field])
        INDEX_ENTRY.pack_into(data, 32 + 24 * entry, *values)
    index_target(bytes(data))


@settings(max_examples=100)
@given(st.binary(max_size=400), st.integers(0, len(SEED_INDEX)))
def test_fuzz_index_bytes(patch: bytes, at: int) -> None:
    index_target(SEED_INDEX[:at] + patch + SEED_INDEX[at + len(patch) :])


frame = st.tuples(st.binary(max_size=40), st.booleans(), st.integers(0, 2**64 - 1))


@settings(max_examples=300)
@given(st.lists(frame, max_size=6), st.binary(max_size=20), st.integers(0, 2**32 - 1))
def test_fuzz_frames(frames: list[tuple[bytes, bool, int]], tail: bytes, bad_length: int) -> None:
    """Segments of frames, some with a damaged length (or check), then stray bytes."""
    data = bytearray(SEGMENT_HEADER.pack(b"SDLSEG02", 0, 0))
    for payload, damaged, checksum in frames:
        length = bad_length if damaged else len(payload)
        data += FRAME_HEADER.pack(length, len(payload) ^ 0xFFFF_FFFF, checksum) + payload
    frames_target(bytes(data + tail))


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_fuzz_frames_bytes(data: bytes) -> None:
    frames_target(b"SDLSEG02" + data)


def test_struct_sizes_match_the_format() -> None:
    assert (SEGMENT_HEADER.size, FRAME_HEADER.size, INDEX_ENTRY.size) == (16, 16, 24)
    assert struct.calcsize("<IIQQ") == INDEX_ENTRY.size
