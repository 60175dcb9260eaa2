"""pack() reads folders, lines, tar shards and 0.0.1 folders into records; unpack() writes
them back; sample records round-trip; bad input is named precisely."""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitdataloader import SplitDataLoader, decode_sample
from splitdataloader.errors import (
    DatasetExistsError,
    SampleFormatError,
    SourceFormatError,
    UnsafeDatasetError,
)
from splitdataloader.pack import pack, unpack
from splitdataloader.samples import encode_sample
from splitdataloader.sources import detect_kind

GOLDEN = Path(__file__).resolve().parent / "golden"

field_names = st.text(max_size=12)


@given(
    key=st.text(max_size=40),
    fields=st.dictionaries(field_names, st.binary(max_size=200), max_size=5),
)
def test_sample_records_round_trip(key: str, fields: dict[str, bytes]) -> None:
    record = encode_sample(key, list(fields.items()))
    sample = decode_sample(record)
    assert sample.key == key
    assert sample.fields == fields
    assert list(sample.fields) == list(fields)


@given(data=st.binary(max_size=64), cut=st.integers(0, 200))
def test_anything_else_is_not_a_sample(data: bytes, cut: int) -> None:
    record = encode_sample("k", [("a", b"xyz"), ("b", data)])
    damaged = record[: cut % len(record)]
    with pytest.raises(SampleFormatError):
        decode_sample(damaged, 7)
    with pytest.raises(SampleFormatError):
        decode_sample(record + b"!")
    with pytest.raises(SampleFormatError):
        encode_sample("k", [("a", b""), ("a", b"")])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    rng = random.Random(1)
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "b.tar.gz").write_bytes(rng.randbytes(3000))
    (root / "sub" / "deeper" / ".hidden").write_bytes(rng.randbytes(100))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_folder_round_trips_with_its_paths(tree: Path, dataset_url: str, tmp_path: Path) -> None:
    report = pack([str(tree)], dataset_url, paths=True, bins=3)
    expected = files_of(tree)
    assert (report.records, report.total_records, report.record_layout) == (4, 4, "sample")
    assert report.source_bytes == sum(len(data) for data in expected.values())
    with SplitDataLoader(dataset_url) as loader:
        samples = [decode_sample(record) for record in loader.get_many(range(len(loader)))]
    assert {s.key: s.fields[""] for s in samples} == expected
    out = tmp_path / "out"
    unpacked = unpack(dataset_url, out)
    assert (unpacked.files, unpacked.named_by) == (4, "sample")
    assert files_of(out) == expected
    with pytest.raises(FileExistsError):
        unpack(dataset_url, out)
    assert unpack(dataset_url, out, overwrite=True).files == 4


def test_names_are_stored_and_used_by_unpack(tree: Path, tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    report = pack([str(tree)], url, names=True, bins=2)
    expected = files_of(tree)
    assert report.names_file is not None
    assert report.record_layout == "raw"
    with SplitDataLoader(url) as loader:
        assert list(loader) == list(expected.values())
        assert loader.manifest is not None
        assert loader.manifest.extra["pack"]["names"] == [
            {"first": 0, "records": 4, "file": report.names_file}
        ]
    more = tmp_path / "more.txt"
    more.write_bytes(b"x\ny\n")
    appended = pack([str(more)], url, names=True, mode="append")
    assert (appended.first, appended.total_records) == (4, 6)
    unpack(url, tmp_path / "out")
    assert files_of(tmp_path / "out") == {**expected, "more.txt:1": b"x", "more.txt:2": b"y"}


def test_lines_and_json_lines(tmp_path: Path) -> None:
    text = tmp_path / "lines.txt"
    text.write_bytes(b"one\r\ntwo\n\nlast without newline")
    jsonl = tmp_path / "rows.jsonl.gz"
    rows = [{"a": k, "text": "é" * k} for k in range(50)]
    with gzip.open(jsonl, "wb") as handle:
        handle.write(b"".join(json.dumps(row).encode() + b"\n\n" for row in rows))
    url = str(tmp_path / "ds")
    report = pack([str(text), str(jsonl)], url, bins=4)
    assert report.kinds == ["text", "jsonl"]
    with SplitDataLoader(url) as loader:
        records = list(loader)
    assert records[:4] == [b"one", b"two", b"", b"last without newline"]
    assert [json.loads(r) for r in records[4:]] == rows


def test_a_line_that_is_not_json_is_named_and_nothing_is_committed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"ok": 1}\n{"ok": 2}\n{not json}\n')
    url = tmp_path / "ds"
    with pytest.raises(SourceFormatError, match=r"bad.jsonl line 3 is not JSON"):
        pack([str(bad)], str(url))
    assert not (url / "manifest.json").exists()
    assert list((url / "data").iterdir()) == []


def make_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_become_one_record_per_sample(tmp_path: Path) -> None:
    members = [
        ("train/000.jpg", b"jpeg-0"),
        ("train/000.cls", b"3"),
        ("train/000.seg.png", b"png-0"),
        ("train/001.jpg", b"jpeg-1"),
        ("train/001.cls", b"5"),
        ("notes", b"no extension"),
    ]
    make_shard(tmp_path / "shard-0.tar", members[:3])
    make_shard(tmp_path / "shard-1.tar", members[3:])
    url = str(tmp_path / "ds")
    report = pack([str(tmp_path / "shard-0.tar"), str(tmp_path / "shard-1.tar")], url)
    assert (report.records, report.record_layout) == (3, "sample")
    with SplitDataLoader(url) as loader:
        samples = [decode_sample(r) for r in loader]
    assert [(s.key, s.fields) for s in samples] == [
        ("train/000", {"jpg": b"jpeg-0", "cls": b"3", "seg.png": b"png-0"}),
        ("train/001", {"jpg": b"jpeg-1", "cls": b"5"}),
        ("notes", {"": b"no extension"}),
    ]
    unpack(url, tmp_path / "out")
    assert files_of(tmp_path / "out") == dict(members)


def test_a_repeated_field_in_a_shard_is_an_error(tmp_path: Path) -> None:
    make_shard(tmp_path / "s.tar", [("k.jpg", b"1"), ("k.jpg", b"2")])
    with pytest.raises(SourceFormatError, match=r"sample 'k' has the field 'jpg' twice"):
        pack([str(tmp_path / "s.tar")], str(tmp_path / "ds"))
    (tmp_path / "broken.tar").write_bytes(b"not a tar file at all" * 30)
    with pytest.raises(SourceFormatError, match=r"broken\.tar"):
        pack([str(tmp_path / "broken.tar")], str(tmp_path / "ds2"))


def test_unpack_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    make_shard(tmp_path / "evil.tar", [("../outside.txt", b"x")])
    url = str(tmp_path / "ds")
    pack([str(tmp_path / "evil.tar")], url)
    with pytest.raises(UnsafeDatasetError, match="not a plain relative path"):
        unpack(url, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_a_legacy_folder_is_packed_in_index_order(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(GOLDEN / "legacy-0.0.1", legacy)
    assert detect_kind(str(legacy)) == "legacy"
    url = str(tmp_path / "ds")
    report = pack([str(legacy)], url, bins=5, codecs=["zlib"])
    with SplitDataLoader(legacy) as old, SplitDataLoader(url) as new:
        assert report.records == len(old) == len(new) == 220
        assert list(new) == list(old)
        assert new.manifest is not None
        assert new.manifest.codecs[0]["id"] == "zlib"


def test_modes_and_kinds(tmp_path: Path, tree: Path) -> None:
    url = str(tmp_path / "ds")
    pack([str(tree)], url)
    with pytest.raises(DatasetExistsError):
        pack([str(tree)], url)
    with pytest.raises(SourceFormatError, match="holds raw records"):
        pack([str(tree)], url, paths=True, mode="append")
    replaced = pack([str(tree / "a.txt")], url, kind="text", mode="overwrite")
    assert replaced.total_records == 1
    with pytest.raises(SourceFormatError, match="cannot tell what kind"):
        detect_kind(str(tmp_path / "data.bin"))
    assert [detect_kind(n) for n in ("a.JSONL.gz", "s3://b/x.tar", "b.tgz", "c.csv.xz")] == [
        "jsonl",
        "tar",
        "tar",
        "text",
    ]
