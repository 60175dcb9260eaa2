"""verify() finds every damaged byte and names the record; repair() rebuilds index parts
from the frames and removes leftovers, never a file a commit or a pending part needs."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitdataloader import SplitDataLoader, SplitWriter, checking, repair, verify, write_split_data
from splitdataloader.errors import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    KeyUnavailableError,
    ReadOnlyDatasetError,
    UncommittedDatasetError,
)
from splitdataloader.parts import PartWriter

GOLDEN = Path(__file__).resolve().parent / "golden"


def make_records(count: int, seed: int = 0) -> list[bytes]:
    """Distinct records (each starts with 16 random bytes) of varied sizes."""
    rng = random.Random(seed)
    return [rng.randbytes(16) + rng.randbytes(rng.randrange(0, 300)) for _ in range(count)]


def files(url: str) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def listed(url: str, folder: str) -> list[str]:
    fs, root = files(url)
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{folder}", detail=False))
    except FileNotFoundError:
        return []


def locate(url: str, record: bytes) -> tuple[str, int]:
    """The segment holding ``record`` and the offset of its bytes, found by searching."""
    fs, root = files(url)
    for name in listed(url, "data"):
        data = fs.cat_file(f"{root}/data/{name}")
        at = data.find(record)
        if at >= 0:
            return f"data/{name}", at
    raise AssertionError("record not found in any segment")


def flip(url: str, name: str, offset: int, mask: int = 0x01) -> None:
    fs, root = files(url)
    data = bytearray(fs.cat_file(f"{root}/{name}"))
    data[offset] ^= mask
    fs.pipe_file(f"{root}/{name}", bytes(data))


def manifest(url: str) -> dict[str, Any]:
    fs, root = files(url)
    document: dict[str, Any] = json.loads(fs.cat_file(f"{root}/manifest.json"))
    return document


def write_two_commits(url: str) -> list[bytes]:
    first, second = make_records(400, seed=1), make_records(60, seed=2)
    write_split_data(url, first, splits=7)
    write_split_data(url, second, splits=3)
    return first + second


def test_a_sound_dataset_verifies(dataset_url: str) -> None:
    records = write_two_commits(dataset_url)
    progress: list[tuple[int, int]] = []
    report = verify(dataset_url, progress=lambda r, b: progress.append((r, b)))
    assert report.ok, report.problems
    assert report.problems == []
    assert report.problem_count == 0
    assert report.records == report.records_checked == len(records)
    segments, indexes = listed(dataset_url, "data"), listed(dataset_url, "index")
    assert (len(segments), len(indexes)) == (7 + 3, 2)
    assert report.files_checked == len(segments) + len(indexes)
    assert sum(r for r, _ in progress) == len(records)
    assert sum(b for _, b in progress) <= report.bytes_checked
    assert report.unreferenced == []
    assert report.format_version == 2


def test_a_flipped_byte_names_its_record(dataset_url: str) -> None:
    records = write_two_commits(dataset_url)
    damaged = 123
    segment, offset = locate(dataset_url, records[damaged])
    flip(dataset_url, segment, offset + 5)
    report = verify(dataset_url)
    assert not report.ok
    [problem] = report.problems
    assert (problem.record, problem.file, problem.offset) == (damaged, segment, offset)
    assert "checksum" in problem.reason
    assert not problem.repairable
    with SplitDataLoader(dataset_url) as loader, pytest.raises(ChecksumMismatchError):
        loader[damaged]
    after = repair(dataset_url, grace_period=0)
    assert [p.record for p in after.unrepaired] == [damaged]
    assert not after.ok
    assert after.rebuilt == []
    assert not after.committed


def test_a_damaged_frame_header_loses_the_rest_of_its_segment(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    records = make_records(100, seed=3)
    write_split_data(url, records, splits=4)
    damaged = 41  # bin 1; the records of bin 1 from here on cannot be delimited
    segment, offset = locate(url, records[damaged])
    flip(url, segment, offset - 16)  # the frame's length field
    report = verify(url)
    lost = len([j for j in range(damaged, len(records)) if j % 4 == damaged % 4])
    [problem] = report.problems
    assert (problem.record, problem.file, problem.offset) == (damaged, segment, offset - 16)
    assert "length check" in problem.reason
    assert f"the {lost} records" in problem.reason
    assert report.records_checked == len(records) - lost


def test_repair_rebuilds_a_lost_index_part(dataset_url: str) -> None:
    records = write_two_commits(dataset_url)
    before = manifest(dataset_url)
    lost = before["commits"][0]["index"]["name"]
    fs, root = files(dataset_url)
    fs.rm_file(f"{root}/{lost}")
    report = verify(dataset_url)
    assert [(p.file, p.repairable) for p in report.problems] == [(lost, True)]
    dry = repair(dataset_url, dry_run=True, grace_period=0)
    assert [(r.old, r.new) for r in dry.rebuilt] == [(lost, None)]
    assert manifest(dataset_url) == before
    fixed = repair(dataset_url, grace_period=0)
    assert fixed.ok
    assert fixed.committed
    [rebuilt] = fixed.rebuilt
    assert (rebuilt.commit, rebuilt.old, rebuilt.records) == (0, lost, 400)
    after = manifest(dataset_url)
    assert after["generation"] == before["generation"] + 1
    assert after["commits"][0]["index"]["name"] == rebuilt.new != lost
    assert after["commits"][1] == before["commits"][1]
    assert verify(dataset_url).ok
    with SplitDataLoader(dataset_url) as loader:
        assert loader.get_many(range(len(loader))) == records
        assert loader[417] == records[417]
        assert sorted(loader.iterate_binwise(shuffle=True, seed=2)) == sorted(records)


@pytest.mark.parametrize("backend", ["local", "memory"], indirect=True)
def test_repair_fixes_damaged_index_entries(dataset_url: str) -> None:
    records = write_two_commits(dataset_url)
    name = manifest(dataset_url)["commits"][1]["index"]["name"]
    fs, root = files(dataset_url)
    data = bytearray(fs.cat_file(f"{root}/{name}"))
    entry = 32 + 24 * 17
    data[entry + 8 : entry + 16] = (12345).to_bytes(8, "little")  # the offset field
    fs.pipe_file(f"{root}/{name}", bytes(data))
    report = verify(dataset_url)
    [problem] = report.problems
    assert (problem.file, problem.offset, problem.repairable) == (name, entry, True)
    assert "offset" in problem.reason
    assert problem.record is not None
    assert problem.record >= 400  # a record of the second commit
    fixed = repair(dataset_url, grace_period=0)
    assert fixed.ok
    assert [r.old for r in fixed.rebuilt] == [name]
    assert verify(dataset_url).ok
    with SplitDataLoader(dataset_url) as loader:
        assert loader[problem.record] == records[problem.record]
        assert list(loader) == records
    assert name not in listed(dataset_url, "index")  # the damaged part was removed


def test_a_missing_segment_cannot_be_rebuilt_and_is_reported(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    records = make_records(50, seed=4)
    write_split_data(url, records, splits=5)
    document = manifest(url)
    segment = next(s for s in document["commits"][0]["segments"] if s["bin"] == 2)["name"]
    os.unlink(os.path.join(url, segment))
    os.unlink(os.path.join(url, document["commits"][0]["index"]["name"]))
    report = verify(url)
    assert {p.file for p in report.problems} == {segment, document["commits"][0]["index"]["name"]}
    missing = next(p for p in report.problems if p.file == segment)
    assert missing.record == 2
    assert "10 records are lost" in missing.reason
    result = repair(url, grace_period=0)
    assert not result.ok
    assert not result.committed
    assert result.rebuilt == []
    assert any("cannot be rebuilt" in p.reason for p in result.unrepaired)
    assert manifest(url) == document


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_repair_removes_old_leftovers_and_keeps_what_may_be_in_flight(tmp_path: Path) -> None:
    url = tmp_path / "ds"
    records = make_records(30)
    write_split_data(str(url), records, splits=3)
    with PartWriter(str(url), "pending-part", bins=3) as part:
        part.write_many(make_records(10, seed=9))
    part_files = listed(str(url), "data") + listed(str(url), "index")
    old = [url / "data" / "dead.seg", url / "index" / "dead.idx", url / "manifest.json.tmp-1"]
    fresh = [url / "data" / "fresh.seg", url / "meta" / "fresh"]
    (url / "meta").mkdir()
    for path in old + fresh:
        path.write_bytes(b"leftover")
    day = 24 * 3600
    for path in [*old, *(url / "data").iterdir(), *(url / "index").iterdir()]:
        if path not in fresh:
            age(path, 2 * day)  # committed files and the pending part's are old too
    report = verify(str(url))
    assert report.ok
    expected_old = sorted(["data/dead.seg", "index/dead.idx", "manifest.json.tmp-1"])
    assert report.unreferenced == sorted([*expected_old, "data/fresh.seg", "meta/fresh"])

    dry = repair(str(url), dry_run=True)
    assert dry.removed == expected_old
    assert sorted(dry.kept) == ["data/fresh.seg", "meta/fresh"]
    assert all(path.exists() for path in old + fresh)

    done = repair(str(url), grace_period=day)
    assert done.removed == expected_old
    assert not any(path.exists() for path in old)
    assert all(path.exists() for path in fresh)
    assert "grace period" in " ".join(done.notes)
    # Nothing the commit or the pending part needs was touched.
    assert set(part_files) <= set(listed(str(url), "data") + listed(str(url), "index"))
    assert verify(str(url)).ok
    with SplitDataLoader(str(url)) as loader:
        assert list(loader) == records


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_repair_on_s3_uses_the_objects_age(dataset_url: str) -> None:
    write_split_data(dataset_url, make_records(20), splits=2)
    fs, root = files(dataset_url)
    fs.pipe_file(f"{root}/data/leftover.seg", b"x")
    kept = repair(dataset_url)  # just written: within the default grace period
    assert kept.kept == ["data/leftover.seg"]
    assert kept.removed == []
    removed = repair(dataset_url, grace_period=0)
    assert removed.removed == ["data/leftover.seg"]
    assert "leftover.seg" not in listed(dataset_url, "data")
    assert verify(dataset_url).ok


def test_leftovers_of_a_write_that_never_committed(tmp_path: Path) -> None:
    url = tmp_path / "ds"
    (url / "data").mkdir(parents=True)
    (url / "data" / "abc-c0000-b000000-p000.seg").write_bytes(b"SDLSEG02" + bytes(8))
    with pytest.raises(UncommittedDatasetError):
        verify(str(url))
    report = repair(str(url), grace_period=0)
    assert report.removed == ["data/abc-c0000-b000000-p000.seg"]
    with pytest.raises(DatasetNotFoundError):
        verify(str(url))
    with pytest.raises(DatasetNotFoundError):
        repair(str(url))


def test_a_legacy_dataset_is_checked_as_far_as_its_format_allows(tmp_path: Path) -> None:
    url = tmp_path / "legacy"
    shutil.copytree(GOLDEN / "legacy-0.0.1", url)
    report = verify(str(url))
    assert report.ok
    assert report.format_version == "0.0.1"
    assert report.records == report.records_checked == 220
    index = bytearray((url / "index.dat").read_bytes())
    index[12 * 77 + 8] ^= 0x40  # the length of record 77
    (url / "index.dat").write_bytes(bytes(index))
    damaged = verify(str(url))
    assert [p.record for p in damaged.problems] == [77]
    with pytest.raises(ReadOnlyDatasetError):
        repair(str(url))


def test_encrypted_records_are_decoded_when_the_key_is_at_hand(tmp_path: Path) -> None:
    url = str(tmp_path / "secure")
    key = os.urandom(32)
    records = make_records(40)
    write_split_data(
        url, records, splits=3, codecs=[{"id": "aesgcm", "key_id": "k"}], keys={"k": key}
    )
    with_key = verify(url, keys={"k": key})
    assert with_key.ok
    assert with_key.decoded
    without = verify(url, key_providers=[])
    assert without.ok
    assert not without.decoded
    assert "not decoded" in without.notes[0]
    with pytest.raises(KeyUnavailableError):
        verify(url, key_providers=[], decode=True)
    wrong = verify(url, keys={"k": os.urandom(32)}, decode=False)
    assert wrong.ok
    assert not wrong.decoded


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset of two commits, copied for each example."""
    url = tmp_path_factory.mktemp("pristine") / "ds"
    with SplitWriter(str(url), bins=3) as writer:
        writer.write_many(make_records(30, seed=5))
        writer.commit()
        writer.write_many(make_records(8, seed=6))
    return url


@given(choice=st.integers(0, 10**9), position=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_any_flipped_bit_in_any_data_or_index_file_is_found(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, choice: int, position: int, bit: int
) -> None:
    url = tmp_path_factory.mktemp("flip") / "ds"
    shutil.copytree(pristine, url)
    names = [f"data/{n}" for n in listed(str(url), "data")]
    names += [f"index/{n}" for n in listed(str(url), "index")]
    name = names[choice % len(names)]
    size = (url / name).stat().st_size
    flip(str(url), name, position % size, 1 << bit)
    report = verify(str(url))
    assert not report.ok
    assert any(p.file == name for p in report.problems), report.problems


@pytest.mark.parametrize("window", [7, 64, 1000])
@pytest.mark.parametrize("backend", ["local", "memory"], indirect=True)
def test_frames_that_cross_read_windows_are_checked_alike(
    dataset_url: str, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checking, "WINDOW_BYTES", window)
    records = write_two_commits(dataset_url)
    report = verify(dataset_url)
    assert report.ok
    assert report.records_checked == len(records)
    damaged = 222
    segment, offset = locate(dataset_url, records[damaged])
    flip(dataset_url, segment, offset + len(records[damaged]) - 1)
    name = manifest(dataset_url)["commits"][0]["index"]["name"]
    fs, root = files(dataset_url)
    fs.rm_file(f"{root}/{name}")
    found = verify(dataset_url)
    assert [(p.file, p.record) for p in found.problems] == [(name, None), (segment, damaged)]
    fixed = repair(dataset_url, grace_period=0)
    assert [p.record for p in fixed.unrepaired] == [damaged]
    assert len(fixed.rebuilt) == 1
    with SplitDataLoader(dataset_url) as loader:
        assert [loader[i] for i in range(len(loader)) if i != damaged] == [
            r for i, r in enumerate(records) if i != damaged
        ]
