"""Round trips through write_split_data / SplitWriter and SplitDataLoader, against lists.

Every test runs on each storage backend of ``conftest.BACKENDS``. Property tests write a
fresh dataset per example and compare what the loader returns with the input list.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_model import (
    CommitModel,
    DatasetModel,
    check_binwise_structure,
    listed_files,
    read_all,
    stored_files,
    tag,
)

from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader.errors import (
    DatasetNotFoundError,
    RecordTypeError,
    SplitDataError,
    WriterClosedError,
)

# The storage fixture is set up once per test; each example takes a fresh URL from it.
per_example_url = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

record_lists = st.lists(st.binary(max_size=300), max_size=60)
bin_counts = st.integers(min_value=1, max_value=20)


def unique_records(payloads: list[bytes], first: int = 0) -> list[bytes]:
    return [tag(first + k, payload) for k, payload in enumerate(payloads)]


def assert_all_bytes(items: list[bytes]) -> None:
    for item in items:
        assert type(item) is bytes, f"expected bytes, got {type(item).__name__}"


# ---------------------------------------------------------------- one write


@per_example_url
@given(records=record_lists, splits=bin_counts)
def test_write_then_read_matches_list(
    fresh_url: Callable[[], str], records: list[bytes], splits: int
) -> None:
    url = fresh_url()
    assert write_split_data(url, records, splits=splits) == len(records)
    model = DatasetModel([CommitModel(tuple(records), splits)])

    with SplitDataLoader(url) as loader:
        assert len(loader) == len(records)
        assert loader.num_bins == splits
        assert loader.is_legacy is False
        by_index = read_all(loader)
        assert by_index == records
        assert_all_bytes(by_index)
        for k in range(1, len(records) + 1):
            assert loader[-k] == records[-k]
        assert list(iter(loader)) == records
        binwise = list(loader.iterate_binwise())
        assert binwise == model.binwise(splits)
        assert_all_bytes(binwise)


@per_example_url
@given(records=record_lists, splits=bin_counts, data=st.data())
def test_slices_match_list_slices(
    fresh_url: Callable[[], str], records: list[bytes], splits: int, data: st.DataObject
) -> None:
    url = fresh_url()
    write_split_data(url, records, splits=splits)
    with SplitDataLoader(url) as loader:
        for _ in range(5):
            chosen = data.draw(st.slices(len(records)), label="slice")
            got = loader[chosen]
            assert isinstance(got, list)
            assert got == records[chosen]
        # Slices past either end clip, exactly like list slices.
        assert loader[-1000:1000] == records[-1000:1000]
        assert loader[len(records) + 5 :] == []


@per_example_url
@given(records=record_lists.filter(bool), splits=bin_counts, data=st.data())
def test_get_many_with_repeats_in_any_order(
    fresh_url: Callable[[], str], records: list[bytes], splits: int, data: st.DataObject
) -> None:
    url = fresh_url()
    write_split_data(url, records, splits=splits)
    indices = data.draw(
        st.lists(st.integers(0, len(records) - 1), max_size=3 * len(records)), label="indices"
    )
    with SplitDataLoader(url) as loader:
        got = loader.get_many(indices)
        assert got == [records[i] for i in indices]
        assert_all_bytes(got)
        assert loader.get_many([]) == []


def test_get_many_mixes_large_and_small_neighbours(dataset_url: str) -> None:
    """Large records are read on their own and small ones together: neighbours of both
    kinds, repeats and any order come back right."""
    records = [bytes([k % 251]) * (200_000 if k % 3 == 0 else k) for k in range(40)]
    write_split_data(dataset_url, records, splits=2)
    indices = [*range(40), *range(39, -1, -2), 0, 0, 3, 3, 4, 6, 5]
    with SplitDataLoader(dataset_url) as loader:
        assert loader.get_many(indices) == [records[i] for i in indices]


@pytest.mark.parametrize("count", [0, 1, 7])
def test_out_of_range_index_raises_index_error(dataset_url: str, count: int) -> None:
    records = [bytes([k]) * k for k in range(count)]
    write_split_data(dataset_url, records, splits=3)
    with SplitDataLoader(dataset_url) as loader:
        for bad in (count, count + 1, count + 10**9, -count - 1, -(10**12)):
            with pytest.raises(IndexError):
                loader[bad]
        with pytest.raises(IndexError):
            loader.get_many([0, count])
        if count:
            assert loader[np.int64(count - 1)] == records[-1]
            assert loader[np.uint8(0)] == records[0]


@pytest.mark.parametrize("index", ["0", 1.0, None, b"\x00", (0,)])
def test_non_integer_index_raises_type_error(dataset_url: str, index: object) -> None:
    write_split_data(dataset_url, [b"a", b"b"], splits=2)
    with SplitDataLoader(dataset_url) as loader, pytest.raises(TypeError):
        loader[index]  # type: ignore[index]


def test_empty_dataset(dataset_url: str) -> None:
    assert write_split_data(dataset_url, [], splits=4) == 0
    with SplitDataLoader(dataset_url) as loader:
        assert len(loader) == 0
        assert list(loader.iterate_binwise()) == []
        assert list(loader.iterate_binwise(shuffle=True, seed=3)) == []
        assert list(loader) == []
        assert loader[:] == []
        assert loader.get_many([]) == []
        with pytest.raises(IndexError):
            loader[0]
        with pytest.raises(IndexError):
            loader[-1]


# ---------------------------------------------------------------- shuffling


@per_example_url
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=80),
    splits=bin_counts,
    seed=st.integers(0, 2**32 - 1),
)
def test_shuffled_write_permutes_whole_bins(
    fresh_url: Callable[[], str], payloads: list[bytes], splits: int, seed: int
) -> None:
    records = unique_records(payloads)
    model = DatasetModel([CommitModel(tuple(records), splits, shuffled=True)])
    first, second = fresh_url(), fresh_url()
    write_split_data(first, records, splits=splits, shuffle=True, seed=seed)
    write_split_data(second, records, splits=splits, shuffle=True, seed=seed)
    with SplitDataLoader(first) as loader, SplitDataLoader(second) as again:
        # Index order is the written order whatever the bin order.
        assert read_all(loader) == records
        binwise = list(loader.iterate_binwise())
        check_binwise_structure(binwise, model, loader.num_bins)
        assert loader.num_bins == splits
        # The same seed gives the same bin order.
        assert list(again.iterate_binwise()) == binwise


@per_example_url
@given(records=record_lists, splits=bin_counts, seed=st.integers(0, 2**63 - 1))
def test_shuffled_iteration_is_a_seeded_permutation(
    fresh_url: Callable[[], str], records: list[bytes], splits: int, seed: int
) -> None:
    url = fresh_url()
    write_split_data(url, records, splits=splits)
    with SplitDataLoader(url) as loader:
        shuffled = list(loader.iterate_binwise(shuffle=True, seed=seed))
        assert sorted(shuffled) == sorted(records)
        assert_all_bytes(shuffled)
        assert list(loader.iterate_binwise(shuffle=True, seed=seed)) == shuffled
        unseeded = list(loader.iterate_binwise(shuffle=True))
        assert sorted(unseeded) == sorted(records)
    with SplitDataLoader(url) as reopened:
        assert list(reopened.iterate_binwise(shuffle=True, seed=seed)) == shuffled


def test_different_seeds_give_different_orders(dataset_url: str) -> None:
    records = [tag(k, b"x" * (k % 13)) for k in range(400)]
    write_split_data(dataset_url, records, splits=10)
    with SplitDataLoader(dataset_url) as loader:
        plain = list(loader.iterate_binwise())
        orders = [tuple(loader.iterate_binwise(shuffle=True, seed=s)) for s in range(10)]
    for order in orders:
        assert sorted(order) == sorted(records)
    # 10 bins of 40 unique records: two seeds agreeing by chance is practically impossible.
    assert len(set(orders)) == len(orders)
    assert tuple(plain) not in orders


# ---------------------------------------------------------------- appends


@per_example_url
@given(
    writes=st.lists(
        st.tuples(st.lists(st.binary(max_size=50), max_size=25), st.none() | bin_counts),
        min_size=1,
        max_size=4,
    )
)
def test_appends_extend_the_list(
    fresh_url: Callable[[], str], writes: list[tuple[list[bytes], int | None]]
) -> None:
    url = fresh_url()
    model = DatasetModel()
    num_bins: int | None = None
    for records, splits in writes:
        assert write_split_data(url, records, splits=splits) == len(records)
        used = splits if splits is not None else (num_bins if num_bins is not None else 256)
        if records:
            model.commits.append(CommitModel(tuple(records), used))
        with SplitDataLoader(url) as loader:
            num_bins = loader.num_bins
            assert num_bins >= model.min_bins()
            assert read_all(loader) == model.records
            assert list(loader.iterate_binwise()) == model.binwise(num_bins)


def test_start_clean_replaces(dataset_url: str) -> None:
    write_split_data(dataset_url, [b"old"] * 10, splits=5)
    write_split_data(dataset_url, [b"older"] * 10, splits=5)
    write_split_data(dataset_url, [b"new", b"er"], splits=2, start_clean=True)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [b"new", b"er"]
        assert loader.num_bins == 2
        assert list(loader.iterate_binwise()) == [b"new", b"er"]
    # The replaced commits' files are gone: only what the manifest lists remains.
    segments, parts = listed_files(dataset_url)
    assert stored_files(dataset_url) == {"manifest.json", *segments, *parts}


def test_start_clean_with_nothing_empties_the_dataset(dataset_url: str) -> None:
    write_split_data(dataset_url, [b"old"] * 10, splits=5)
    assert write_split_data(dataset_url, [], splits=3, start_clean=True) == 0
    with SplitDataLoader(dataset_url) as loader:
        assert len(loader) == 0
        assert list(loader.iterate_binwise()) == []
    assert stored_files(dataset_url) == {"manifest.json"}


def test_append_keeps_the_dataset_checksum(dataset_url: str) -> None:
    write_split_data(dataset_url, [b"a", b"b"], splits=2, checksum="crc32")
    write_split_data(dataset_url, [b"c"], splits=2, checksum="xxh3_64", durable=True)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [b"a", b"b", b"c"]
        assert list(loader.iterate_binwise()) == [b"a", b"c", b"b"]


def test_default_bin_count_is_256_then_kept(dataset_url: str) -> None:
    write_split_data(dataset_url, [b"a"])
    with SplitDataLoader(dataset_url) as loader:
        assert loader.num_bins == 256
    write_split_data(dataset_url, [tag(k, b"") for k in range(300)])
    expected = DatasetModel(
        [CommitModel((b"a",), 256), CommitModel(tuple(tag(k, b"") for k in range(300)), 256)]
    )
    with SplitDataLoader(dataset_url) as loader:
        assert loader.num_bins == 256
        assert read_all(loader) == expected.records
        assert list(loader.iterate_binwise()) == expected.binwise(256)


# ---------------------------------------------------------------- SplitWriter


def test_split_writer_indices_and_commits(dataset_url: str) -> None:
    records = [tag(k, bytes(k % 5)) for k in range(23)]
    with SplitWriter(dataset_url, bins=4) as writer:
        for k in range(10):
            assert writer.write(records[k]) == k
        assert writer.commit() == 10
        assert writer.write_many(iter(records[10:20])) == 10
        assert writer.commit() == 20
        for k in range(20, 23):
            assert writer.write(records[k]) == k
    with pytest.raises(WriterClosedError):
        writer.write(b"late")
    with pytest.raises(WriterClosedError):
        writer.write_many([b"late"])
    # One session: the round robin goes on across its commits.
    model = DatasetModel(
        [
            CommitModel(tuple(records[:10]), 4, start=0),
            CommitModel(tuple(records[10:20]), 4, start=10 % 4),
            CommitModel(tuple(records[20:]), 4, start=20 % 4),
        ]
    )
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == records
        assert list(loader.iterate_binwise()) == model.binwise(4)


def test_small_segments_and_large_records(dataset_url: str) -> None:
    rng = np.random.default_rng(7)
    sizes = [0, 5, 3 << 20, 1, 2000, (1 << 20) + 1, 64 << 10, 70_000, 0, 17] * 3
    records = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in sizes]
    # max_segment_bytes forces several segments per bin; big records skip the buffers.
    with SplitWriter(dataset_url, bins=3, max_segment_bytes=4096) as writer:
        writer.write_many(records)
    model = DatasetModel([CommitModel(tuple(records), 3)])
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == records
        assert list(loader.iterate_binwise()) == model.binwise(3)
        assert loader.get_many([29, 2, 2, 0]) == [records[29], records[2], records[2], records[0]]


@pytest.mark.parametrize("checksum", ["xxh3_64", "crc32"])
@pytest.mark.parametrize("verify", [True, False])
def test_checksums_and_verify_flag(dataset_url: str, checksum: str, verify: bool) -> None:
    records = [tag(k, b"z" * k) for k in range(40)]
    write_split_data(dataset_url, records, splits=6, checksum=checksum, durable=False)
    with SplitDataLoader(dataset_url, verify=verify) as loader:
        assert read_all(loader) == records
        assert sorted(loader.iterate_binwise()) == sorted(records)


# ---------------------------------------------------------------- record types


def test_accepts_bytes_like_records(dataset_url: str) -> None:
    grid = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    inputs: list[object] = [
        b"plain",
        bytearray(b"mutable"),
        memoryview(b"0123456789")[2:6],
        np.frombuffer(b"\x00\x01\xff", dtype=np.uint8),
        grid,
        memoryview(ints),
        np.zeros(0, dtype=np.uint8),
        bytearray(),
    ]
    expected = [
        b"plain",
        b"mutable",
        b"2345",
        b"\x00\x01\xff",
        grid.tobytes(),
        ints.tobytes(),
        b"",
        b"",
    ]
    assert write_split_data(dataset_url, iter(inputs), splits=3) == len(inputs)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == expected
        restored = np.frombuffer(loader[4], dtype=np.float32).reshape(3, 4)
        assert np.array_equal(restored, grid)


_matrix = np.arange(24, dtype=np.uint8).reshape(4, 6)

REJECTED = [
    pytest.param("text", "str", id="str"),
    pytest.param(12, "int", id="int"),
    pytest.param(None, "NoneType", id="None"),
    pytest.param([1, 2, 3], "list", id="list"),
    pytest.param(_matrix[:, ::2], "ndarray", id="strided-array"),
    pytest.param(_matrix.T, "ndarray", id="transposed-array"),
    pytest.param(memoryview(b"abcdefgh")[::2], "memoryview", id="strided-memoryview"),
]


@pytest.mark.parametrize(("bad", "type_name"), REJECTED)
@pytest.mark.parametrize("position", [0, 5])
def test_rejects_non_bytes_records(
    dataset_url: str, bad: object, type_name: str, position: int
) -> None:
    good = [bytes([k]) for k in range(position)]
    with pytest.raises(RecordTypeError) as caught:
        write_split_data(dataset_url, [*good, bad, b"after"], splits=2)
    err = caught.value
    assert isinstance(err, TypeError)
    assert isinstance(err, SplitDataError)
    assert err.record == position
    assert f"record {position}" in str(err)
    assert type_name in str(err)
    # Nothing was committed: the dataset does not exist.
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dataset_url)


def test_rejected_record_keeps_previous_commit(dataset_url: str) -> None:
    write_split_data(dataset_url, [b"one", b"two", b"three"], splits=2)
    with pytest.raises(RecordTypeError) as caught:
        write_split_data(dataset_url, [b"four", "five"], splits=2)
    # Named by the index it would have had, and by its position in this write's input.
    assert caught.value.record == 4
    assert "record 4 (input item 1)" in str(caught.value)
    with SplitDataLoader(dataset_url) as loader:
        assert read_all(loader) == [b"one", b"two", b"three"]
        assert list(loader.iterate_binwise()) == [b"one", b"three", b"two"]


# ---------------------------------------------------------------- loader object


def test_loader_pickles_and_closes(dataset_url: str) -> None:
    records = [tag(k, b"p" * k) for k in range(30)]
    write_split_data(dataset_url, records, splits=4)
    loader = SplitDataLoader(dataset_url)
    try:
        clone = pickle.loads(pickle.dumps(loader))
        try:
            assert read_all(clone) == records
            assert list(clone.iterate_binwise()) == list(loader.iterate_binwise())
        finally:
            clone.close()
    finally:
        loader.close()
    loader.close()  # closing twice is harmless


def test_local_path_forms(tmp_path: Path) -> None:
    records = [b"x", b"", b"yz"]
    target = tmp_path / "ds"
    write_split_data(target, records, splits=2)
    for location in (target, str(target), f"file://{target}"):
        with SplitDataLoader(location) as loader:  # type: ignore[arg-type]
            assert read_all(loader) == records
    write_split_data(f"file://{target}", [b"more"], splits=2)
    with SplitDataLoader(str(target)) as loader:
        assert read_all(loader) == [*records, b"more"]


def test_many_records_binwise_counts(dataset_url: str) -> None:
    count = 5000
    records = [struct.pack("<I", k) for k in range(count)]
    write_split_data(dataset_url, records, splits=17, durable=False)
    with SplitDataLoader(dataset_url) as loader:
        assert len(loader) == count
        binwise = list(loader.iterate_binwise())
        assert binwise == DatasetModel([CommitModel(tuple(records), 17)]).binwise(17)
        picks = [4999, 0, 17, 16, 2500, 4999]
        assert loader.get_many(picks) == [records[i] for i in picks]


@per_example_url
@given(
    batches=st.lists(st.lists(st.binary(max_size=3000), max_size=15), min_size=1, max_size=4),
    bins=st.integers(1, 6),
    data=st.data(),
)
def test_writer_commits_with_small_segments(
    fresh_url: Callable[[], str], batches: list[list[bytes]], bins: int, data: st.DataObject
) -> None:
    url = fresh_url()
    model = DatasetModel()
    session = 0
    with SplitWriter(url, bins=bins, max_segment_bytes=1024) as writer:
        for batch in batches:
            writer.write_many(batch)
            if batch:
                model.commits.append(CommitModel(tuple(batch), bins, start=session % bins))
            session += len(batch)
            assert writer.commit() == session
    expected = model.records
    with SplitDataLoader(url, max_open_segments=2) as loader:
        assert read_all(loader) == expected
        assert list(loader.iterate_binwise()) == model.binwise(bins)
        if expected:
            picks = data.draw(st.lists(st.integers(0, len(expected) - 1), max_size=40))
            assert loader.get_many(picks) == [expected[i] for i in picks]
            assert loader[::-1] == expected[::-1]


def test_many_segments_few_open_handles(dataset_url: str) -> None:
    model = DatasetModel()
    for write in range(12):
        records = [tag(write * 100 + k, b"s" * (k * 40)) for k in range(10)]
        write_split_data(dataset_url, records, splits=4)
        model.commits.append(CommitModel(tuple(records), 4))
    expected = model.records
    order = [(k * 37) % len(expected) for k in range(3 * len(expected))]
    with SplitDataLoader(dataset_url, max_open_segments=3) as loader:
        assert [loader[i] for i in order] == [expected[i] for i in order]
        assert loader.get_many(order) == [expected[i] for i in order]
        assert list(loader.iterate_binwise()) == model.binwise(4)


@pytest.mark.parametrize("splits", [0, -1, 1.5, "3", True, 2**40])
def test_invalid_bin_count_is_refused(dataset_url: str, splits: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        write_split_data(dataset_url, [b"a"], splits=splits)  # type: ignore[arg-type]
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(dataset_url)


def test_commit_with_more_records_than_the_writer_keeps_in_memory(dataset_url: str) -> None:
    # Past 8 MiB of index entries (about 350,000 records) the writer spills them to a
    # scratch file; segments also roll over every MiB. Both must keep every offset right.
    count = 800_000
    records = [struct.pack("<I", k) + b"x" * (k % 4) for k in range(count)]
    with SplitWriter(dataset_url, bins=3, max_segment_bytes=1 << 20) as writer:
        assert writer.write_many(records) == count
    with SplitDataLoader(dataset_url) as loader:
        assert len(loader) == count
        assert list(loader.iterate_binwise()) == [
            records[k] for b in range(3) for k in range(b, count, 3)
        ]
        sample = range(0, count, 97)
        assert loader.get_many(sample) == [records[k] for k in sample]
        one_by_one = range(0, count, 40_009)
        assert [loader[k] for k in one_by_one] == [records[k] for k in one_by_one]
        around_spill = range(349_000, 350_500)
        assert loader.get_many(around_spill) == records[349_000:350_500]
