"""Errors: missing, uncommitted, damaged, unsafe and read-only datasets, and failed writes.

Damage is done by hand through fsspec on the files the manifest lists, then the loader
must raise the most specific error class, naming the file (and the record where known),
while undamaged records stay readable.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from reference_model import listed_files, read_all, stored_files, to_fs

from splitdataloader import SplitDataLoader, SplitWriter, errors, write_split_data
from splitdataloader.errors import (
    ChecksumMismatchError,
    CommitConflictError,
    CorruptDataError,
    DatasetFormatError,
    DatasetNotFoundError,
    MissingDataFileError,
    ReadOnlyDatasetError,
    RecordTooLargeError,
    SplitDataError,
    TruncatedDataError,
    UncommittedDatasetError,
    UnsafeDatasetError,
    UnsupportedFormatError,
    WriterClosedError,
)

BINS = 3
COUNT = 30


SMALL, LARGE = 40, 10_000  # repeats of an 8-byte marker: 320 bytes, or 80 kB per record
SIZES = [pytest.param(SMALL, id="small"), pytest.param(LARGE, id="large")]


def record(k: int, repeat: int = SMALL) -> bytes:
    """Record ``k``: a marker repeated, so that it can be found inside a segment."""
    return b"<%06d>" % k * repeat


RECORDS = [record(k) for k in range(COUNT)]


def make_dataset(url: str, repeat: int = SMALL) -> list[bytes]:
    records = [record(k, repeat) for k in range(COUNT)]
    write_split_data(url, records, splits=BINS)
    return records


def segment_holding(url: str, k: int, repeat: int = SMALL) -> tuple[str, int]:
    """(segment name, offset of record ``k``'s payload) found by searching the bytes."""
    fs, root = to_fs(url)
    marker = record(k, repeat)
    found = []
    for name in listed_files(url)[0]:
        data = fs.cat_file(f"{root}/{name}")
        at = data.find(marker)
        if at >= 0:
            found.append((name, at))
    assert len(found) == 1, f"record {k} found in {len(found)} segments"
    return found[0]


def rewrite(url: str, name: str, change: Callable[[bytes], bytes]) -> None:
    fs, root = to_fs(url)
    path = f"{root}/{name}"
    data = fs.cat_file(path)
    fs.rm_file(path)
    fs.pipe_file(path, change(data))


def edit_manifest(url: str, change: Callable[[dict], object]) -> None:
    def apply(raw: bytes) -> bytes:
        document = json.loads(raw)
        # Edited by hand: drop the manifest's own checksum, so that only the edit is wrong.
        document.pop("manifest_checksum", None)
        change(document)
        return json.dumps(document).encode()

    rewrite(url, "manifest.json", apply)


def read_everything(url: str) -> None:
    """Open the dataset and read every record by index and bin by bin."""
    with SplitDataLoader(url) as loader:
        read_all(loader)
        list(loader.iterate_binwise())


def assert_pickles(err: SplitDataError) -> None:
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert str(clone) == str(err)
    assert (clone.path, clone.record, clone.offset) == (err.path, err.record, err.offset)


# ---------------------------------------------------------------- missing datasets


def test_missing_dataset(dataset_url: str) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        SplitDataLoader(dataset_url)
    assert isinstance(caught.value, FileNotFoundError)
    assert not isinstance(caught.value, UncommittedDatasetError)
    assert caught.value.path == dataset_url
    assert_pickles(caught.value)


def test_empty_folder_is_not_a_dataset(dataset_url: str) -> None:
    fs, root = to_fs(dataset_url)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/unrelated.txt", b"hello")
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dataset_url)


@pytest.mark.parametrize("folder", ["data", "index"])
def test_files_without_manifest_are_uncommitted(dataset_url: str, folder: str) -> None:
    fs, root = to_fs(dataset_url)
    fs.makedirs(f"{root}/{folder}", exist_ok=True)
    fs.pipe_file(f"{root}/{folder}/0123456789abcdef-c0000.bin", b"\x00" * 64)
    with pytest.raises(UncommittedDatasetError) as caught:
        SplitDataLoader(dataset_url)
    assert isinstance(caught.value, DatasetNotFoundError)
    assert isinstance(caught.value, FileNotFoundError)
    assert_pickles(caught.value)


def test_removed_manifest_is_uncommitted(dataset_url: str) -> None:
    make_dataset(dataset_url)
    fs, root = to_fs(dataset_url)
    fs.rm_file(f"{root}/manifest.json")
    with pytest.raises(UncommittedDatasetError):
        SplitDataLoader(dataset_url)


def test_crashed_writer_leaves_an_uncommitted_dataset(tmp_path: os.PathLike[str]) -> None:
    # A real crash: the process dies after writing data, before any commit.
    target = os.path.join(tmp_path, "ds")
    script = textwrap.dedent(
        f"""
        import os
        from splitdataloader import SplitWriter
        writer = SplitWriter({target!r}, bins=2)
        writer.write_many([b"x" * (3 << 20), b"y" * (3 << 20), b"z"])
        os._exit(17)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert done.returncode == 17, done.stderr.decode()
    assert any(name.startswith("data/") for name in stored_files(target))
    with pytest.raises(UncommittedDatasetError):
        SplitDataLoader(target)
    # A later write still works and does not expose the crashed writer's records.
    write_split_data(target, [b"fresh"], splits=2)
    with SplitDataLoader(target) as loader:
        assert read_all(loader) == [b"fresh"]
    # A start-clean write removes the crashed writer's garbage.
    write_split_data(target, [b"clean"], splits=2, start_clean=True)
    segments, parts = listed_files(target)
    assert stored_files(target) == {"manifest.json", *segments, *parts}


# ---------------------------------------------------------------- damaged data


@pytest.mark.parametrize("repeat", SIZES)
def test_flipped_byte_is_a_checksum_mismatch(dataset_url: str, repeat: int) -> None:
    records = make_dataset(dataset_url, repeat)
    victim = 10
    name, at = segment_holding(dataset_url, victim, repeat)

    def flip(data: bytes) -> bytes:
        middle = at + len(records[victim]) // 2
        return data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]

    rewrite(dataset_url, name, flip)

    with SplitDataLoader(dataset_url) as loader:
        for attempt in (lambda: loader[victim], lambda: loader.get_many([0, victim])):
            with pytest.raises(ChecksumMismatchError) as caught:
                attempt()
            err = caught.value
            assert isinstance(err, CorruptDataError)
            assert isinstance(err, OSError)
            assert err.record == victim
            assert err.path is not None
            assert err.path.endswith(name)
            assert name in str(err)
            assert str(victim) in str(err)
            assert_pickles(err)
        # Every other record, including the victim's neighbours in its segment, is intact.
        for k in range(COUNT):
            if k != victim:
                assert loader[k] == records[k]
        for shuffle in (False, True):
            with pytest.raises(ChecksumMismatchError) as caught:
                list(loader.iterate_binwise(shuffle=shuffle, seed=5))
            assert caught.value.record == victim
            assert caught.value.path is not None
            assert caught.value.path.endswith(name)
    with SplitDataLoader(dataset_url, verify=False) as unverified:
        damaged = unverified[victim]
        assert len(damaged) == len(records[victim])
        assert damaged != records[victim]


@pytest.mark.parametrize(
    ("field", "value"),
    [("segment", 99), ("offset", 2**40), ("offset", 0), ("length", 2**31)],
)
def test_damaged_index_entry_is_corrupt(dataset_url: str, field: str, value: int) -> None:
    make_dataset(dataset_url)
    (part,) = listed_files(dataset_url)[1]
    header, entry = 32, struct.Struct("<IIQQ")  # docs/format.md, section 4
    fields = ["segment", "length", "offset", "checksum"]

    def damage(data: bytes) -> bytes:
        # Entry 0 is record 0, the first record of bin 0.
        values = list(entry.unpack_from(data, header))
        values[fields.index(field)] = value
        return data[:header] + entry.pack(*values) + data[header + entry.size :]

    rewrite(dataset_url, part, damage)
    with SplitDataLoader(dataset_url) as loader:
        with pytest.raises(CorruptDataError):
            loader[0]
        with pytest.raises(CorruptDataError):
            list(loader.iterate_binwise())
        assert loader[1] == RECORDS[1]


@pytest.mark.parametrize("repeat", SIZES)
def test_truncated_segment(dataset_url: str, repeat: int) -> None:
    make_dataset(dataset_url, repeat)
    victim = COUNT - 1
    name, at = segment_holding(dataset_url, victim, repeat)
    rewrite(dataset_url, name, lambda data: data[: at + 5])
    with SplitDataLoader(dataset_url) as loader:
        attempts = [
            lambda: loader[victim],
            lambda: loader.get_many([victim]),
            lambda: list(loader.iterate_binwise()),
            lambda: list(loader.iterate_binwise(shuffle=True, seed=1)),
        ]
        for attempt in attempts:
            with pytest.raises(TruncatedDataError) as caught:
                attempt()
            err = caught.value
            assert isinstance(err, CorruptDataError)
            assert err.path is not None
            assert err.path.endswith(name)
            assert name in str(err)
            assert_pickles(err)


def test_truncated_index_part(dataset_url: str) -> None:
    make_dataset(dataset_url)
    (part,) = listed_files(dataset_url)[1]
    rewrite(dataset_url, part, lambda data: data[: len(data) // 2])
    with pytest.raises(TruncatedDataError) as caught:
        read_everything(dataset_url)
    assert caught.value.path is not None
    assert caught.value.path.endswith(part)


@pytest.mark.parametrize("repeat", SIZES)
def test_deleted_segment(dataset_url: str, repeat: int) -> None:
    records = make_dataset(dataset_url, repeat)
    victim = 7
    name, _ = segment_holding(dataset_url, victim, repeat)
    fs, root = to_fs(dataset_url)
    fs.rm_file(f"{root}/{name}")
    with SplitDataLoader(dataset_url) as loader:
        attempts = [
            lambda: loader[victim],
            lambda: loader.get_many([victim, 0]),
            lambda: list(loader.iterate_binwise()),
            lambda: list(loader.iterate_binwise(shuffle=True, seed=2)),
        ]
        for attempt in attempts:
            with pytest.raises(MissingDataFileError) as caught:
                attempt()
            err = caught.value
            assert isinstance(err, CorruptDataError)
            assert isinstance(err, FileNotFoundError)
            assert err.path is not None
            assert err.path.endswith(name)
            assert_pickles(err)
        # Records in the other bins are still there.
        other = [k for k in range(COUNT) if k % BINS != victim % BINS]
        assert loader.get_many(other) == [records[k] for k in other]
        assert [loader[k] for k in other] == [records[k] for k in other]


def test_deleted_index_part(dataset_url: str) -> None:
    make_dataset(dataset_url)
    (part,) = listed_files(dataset_url)[1]
    fs, root = to_fs(dataset_url)
    fs.rm_file(f"{root}/{part}")
    with pytest.raises(MissingDataFileError) as caught:
        read_everything(dataset_url)
    assert caught.value.path is not None
    assert caught.value.path.endswith(part)


# ---------------------------------------------------------------- bad manifests


@pytest.mark.parametrize(
    ("key", "value"),
    [("format_version", 3), ("format_version", 1), ("format_version", "2"), ("format", "zarr")],
)
def test_unknown_format_is_unsupported(dataset_url: str, key: str, value: object) -> None:
    make_dataset(dataset_url)
    edit_manifest(dataset_url, lambda doc: doc.__setitem__(key, value))
    with pytest.raises(UnsupportedFormatError) as caught:
        SplitDataLoader(dataset_url)
    assert isinstance(caught.value, DatasetFormatError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path is not None
    assert caught.value.path.endswith("manifest.json")
    assert_pickles(caught.value)


def test_unknown_checksum_is_unsupported(dataset_url: str) -> None:
    make_dataset(dataset_url)
    edit_manifest(dataset_url, lambda doc: doc.__setitem__("checksum", "md4"))
    with pytest.raises(UnsupportedFormatError):
        SplitDataLoader(dataset_url)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[]", b"\xff\xfe", b'"text"'])
def test_malformed_manifest(dataset_url: str, garbage: bytes) -> None:
    make_dataset(dataset_url)
    rewrite(dataset_url, "manifest.json", lambda _: garbage)
    with pytest.raises(DatasetFormatError):
        SplitDataLoader(dataset_url)


def test_appending_to_a_future_format_is_refused(dataset_url: str) -> None:
    make_dataset(dataset_url)
    edit_manifest(dataset_url, lambda doc: doc.__setitem__("format_version", 3))
    fs, root = to_fs(dataset_url)
    before = fs.cat_file(f"{root}/manifest.json")
    with pytest.raises(UnsupportedFormatError):
        write_split_data(dataset_url, [b"more"], splits=BINS)
    assert fs.cat_file(f"{root}/manifest.json") == before


def test_start_clean_replaces_an_unreadable_dataset(dataset_url: str) -> None:
    make_dataset(dataset_url)
    rewrite(dataset_url, "manifest.json", lambda _: b"{broken")
    with pytest.raises(DatasetFormatError):
        write_split_data(dataset_url, [b"more"], splits=BINS)
    write_split_data(dataset_url, [b"fresh", b"start"], splits=2, start_clean=True)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [b"fresh", b"start"]


UNSAFE_NAMES = [
    "../x",
    "data/../../x",
    "data/../manifest.json",
    "/etc/passwd",
    "data//x",
    "s3://bucket/data/x",
    "file:///etc/passwd",
    "data/",
    "index/../data/x",
]


@pytest.mark.parametrize("bad", UNSAFE_NAMES)
@pytest.mark.parametrize("kind", ["segment", "index"])
def test_names_escaping_the_root_are_unsafe(dataset_url: str, bad: str, kind: str) -> None:
    make_dataset(dataset_url)

    def change(doc: dict) -> None:
        commit = doc["commits"][0]
        if kind == "segment":
            commit["segments"][0]["name"] = bad
        else:
            commit["index"]["name"] = bad

    edit_manifest(dataset_url, change)
    with pytest.raises(UnsafeDatasetError) as caught:
        read_everything(dataset_url)
    assert isinstance(caught.value, DatasetFormatError)
    assert_pickles(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc.__setitem__("records", 2**70),
        lambda doc: doc.__setitem__("bins", -1),
        lambda doc: doc["commits"][0]["segments"][0].__setitem__("size", 2**64),
        lambda doc: doc["commits"][0]["segments"][0].__setitem__("bin", 99),
    ],
    ids=["huge-records", "negative-bins", "huge-segment", "bin-out-of-range"],
)
def test_absurd_sizes_are_rejected(dataset_url: str, change: Callable[[dict], None]) -> None:
    make_dataset(dataset_url)
    edit_manifest(dataset_url, change)
    with pytest.raises(DatasetFormatError):
        read_everything(dataset_url)


def test_inconsistent_record_count_is_rejected(dataset_url: str) -> None:
    make_dataset(dataset_url)

    def change(doc: dict) -> None:
        doc["records"] += 1
        doc["commits"][0]["records"] += 1

    edit_manifest(dataset_url, change)
    with pytest.raises(DatasetFormatError):
        read_everything(dataset_url)


# ---------------------------------------------------------------- exceptions


ALL_ERRORS = [getattr(errors, name) for name in errors.__all__]


def sample_attributes(cls: type[SplitDataError]) -> dict[str, object]:
    """A distinct value for every keyword-only attribute ``cls`` takes."""
    values: dict[str, object] = {}
    for number, (name, parameter) in enumerate(inspect.signature(cls).parameters.items()):
        if parameter.kind is not parameter.KEYWORD_ONLY:
            continue
        annotation = str(parameter.annotation)
        values[name] = 1000 + number if "int" in annotation else f"{name} of {cls.__name__}"
    return values


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_pickles_with_its_attributes(cls: type[SplitDataError]) -> None:
    assert issubclass(cls, SplitDataError)
    attributes = sample_attributes(cls)
    assert attributes, f"{cls.__name__} takes no attributes"
    full = cls("something broke", **attributes)
    bare = cls("plain")
    for err in (full, bare):
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is cls
        assert str(clone) == str(err)
        assert clone.args == err.args
        for name in attributes:
            assert getattr(clone, name) == getattr(err, name), name
    for name, value in attributes.items():
        assert getattr(full, name) == value, name


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (DatasetNotFoundError, FileNotFoundError),
        (UncommittedDatasetError, FileNotFoundError),
        (DatasetFormatError, ValueError),
        (UnsupportedFormatError, ValueError),
        (UnsafeDatasetError, ValueError),
        (CorruptDataError, OSError),
        (MissingDataFileError, FileNotFoundError),
        (TruncatedDataError, OSError),
        (ChecksumMismatchError, OSError),
        (errors.RecordTypeError, TypeError),
        (RecordTooLargeError, ValueError),
        (CommitConflictError, RuntimeError),
        (ReadOnlyDatasetError, PermissionError),
        (WriterClosedError, RuntimeError),
    ],
)
def test_errors_are_also_builtin_exceptions(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)
    assert issubclass(cls, SplitDataError)


# ---------------------------------------------------------------- writes that fail


def write_legacy_by_hand(url: str, records: list[bytes], splits: int) -> None:
    """A 0.0.1 dataset, from the layout alone: u32 (bin, position, length) triplets."""
    fs, root = to_fs(url)
    fs.makedirs(root, exist_ok=True)
    bins: dict[int, bytearray] = {}
    index = bytearray()
    for k, data in enumerate(records):
        content = bins.setdefault(k % splits, bytearray())
        index += struct.pack("<III", k % splits, len(content), len(data))
        content += struct.pack("<I", len(data)) + data
    for bin_id, content in bins.items():
        fs.pipe_file(f"{root}/bin{bin_id:08d}.dat", bytes(content))
    fs.pipe_file(f"{root}/index.dat", bytes(index))


def test_writing_into_a_legacy_dataset_is_refused(dataset_url: str) -> None:
    old = [b"a", b"", b"ccc", b"dddd"]
    write_legacy_by_hand(dataset_url, old, splits=2)
    with pytest.raises(ReadOnlyDatasetError) as caught:
        write_split_data(dataset_url, [b"new"], splits=2)
    assert isinstance(caught.value, PermissionError)
    assert_pickles(caught.value)
    with pytest.raises(ReadOnlyDatasetError):
        SplitWriter(dataset_url)
    with SplitDataLoader(dataset_url) as loader:
        assert loader.is_legacy
        assert read_all(loader) == old
    # Replacing it is allowed, and leaves a version-2 dataset without the 0.0.1 files.
    write_split_data(dataset_url, [b"new"], splits=2, start_clean=True)
    with SplitDataLoader(dataset_url) as loader:
        assert not loader.is_legacy
        assert read_all(loader) == [b"new"]
    assert not {"index.dat", "bin00000000.dat"} & stored_files(dataset_url)


def test_damaged_legacy_dataset(dataset_url: str) -> None:
    old = [b"%d" % k * 50 for k in range(12)]
    write_legacy_by_hand(dataset_url, old, splits=3)
    rewrite(dataset_url, "bin00000001.dat", lambda data: data[:-10])
    fs, root = to_fs(dataset_url)
    fs.rm_file(f"{root}/bin00000002.dat")
    with SplitDataLoader(dataset_url) as loader:
        assert loader.is_legacy
        assert [loader[k] for k in range(0, 12, 3)] == old[0::3]
        with pytest.raises(TruncatedDataError) as truncated:
            loader[10]  # the last record of bin 1
        assert truncated.value.path is not None
        assert truncated.value.path.endswith("bin00000001.dat")
        with pytest.raises(MissingDataFileError) as missing:
            loader[2]
        assert missing.value.path is not None
        assert missing.value.path.endswith("bin00000002.dat")
        with pytest.raises(CorruptDataError):
            list(loader.iterate_binwise())


class InjectedError(Exception):
    """Raised on purpose inside a writer block or a data source."""


def failing_source(records: list[bytes], fail_after: int) -> Iterator[bytes]:
    for k, data in enumerate(records):
        if k == fail_after:
            raise InjectedError
        yield data


@pytest.mark.parametrize("fail_after", [0, 1, 25])
def test_failing_source_keeps_the_previous_commit(dataset_url: str, fail_after: int) -> None:
    make_dataset(dataset_url)
    before = stored_files(dataset_url)
    big = [b"%d" % k * (k * 5000) for k in range(40)]
    with pytest.raises(InjectedError):
        write_split_data(dataset_url, failing_source(big, fail_after), splits=BINS)
    with pytest.raises(InjectedError):
        write_split_data(dataset_url, failing_source(big, fail_after), splits=7, start_clean=True)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == RECORDS
        assert sorted(loader.iterate_binwise()) == sorted(RECORDS)
    # The aborted writes deleted what they had written.
    assert stored_files(dataset_url) == before
    write_split_data(dataset_url, [b"next"], splits=BINS)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [*RECORDS, b"next"]


def test_failing_source_on_a_new_dataset_commits_nothing(dataset_url: str) -> None:
    with pytest.raises(InjectedError):
        write_split_data(dataset_url, failing_source([b"a", b"b", b"c"], 2), splits=2)
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dataset_url)


def test_aborted_writer_keeps_its_earlier_commit(dataset_url: str) -> None:
    make_dataset(dataset_url)

    opened: list[SplitWriter] = []

    def commit_then_fail() -> None:
        with SplitWriter(dataset_url) as writer:
            opened.append(writer)
            writer.write_many([b"kept-1", b"kept-2"])
            assert writer.commit() == COUNT + 2
            writer.write_many([b"lost"] * 50)
            raise InjectedError

    with pytest.raises(InjectedError):
        commit_then_fail()
    (writer,) = opened
    with pytest.raises(WriterClosedError):
        writer.write(b"after")
    with pytest.raises(WriterClosedError):
        writer.commit()
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [*RECORDS, b"kept-1", b"kept-2"]


def test_explicit_abort_drops_pending_records(dataset_url: str) -> None:
    make_dataset(dataset_url)
    writer = SplitWriter(dataset_url)
    writer.write_many([b"never"] * 5)
    writer.abort()
    with pytest.raises(WriterClosedError):
        writer.write(b"again")
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == RECORDS


def test_concurrent_writers_conflict(dataset_url: str) -> None:
    make_dataset(dataset_url)
    first = SplitWriter(dataset_url)
    second = SplitWriter(dataset_url)
    first.write(b"first")
    second.write(b"second")
    assert first.commit() == COUNT + 1
    with pytest.raises(CommitConflictError) as caught:
        second.commit()
    assert isinstance(caught.value, RuntimeError)
    assert_pickles(caught.value)
    first.close()
    second.abort()
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [*RECORDS, b"first"]


def test_record_too_large(dataset_url: str) -> None:
    # np.zeros is allocated lazily: the 4 GiB array costs no memory until touched.
    huge = np.zeros(2**32, dtype=np.uint8)
    with pytest.raises(RecordTooLargeError) as caught:
        write_split_data(dataset_url, [b"ok", huge], splits=2)
    assert caught.value.record == 1
    assert isinstance(caught.value, ValueError)
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dataset_url)


def huge_bytes_source() -> Iterator[bytes]:
    yield b"ok"
    # bytes(n) is calloc'ed: untouched pages cost no memory, reading them maps the zero
    # page. Made inside a generator so that no failure report tries to print it.
    yield bytes(2**32)


@pytest.mark.slow
def test_record_too_large_as_bytes(dataset_url: str) -> None:
    with pytest.raises(RecordTooLargeError) as caught:
        write_split_data(dataset_url, huge_bytes_source(), splits=2)
    assert caught.value.record == 1
