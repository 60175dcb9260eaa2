"""Fuzz targets for the parsers of untrusted bytes: the manifest, index parts and frames.

Each target takes arbitrary bytes and asserts the parser's contract: it accepts them (and
what it returns is safe to use) or raises the library's own error for bad input, never
anything else, never a wrong record, in bounded time and memory. The hypothesis tests
(``test_reliability_hostile.py``), the replay of the saved corpus (``fuzz_corpus/``) and
the coverage-guided fuzzer (``fuzz_parsers.py``, with atheris) all call these.
"""

from __future__ import annotations

import contextlib
import struct

from fsspec.implementations.memory import MemoryFileSystem

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.checking import Frames
from splitdataloader.errors import DatasetFormatError, SplitDataError
from splitdataloader.format import (
    DATA_DIR,
    FRAME_HEADER,
    INDEX_DIR,
    META_DIR,
    SEGMENT_HEADER,
    check_index_header,
    parse_manifest,
)

MANIFEST_PATH = "memory://fuzz/manifest.json"
INDEX_DATASET = "memory://fuzz-index/ds"
INDEX_RECORDS = [b"record-%02d:" % k + bytes([k]) * (k * 3) for k in range(12)]


def manifest_target(data: bytes) -> None:
    """``parse_manifest`` accepts a manifest whose every name is a plain file under its
    folder, or raises a :class:`DatasetFormatError` naming the manifest."""
    try:
        manifest = parse_manifest(data, MANIFEST_PATH)
    except DatasetFormatError as err:
        if err.path != MANIFEST_PATH:
            raise AssertionError(f"the error names {err.path!r}, not the manifest") from err
        return
    for commit in manifest.commits:
        assert commit.index.name.startswith(f"{INDEX_DIR}/")
        assert all(s.name.startswith(f"{DATA_DIR}/") for s in commit.segments)
        assert all(0 <= s.bin < commit.bins for s in commit.segments)
    assert all(r.startswith(f"{META_DIR}/") for r in manifest.resources)
    for name in manifest.files():
        parts = name.split("/")
        assert ".." not in parts, name
        assert "" not in parts, name
        assert ":" not in name, name
    assert manifest.records == sum(c.records for c in manifest.commits)


def _index_dataset() -> tuple[MemoryFileSystem, str]:
    fs = MemoryFileSystem()
    root = INDEX_DATASET[len("memory://") :]
    if not fs.exists(f"{root}/manifest.json"):
        write_split_data(INDEX_DATASET, INDEX_RECORDS, splits=3, start_clean=True)
    (part,) = fs.ls(f"{root}/{INDEX_DIR}", detail=False)
    return fs, part


def index_target(data: bytes) -> None:
    """A dataset whose index part holds ``data`` gives its records or the library's
    errors: by index, in a batch, and bin by bin."""
    fs, part = _index_dataset()
    original = fs.cat_file(part)
    check_header = data[: len(original)]
    try:
        check_index_header(check_header, len(INDEX_RECORDS), part)
    except DatasetFormatError as err:
        if err.path != part:
            raise AssertionError(f"the error names {err.path!r}, not the index part") from err
    fs.pipe_file(part, data)
    try:
        with SplitDataLoader(INDEX_DATASET) as loader:
            # Each read either raises the library's error or gives the right bytes.
            for i, record in enumerate(INDEX_RECORDS):
                with contextlib.suppress(SplitDataError):
                    assert loader[i] == record, f"record {i} is wrong"
            with contextlib.suppress(SplitDataError):
                batch = loader.get_many([11, 0, 5, 5])
                assert batch == [INDEX_RECORDS[i] for i in (11, 0, 5, 5)], "get_many is wrong"
            with contextlib.suppress(SplitDataError):
                seen = list(loader.iterate_binwise())
                expected = [INDEX_RECORDS[j] for b in range(3) for j in range(b, 12, 3)]
                assert seen == expected, "a bin-wise pass is wrong"
    finally:
        fs.pipe_file(part, original)


def frames_target(data: bytes) -> None:
    """The frame parser delimits frames inside the bytes, or stops with a reason; it
    never raises, and never yields a frame that is not exactly where it says."""

    def fetch(name: str, start: int, end: int) -> bytes:
        return data[start:end]

    frames = Frames(fetch, "fuzz.seg", len(data), window=64)
    if not frames.header():
        assert frames.error is not None
        return
    end = SEGMENT_HEADER.size
    for count, (offset, length, checksum, payload) in enumerate(frames, 1):
        header = data[offset - FRAME_HEADER.size : offset]
        assert offset == end + FRAME_HEADER.size, "frames are not back to back"
        assert struct.unpack("<IIQ", header) == (length, length ^ 0xFFFF_FFFF, checksum)
        assert bytes(payload) == data[offset : offset + length]
        end = offset + length
        assert count <= len(data) // FRAME_HEADER.size
    assert frames.error is not None or end == len(data)
    if frames.error is not None:
        assert frames.error[0] == end, frames.error


TARGETS = {"manifest": manifest_target, "index": index_target, "frames": frames_target}
