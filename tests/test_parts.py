"""Parallel writing: parts written apart, joined by one commit, on every storage backend.

The joined dataset is compared with the same records written in one go; duplicate part
ids, missing, mismatched, tampered and twice-joined parts must fail with their own error
and leave the dataset and the other parts as they were; crashes at each step leave the
previous commit readable and only removable garbage behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from conftest import S3_BUCKET
from reference_model import read_all, to_fs

from splitdataloader import (
    PartWriter,
    SplitDataLoader,
    SplitWriter,
    discard_parts,
    join_parts,
    list_parts,
    write_split_data,
)
from splitdataloader import join as join_module
from splitdataloader.errors import (
    CodecConfigError,
    CommitConflictError,
    DatasetFormatError,
    PartAlreadyJoinedError,
    PartConflictError,
    PartMismatchError,
    PartNotFoundError,
    UnsafeDatasetError,
)

BINS = 4


def records_of(name: str, count: int, size: int = 40) -> list[bytes]:
    """``count`` distinct records tagged with ``name``."""
    return [f"{name}:{k:05d}:".encode().ljust(size, b"#") for k in range(count)]


def write_part(url: str, part_id: str, records: list[bytes], **options: object) -> None:
    with PartWriter(url, part_id, bins=options.pop("bins", BINS), **options) as writer:  # type: ignore[arg-type]
        writer.write_many(records)


def files_under(url: str, *directories: str) -> set[str]:
    """Files under the given folders of the dataset root, relative to the root."""
    fs, root = to_fs(url)
    fs.invalidate_cache()
    found: set[str] = set()
    for directory in directories:
        if fs.exists(f"{root}/{directory}"):
            found.update(path[len(root) + 1 :] for path in fs.find(f"{root}/{directory}"))
    return found


def manifest_files(url: str) -> set[str]:
    fs, root = to_fs(url)
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    names = set(manifest.get("resources", []))
    for commit in manifest["commits"]:
        names.add(commit["index"]["name"])
        names.update(segment["name"] for segment in commit["segments"])
    return names


def manifest_bytes(url: str) -> bytes | None:
    fs, root = to_fs(url)
    fs.invalidate_cache()
    try:
        data: bytes = fs.cat_file(f"{root}/manifest.json")
    except FileNotFoundError:
        return None
    return data


# ---------------------------------------------------------------- joining


def test_joined_parts_read_like_one_write(dataset_url: str, fresh_url: Callable[[], str]) -> None:
    sizes = {"p-c": 23, "p-a": 9, "p-b": 1, "p-d": 0, "p-e": 40}
    written = {part_id: records_of(part_id, count) for part_id, count in sizes.items()}
    for part_id in ("p-e", "p-a", "p-d", "p-c", "p-b"):  # written in any order
        write_part(dataset_url, part_id, written[part_id])
    assert list_parts(dataset_url) == sorted(sizes)
    order = ["p-c", "p-a", "p-b", "p-d", "p-e"]

    total = join_parts(dataset_url, order)

    expected = [record for part_id in order for record in written[part_id]]
    assert total == len(expected)
    one_go = fresh_url()
    write_split_data(one_go, expected, splits=BINS)
    joined, reference = SplitDataLoader(dataset_url), SplitDataLoader(one_go)
    assert len(joined) == len(reference) == len(expected)
    assert joined.num_bins == reference.num_bins == BINS
    assert read_all(joined) == read_all(reference) == expected
    assert joined[-1] == expected[-1]
    assert joined.get_many([70, 0, 31, 70]) == [expected[k] for k in (70, 0, 31, 70)]
    assert sorted(joined.iterate_binwise(shuffle=True, seed=3)) == sorted(expected)
    assert list_parts(dataset_url) == []
    assert files_under(dataset_url, "parts") == set()
    assert files_under(dataset_url, "data", "index") == manifest_files(dataset_url)


def test_parts_append_after_the_existing_records(dataset_url: str) -> None:
    first = records_of("first", 10)
    write_split_data(dataset_url, first, splits=BINS)
    write_part(dataset_url, "x", records_of("x", 7))
    write_part(dataset_url, "y", records_of("y", 5))
    assert len(SplitDataLoader(dataset_url)) == 10  # nothing visible before the join

    assert join_parts(dataset_url, ["y", "x"]) == 22

    assert read_all(SplitDataLoader(dataset_url)) == first + records_of("y", 5) + records_of("x", 7)
    with SplitWriter(dataset_url) as writer:  # and the dataset takes ordinary appends after
        writer.write_many(records_of("after", 3))
    assert read_all(SplitDataLoader(dataset_url))[-3:] == records_of("after", 3)


def test_only_empty_parts_make_an_empty_dataset(dataset_url: str) -> None:
    write_part(dataset_url, "empty-1", [])
    write_part(dataset_url, "empty-2", [])
    assert join_parts(dataset_url, ["empty-1", "empty-2"]) == 0
    assert len(SplitDataLoader(dataset_url)) == 0
    assert list_parts(dataset_url) == []


def test_many_small_parts_spread_over_the_bins(dataset_url: str) -> None:
    bins = 8
    ids = [f"one-{k:03d}" for k in range(24)]
    for part_id in ids:
        write_part(dataset_url, part_id, records_of(part_id, 1), bins=bins)
    join_parts(dataset_url, ids)
    manifest = json.loads(manifest_bytes(dataset_url) or b"")
    used = {segment["bin"] for commit in manifest["commits"] for segment in commit["segments"]}
    # Every part starting at bin 0 would leave 7 of the 8 bins empty.
    assert len(used) >= bins // 2
    assert read_all(SplitDataLoader(dataset_url)) == [records_of(p, 1)[0] for p in ids]


def test_part_writer_reports_positions_and_count(dataset_url: str) -> None:
    with PartWriter(dataset_url, "counted", bins=BINS) as writer:
        assert writer.write(b"first") == 0
        assert writer.write(b"second") == 1
        assert writer.write_many([b"third", b"fourth"]) == 2
        assert writer.records == 4
        assert writer.part_id == "counted"
        assert writer.bins == BINS
    assert writer.records == 4
    join_parts(dataset_url, ["counted"])
    assert read_all(SplitDataLoader(dataset_url)) == [b"first", b"second", b"third", b"fourth"]


def test_parts_written_with_a_codec_chain(dataset_url: str) -> None:
    for part_id in ("z1", "z2"):
        write_part(dataset_url, part_id, records_of(part_id, 30), codecs=["zlib"])
    join_parts(dataset_url, ["z1", "z2"])
    assert read_all(SplitDataLoader(dataset_url)) == records_of("z1", 30) + records_of("z2", 30)
    manifest = json.loads(manifest_bytes(dataset_url) or b"")
    assert [codec["id"] for codec in manifest["codecs"]] == ["zlib"]


def test_a_dictionary_trained_by_a_part_joins_alone(dataset_url: str) -> None:
    codecs = [{"id": "zstd", "dictionary": True, "sample_size": 50}]
    with PartWriter(dataset_url, "trained", bins=BINS, codecs=codecs) as writer:
        assert writer.trains_codecs
        writer.write_many(records_of("trained", 120, size=200))
    write_part(dataset_url, "also-trained", records_of("also", 120, size=200), codecs=codecs)
    with pytest.raises(PartMismatchError, match=r"'also-trained'.*codec chain"):
        join_parts(dataset_url, ["trained", "also-trained"])

    join_parts(dataset_url, ["trained"])

    assert read_all(SplitDataLoader(dataset_url)) == records_of("trained", 120, size=200)
    manifest = json.loads(manifest_bytes(dataset_url) or b"")
    assert manifest["resources"]
    assert set(manifest["resources"]) <= files_under(dataset_url, "meta")
    with PartWriter(dataset_url, "reuses", bins=BINS) as writer:  # the dataset's own chain
        assert not writer.trains_codecs


def _write_part_in_process(url: str, part_id: str, count: int) -> str:
    write_part(url, part_id, records_of(part_id, count))
    return part_id


@pytest.fixture(params=["local", "s3"])
def shared_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A dataset URL that other processes reach too (not ``memory://``)."""
    if request.param == "local":
        return str(tmp_path_factory.mktemp("shared") / "ds")
    request.getfixturevalue("s3_server")
    return f"s3://{S3_BUCKET}/parts-{os.urandom(8).hex()}/ds"


def test_processes_write_parts_at_once(shared_url: str) -> None:
    ids = [f"proc-{k}" for k in range(4)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        done = list(pool.map(_write_part_in_process, [shared_url] * 4, ids, [50, 0, 17, 33]))
    assert sorted(done) == ids
    join_parts(shared_url, ids)
    expected = [r for k, n in zip(ids, [50, 0, 17, 33]) for r in records_of(k, n)]
    assert read_all(SplitDataLoader(shared_url)) == expected


# ---------------------------------------------------------------- conflicts


def test_two_writers_with_one_part_id_conflict_and_nothing_is_overwritten(
    dataset_url: str,
) -> None:
    first = PartWriter(dataset_url, "same", bins=BINS)
    second = PartWriter(dataset_url, "same", bins=BINS)
    first.write_many(records_of("first", 12))
    second.write_many(records_of("second", 9))
    first.close()
    fs, root = to_fs(dataset_url)
    part = json.loads(fs.cat_file(f"{root}/parts/same.json"))
    kept = {part["commit"]["index"]["name"], "parts/same.json"}
    kept.update(segment["name"] for segment in part["commit"]["segments"])

    with pytest.raises(PartConflictError, match="same") as caught:
        second.close()

    assert isinstance(caught.value, CommitConflictError)
    assert files_under(dataset_url, "data", "index", "parts") == kept  # second's files gone
    join_parts(dataset_url, ["same"])
    assert read_all(SplitDataLoader(dataset_url)) == records_of("first", 12)


def test_local_conflicts_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "ds")

    def no_links(source: str, target: str) -> None:
        raise PermissionError(1, "hard links are not supported here", target)

    monkeypatch.setattr(os, "link", no_links)
    first = PartWriter(url, "same", bins=BINS)
    second = PartWriter(url, "same", bins=BINS)
    first.write_many(records_of("first", 5))
    second.write_many(records_of("second", 5))
    first.close()
    with pytest.raises(PartConflictError):
        second.close()
    join_parts(url, ["same"])
    assert read_all(SplitDataLoader(url)) == records_of("first", 5)
    assert os.listdir(tmp_path / "ds" / "parts") == []  # no temporary file left either


def test_a_taken_part_id_is_refused_before_writing(dataset_url: str) -> None:
    write_part(dataset_url, "taken", records_of("a", 3))
    with pytest.raises(PartConflictError, match="waits to be joined"):
        PartWriter(dataset_url, "taken")
    join_parts(dataset_url, ["taken"])
    with pytest.raises(PartConflictError, match="already joined"):
        PartWriter(dataset_url, "taken")
    assert read_all(SplitDataLoader(dataset_url)) == records_of("a", 3)


def test_join_retries_when_another_writer_commits_meanwhile(
    dataset_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split_data(dataset_url, records_of("base", 5), splits=BINS)
    write_part(dataset_url, "late", records_of("late", 6))
    reads = []
    original = join_module._read_base

    def read_then_race(storage: object) -> object:
        result = original(storage)  # type: ignore[arg-type]
        reads.append(1)
        if len(reads) == 1:  # another writer commits between the join's read and write
            write_split_data(dataset_url, records_of("racer", 4))
        return result

    monkeypatch.setattr(join_module, "_read_base", read_then_race)
    assert join_parts(dataset_url, ["late"]) == 15
    assert len(reads) == 2
    assert read_all(SplitDataLoader(dataset_url)) == (
        records_of("base", 5) + records_of("racer", 4) + records_of("late", 6)
    )


# ---------------------------------------------------------------- bad joins


def test_joining_a_part_that_does_not_exist(dataset_url: str) -> None:
    write_split_data(dataset_url, records_of("base", 3), splits=BINS)
    write_part(dataset_url, "real", records_of("real", 4))
    before = manifest_bytes(dataset_url)
    with pytest.raises(PartNotFoundError, match="'ghost'") as caught:
        join_parts(dataset_url, ["real", "ghost"])
    assert isinstance(caught.value, FileNotFoundError)
    assert manifest_bytes(dataset_url) == before
    assert list_parts(dataset_url) == ["real"]


@pytest.mark.parametrize(
    ("options", "label"),
    [
        pytest.param({"bins": BINS + 1}, "bins", id="bins"),
        pytest.param({"codecs": ["zlib"]}, "codec chain", id="codecs"),
        pytest.param({"checksum": "crc32"}, "checksum", id="checksum"),
    ],
)
def test_parts_with_other_settings_are_refused(
    dataset_url: str, options: dict[str, object], label: str
) -> None:
    write_part(dataset_url, "plain", records_of("plain", 5))
    write_part(dataset_url, "other", records_of("other", 5), **options)
    with pytest.raises(PartMismatchError, match=f"'other'.*{label}"):
        join_parts(dataset_url, ["plain", "other"])
    assert manifest_bytes(dataset_url) is None
    assert list_parts(dataset_url) == ["other", "plain"]
    join_parts(dataset_url, ["plain"])  # the fitting part still joins
    assert read_all(SplitDataLoader(dataset_url)) == records_of("plain", 5)
    with pytest.raises(PartMismatchError, match=f"'other'.*{label}.*the dataset"):
        join_parts(dataset_url, ["other"])


def test_joining_twice(dataset_url: str) -> None:
    write_part(dataset_url, "once", records_of("once", 8))
    join_parts(dataset_url, ["once"])
    before = manifest_bytes(dataset_url)
    with pytest.raises(PartAlreadyJoinedError, match=r"'once'.*generation 1"):
        join_parts(dataset_url, ["once"])
    assert manifest_bytes(dataset_url) == before
    assert read_all(SplitDataLoader(dataset_url)) == records_of("once", 8)


def test_a_part_manifest_left_by_a_crashed_join_is_not_joined_again(dataset_url: str) -> None:
    write_part(dataset_url, "kept", records_of("kept", 8))
    fs, root = to_fs(dataset_url)
    leftover = fs.cat_file(f"{root}/parts/kept.json")
    join_parts(dataset_url, ["kept"])
    fs.pipe_file(f"{root}/parts/kept.json", leftover)  # as if the join died before cleaning
    assert list_parts(dataset_url) == ["kept"]

    with pytest.raises(PartAlreadyJoinedError):
        join_parts(dataset_url, ["kept"])
    assert discard_parts(dataset_url, ["kept"]) == 1

    assert list_parts(dataset_url) == []
    assert read_all(SplitDataLoader(dataset_url)) == records_of("kept", 8)  # data kept


def test_a_part_written_for_a_replaced_dataset_is_refused(dataset_url: str) -> None:
    write_split_data(dataset_url, records_of("old", 4), splits=BINS)
    slow = PartWriter(dataset_url, "slow", bins=BINS)
    slow.write_many(records_of("slow", 6))
    write_split_data(dataset_url, records_of("new", 3), splits=BINS, start_clean=True)
    slow.close()
    with pytest.raises(PartMismatchError, match=r"'slow'.*replaced"):
        join_parts(dataset_url, ["slow"])
    assert read_all(SplitDataLoader(dataset_url)) == records_of("new", 3)


def test_start_clean_removes_waiting_parts(dataset_url: str) -> None:
    write_part(dataset_url, "waiting", records_of("w", 5))
    write_split_data(dataset_url, records_of("fresh", 2), splits=BINS, start_clean=True)
    assert list_parts(dataset_url) == []
    assert files_under(dataset_url, "data", "index", "parts") == manifest_files(dataset_url)
    with pytest.raises(PartNotFoundError):
        join_parts(dataset_url, ["waiting"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(
            lambda part: part["commit"]["segments"][0].update(name="data/../../escape"),
            UnsafeDatasetError,
            id="escaping-name",
        ),
        pytest.param(lambda part: part.update(part="other"), DatasetFormatError, id="wrong-id"),
        pytest.param(lambda part: part.update(records=999), DatasetFormatError, id="count"),
        pytest.param(
            lambda part: part.update(created="2000-01-01T00:00:00+00:00"),
            DatasetFormatError,
            id="checksum",
        ),
    ],
)
def test_a_tampered_part_manifest_is_refused(
    dataset_url: str, change: Callable[[dict[str, object]], None], error: type[Exception]
) -> None:
    write_part(dataset_url, "bent", records_of("bent", 5))
    fs, root = to_fs(dataset_url)
    document = json.loads(fs.cat_file(f"{root}/parts/bent.json"))
    change(document)
    fs.pipe_file(f"{root}/parts/bent.json", json.dumps(document).encode())
    with pytest.raises(error, match=r"bent\.json"):
        join_parts(dataset_url, ["bent"])
    assert manifest_bytes(dataset_url) is None


def test_invalid_arguments(dataset_url: str) -> None:
    with pytest.raises(ValueError, match="part_id"):
        PartWriter(dataset_url, "../escape")
    with pytest.raises(ValueError, match="part_id"):
        PartWriter(dataset_url, "")
    with pytest.raises(ValueError, match="twice"):
        join_parts(dataset_url, ["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        join_parts(dataset_url, [])
    with pytest.raises(TypeError, match="single string"):
        join_parts(dataset_url, "abc")
    with pytest.raises(ValueError, match=r"part_ids\[1\]"):
        join_parts(dataset_url, ["ok", "no/slash"])


def test_encrypting_codecs_are_refused(dataset_url: str) -> None:
    key = {"k": bytes(range(32))}
    with pytest.raises(CodecConfigError, match="aesgcm"):
        PartWriter(dataset_url, "secret", codecs=[{"id": "aesgcm", "key_id": "k"}])
    write_split_data(
        dataset_url, [b"x"], splits=BINS, codecs=[{"id": "aesgcm", "key_id": "k"}], keys=key
    )
    with pytest.raises(CodecConfigError, match="aesgcm"):
        PartWriter(dataset_url, "secret")


# ---------------------------------------------------------------- crashes and garbage


def test_discarding_parts_removes_their_files(dataset_url: str) -> None:
    write_split_data(dataset_url, records_of("base", 6), splits=BINS)
    write_part(dataset_url, "drop-1", records_of("d1", 9))
    write_part(dataset_url, "drop-2", records_of("d2", 3))
    write_part(dataset_url, "keep", records_of("k", 4))

    assert discard_parts(dataset_url, ["drop-1", "drop-2", "never-written"]) == 2

    assert list_parts(dataset_url) == ["keep"]
    join_parts(dataset_url, ["keep"])
    assert files_under(dataset_url, "data", "index", "parts") == manifest_files(dataset_url)
    assert read_all(SplitDataLoader(dataset_url)) == records_of("base", 6) + records_of("k", 4)


def test_an_exception_inside_the_block_leaves_no_part(dataset_url: str) -> None:
    def failing() -> None:
        with PartWriter(dataset_url, "broken", bins=BINS) as writer:
            writer.write_many(records_of("b", 20))
            raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        failing()
    assert list_parts(dataset_url) == []
    assert files_under(dataset_url, "data", "index", "parts") == set()


_CRASH = textwrap.dedent(
    """
    import os, sys
    from splitdataloader import PartWriter
    url, part_id, stage = sys.argv[1:4]
    writer = PartWriter(url, part_id, bins=4)
    writer.write_many(b"crash %d" % k + bytes(2000) for k in range(300))
    if stage == "after-close":
        writer.close()
    os._exit(0)  # no cleanup of any kind: as if the process were killed
    """
)


@pytest.mark.parametrize("stage", ["mid-write", "after-close"])
def test_a_crashed_part_writer_leaves_the_dataset_readable(shared_url: str, stage: str) -> None:
    write_split_data(shared_url, records_of("base", 5), splits=BINS)
    before = manifest_bytes(shared_url)
    subprocess.run([sys.executable, "-c", _CRASH, shared_url, "crashed", stage], check=True)

    assert manifest_bytes(shared_url) == before
    assert read_all(SplitDataLoader(shared_url)) == records_of("base", 5)
    if stage == "mid-write":  # unfinished: not a part, only garbage outside the manifest
        assert list_parts(shared_url) == []
        with pytest.raises(PartNotFoundError):
            join_parts(shared_url, ["crashed"])
    else:  # recorded: the part joins later, as if nothing had happened
        assert join_parts(shared_url, ["crashed"]) == 305
        assert SplitDataLoader(shared_url)[5] == b"crash 0" + bytes(2000)
