"""copy_dataset() copies files or re-encodes records between any two locations, resumes
after an interruption, and never leaves a half-committed copy; dataset_info() and
benchmark() report what a dataset is and how it reads."""

from __future__ import annotations

import os
import random
from pathlib import Path

import fsspec
import pytest

from splitdataloader import SplitDataLoader, verify, write_split_data
from splitdataloader.bench import benchmark
from splitdataloader.cp import copy_dataset
from splitdataloader.errors import CodecConfigError, DatasetExistsError, DatasetNotFoundError
from splitdataloader.info import dataset_info
from splitdataloader.pack import pack, unpack


class Stop(KeyboardInterrupt):
    """Ctrl-C, raised from inside a copy."""


def make_records(count: int, seed: int = 0, size: int = 400) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(1, size)) for _ in range(count)]


def everything(url: str) -> list[bytes]:
    with SplitDataLoader(url) as loader:
        return loader.get_many(range(len(loader)))


def stored_files(url: str) -> dict[str, int]:
    fs, root = fsspec.core.url_to_fs(url)
    return {
        path[len(root.rstrip("/")) + 1 :]: int(info["size"])
        for path, info in fs.find(root, detail=True).items()
    }


def test_files_are_copied_to_any_backend_and_back(tmp_path: Path, dataset_url: str) -> None:
    source = str(tmp_path / "source")
    records = make_records(300)
    write_split_data(source, records[:200], splits=5)
    write_split_data(source, records[200:], splits=5)
    report = copy_dataset(source, dataset_url)
    assert (report.mode, report.files_copied, report.records) == ("files", 12, 300)
    assert stored_files(dataset_url) == stored_files(source)
    assert everything(dataset_url) == records
    again = copy_dataset(source, dataset_url)
    assert again.up_to_date
    assert again.files_copied == 0
    back = str(tmp_path / "back")
    copy_dataset(dataset_url, back)
    assert stored_files(back) == stored_files(source)


def test_an_older_copy_is_brought_up_to_date(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "source"), str(tmp_path / "dest")
    records = make_records(120)
    write_split_data(source, records[:100], splits=4)
    copy_dataset(source, dest)
    write_split_data(source, records[100:])
    report = copy_dataset(source, dest)
    # The new commit's 4 segments and index part; the first commit's files are there.
    assert (report.files_copied, report.files_skipped, report.records) == (5, 5, 120)
    assert everything(dest) == records


def test_an_interrupted_copy_commits_nothing_and_resumes(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "source"), str(tmp_path / "dest")
    records = make_records(200)
    write_split_data(source, records, splits=8)
    finished: list[int] = []

    def interrupt(records: int, nbytes: int) -> None:
        if records:  # a segment was copied whole
            finished.append(records)
        if len(finished) == 3:
            raise Stop

    with pytest.raises(Stop):
        copy_dataset(source, dest, progress=interrupt)
    assert not os.path.exists(os.path.join(dest, "manifest.json"))
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dest)
    resumed = copy_dataset(source, dest)
    assert resumed.files_skipped >= 3
    assert resumed.files_copied + resumed.files_skipped == 9
    assert everything(dest) == records
    assert verify(dest).ok


def test_another_dataset_is_replaced_only_when_asked(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "source"), str(tmp_path / "dest")
    write_split_data(source, make_records(50), splits=2)
    write_split_data(dest, make_records(30, seed=1), splits=3)
    old_files = set(stored_files(dest))
    with pytest.raises(DatasetExistsError):
        copy_dataset(source, dest)
    copy_dataset(source, dest, overwrite=True)
    assert everything(dest) == everything(source)
    assert not old_files & set(stored_files(dest)) - {"manifest.json"}
    with pytest.raises(ValueError, match="same location"):
        copy_dataset(source, source + "/")


def test_re_encoding_changes_codecs_bins_and_keys(tmp_path: Path, dataset_url: str) -> None:
    source = str(tmp_path / "source")
    records = make_records(150, size=2000)
    write_split_data(source, records, splits=4)
    key_a, key_b = os.urandom(32), os.urandom(32)
    secured = copy_dataset(
        source,
        dataset_url,
        codecs=["zstd", {"id": "aesgcm", "key_id": "a"}],
        bins=3,
        keys={"a": key_a},
    )
    assert (secured.mode, secured.records_copied, secured.records) == ("records", 150, 150)
    with SplitDataLoader(dataset_url, keys={"a": key_a}) as loader:
        assert loader.num_bins == 3
        assert loader.get_many(range(150)) == records
        assert loader.manifest is not None
        assert [c["id"] for c in loader.manifest.codecs] == ["zstd", "aesgcm"]
    rekeyed = str(tmp_path / "rekeyed")
    copy_dataset(
        dataset_url,
        rekeyed,
        codecs=[{"id": "aesgcm", "key_id": "b"}],
        keys={"a": key_a, "b": key_b},
    )
    with SplitDataLoader(rekeyed, keys={"b": key_b}) as loader:
        assert list(loader) == records
    plain = str(tmp_path / "plain")
    copy_dataset(rekeyed, plain, codecs=[], keys={"b": key_b})
    assert everything(plain) == records
    assert verify(plain).ok


def test_an_interrupted_re_encoding_resumes_after_its_last_commit(tmp_path: Path) -> None:
    source, dest = str(tmp_path / "source"), str(tmp_path / "dest")
    records = make_records(3000, size=100)
    write_split_data(source, records, splits=4)
    done: list[int] = []

    def interrupt(count: int, nbytes: int) -> None:
        done.append(count)
        if sum(done) >= 2000:
            raise Stop

    with pytest.raises(Stop):
        copy_dataset(source, dest, bins=2, commit_bytes=50_000, progress=interrupt)
    with SplitDataLoader(dest) as partial:
        committed = len(partial)
    assert 0 < committed < 2000
    resumed = copy_dataset(source, dest, bins=2, commit_bytes=50_000)
    assert resumed.resumed_from == committed
    assert resumed.records_copied == 3000 - committed
    assert everything(dest) == records
    assert copy_dataset(source, dest, bins=2).up_to_date


def test_a_trained_dictionary_does_not_carry_over(tmp_path: Path) -> None:
    source = str(tmp_path / "source")
    write_split_data(
        source, make_records(300), splits=2, codecs=[{"id": "zstd", "dictionary": True}]
    )
    with pytest.raises(CodecConfigError, match="name the codecs"):
        copy_dataset(source, str(tmp_path / "dest"), bins=3)
    copy_dataset(
        source, str(tmp_path / "dest"), bins=3, codecs=[{"id": "zstd", "dictionary": True}]
    )
    assert everything(str(tmp_path / "dest")) == everything(source)


def test_names_and_metadata_travel_with_a_re_encoded_copy(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a" * 100)
    (tree / "sub" / "b.txt").write_bytes(b"b" * 50)
    source, dest = str(tmp_path / "source"), str(tmp_path / "dest")
    pack([str(tree)], source, names=True, bins=2)
    copy_dataset(source, dest, codecs=["zlib"])
    unpack(dest, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"b" * 50
    with SplitDataLoader(dest) as loader:
        assert loader.manifest is not None
        extra = loader.manifest.extra
    assert extra["copied_from"]["url"] == source
    assert extra["pack"]["names"][0]["file"] in loader.manifest.resources


def test_info_counts_what_is_stored(tmp_path: Path, dataset_url: str) -> None:
    records = make_records(200, size=3000)
    write_split_data(dataset_url, records[:150], splits=6)
    write_split_data(dataset_url, records[150:], splits=2)
    info = dataset_info(dataset_url)
    assert (info.records, info.bins, info.segments, len(info.commits)) == (200, 6, 8, 2)
    assert info.stored_bytes == sum(stored_files(dataset_url).values())
    assert info.raw_bytes == info.payload_bytes == sum(map(len, records))
    assert info.raw_exact
    assert [c.records for c in info.commits] == [150, 50]
    compressed = str(tmp_path / "z")
    text = [b"the same words again and again " * 20 for _ in range(100)]
    write_split_data(compressed, text, splits=2, codecs=["zstd"])
    estimated = dataset_info(compressed, raw_sample=10)
    assert (estimated.raw_bytes, estimated.raw_exact) == (sum(map(len, text)), False)
    assert estimated.payload_bytes < sum(map(len, text)) / 5
    exact = dataset_info(compressed, raw_sample=None)
    assert (exact.raw_bytes, exact.raw_exact) == (sum(map(len, text)), True)


def test_bench_reads_what_it_says(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    records = make_records(500)
    write_split_data(url, records, splits=5)
    started: list[tuple[str, int]] = []
    counted: dict[str, int] = {}

    def start(phase: str, total: int) -> object:
        started.append((phase, total))
        return lambda r, b: counted.__setitem__(phase, counted.get(phase, 0) + r)

    report = benchmark(url, random_reads=300, batch_size=64, max_records=450, progress=start)
    assert [(p.name, p.records) for p in report.phases] == [
        ("random", 300),
        ("batch", 300),
        ("sequential", 450),
        ("shuffled", 450),
    ]
    assert started == [("random", 300), ("batch", 300), ("sequential", 450), ("shuffled", 450)]
    assert counted == {"random": 300, "batch": 300, "sequential": 450, "shuffled": 450}
    sizes = {len(r) for r in records}
    assert all(p.nbytes <= p.records * max(sizes) for p in report.phases)
    full = benchmark(url, phases=["sequential"])
    assert full.phases[0].nbytes == sum(map(len, records))
