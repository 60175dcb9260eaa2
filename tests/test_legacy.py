"""Datasets written by the real splitdataloader 0.0.1 (from PyPI) read back identically.

A session fixture installs 0.0.1 with pip into pytest's cache folder; each scenario runs
0.0.1's ``write_split_data`` in a subprocess, which also dumps what 0.0.1's own loader
returns. Our ``SplitDataLoader`` must return the same length, records and bin-wise order,
on local disk and after copying the files to ``memory://``.
"""

from __future__ import annotations

import pickle
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from conftest import BACKENDS
from legacy_tools import LegacyDump, LegacyWrite, install_legacy, run_legacy
from reference_model import CommitModel, DatasetModel, copy_folder, read_all

from splitdataloader import SplitDataLoader, SplitWriter, convert_legacy, write_split_data
from splitdataloader.errors import ReadOnlyDatasetError

pytestmark = pytest.mark.legacy


def make_records(seed: int, count: int, max_size: int = 300) -> tuple[bytes, ...]:
    rng = random.Random(seed)
    sizes = [0, 1, max_size] + [rng.randrange(max_size) for _ in range(count)]
    return tuple(rng.randbytes(size) for size in sizes[:count])


SCENARIOS: dict[str, list[LegacyWrite]] = {
    "one-write": [LegacyWrite(make_records(1, 40), splits=5)],
    "one-bin": [LegacyWrite(make_records(2, 12), splits=1)],
    "fewer-records-than-bins": [LegacyWrite(make_records(3, 4), splits=9)],
    "default-256-bins": [LegacyWrite(make_records(4, 300, 20), splits=256)],
    "shuffled": [LegacyWrite(make_records(5, 50), splits=7, shuffle=True)],
    "append": [
        LegacyWrite(make_records(6, 23), splits=4),
        LegacyWrite(make_records(7, 18), splits=4),
    ],
    "append-more-bins": [
        LegacyWrite(make_records(8, 10), splits=3),
        LegacyWrite(make_records(9, 25), splits=6),
    ],
    "append-fewer-bins": [
        LegacyWrite(make_records(10, 25), splits=6),
        LegacyWrite(make_records(11, 10), splits=2),
    ],
    "append-shuffled": [
        LegacyWrite(make_records(12, 30), splits=5, shuffle=True),
        LegacyWrite(make_records(13, 21), splits=5),
        LegacyWrite(make_records(14, 12), splits=5, shuffle=True),
    ],
    "start-clean": [
        LegacyWrite(make_records(15, 30), splits=5),
        LegacyWrite(make_records(16, 9), splits=2, start_clean=True),
    ],
    "empty-records": [LegacyWrite((b"",) * 11, splits=3)],
    "empty-dataset": [LegacyWrite((), splits=4)],
}

UNSHUFFLED_ONE_CALL = ["one-write", "one-bin", "fewer-records-than-bins", "empty-records"]


def written_records(writes: list[LegacyWrite]) -> list[bytes]:
    """The model: what the dataset holds after the writes, in index order."""
    records: list[bytes] = []
    for write in writes:
        if write.start_clean:
            records = []
        records.extend(write.records)
    return records


def binwise_model(writes: list[LegacyWrite]) -> list[bytes] | None:
    """0.0.1's bin-wise order (every call starts again at bin 0), if nothing was shuffled."""
    if any(write.shuffle for write in writes):
        return None
    model = DatasetModel()
    for write in writes:
        if write.start_clean:
            model = DatasetModel()
        model.commits.append(CommitModel(write.records, write.splits))
    return model.binwise(max(write.splits for write in writes))


@pytest.fixture(scope="session")
def legacy_package(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir("splitdataloader-0.0.1")) / "site"
    else:
        folder = tmp_path_factory.mktemp("legacy") / "site"
    return install_legacy(folder)


def read_each(loader: SplitDataLoader, backend: str) -> list[bytes]:
    """Every record of ``loader``, read one ``loader[i]`` at a time locally; on remote
    backends (one request per call) every record through ``get_many`` and a spread of
    40 through ``loader[i]``, which must agree with it."""
    if backend == "local":
        return read_all(loader)
    records = loader.get_many(range(len(loader)))
    for i in sorted({k * len(records) // 40 for k in range(40)} - {len(records)}):
        assert loader[i] == records[i]
    return records


@pytest.fixture(scope="session")
def legacy_dataset(
    legacy_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, LegacyDump]]:
    """Scenario name -> (local folder written by 0.0.1, what 0.0.1 read from it)."""
    made: dict[str, tuple[Path, LegacyDump]] = {}

    def get(name: str) -> tuple[Path, LegacyDump]:
        if name not in made:
            folder = tmp_path_factory.mktemp("legacy-data") / name
            dump = run_legacy(legacy_package, folder, SCENARIOS[name], seed=len(made))
            made[name] = (folder, dump)
        return made[name]

    return get


#: Every scenario on every backend, but 256 bins on the S3 server: its three-hundred-odd
#: requests per pass (a minute of the suite on moto) check nothing that the 256 bins on
#: local disk and in memory and the other scenarios on S3 do not.
CASES = [
    (backend, scenario)
    for backend in BACKENDS
    for scenario in sorted(SCENARIOS)
    if not (backend == "s3" and scenario == "default-256-bins")
]


def place(folder: Path, backend: str, dataset_root: str) -> str:
    """The URL of a copy of ``folder`` on ``backend`` (local: the folder itself)."""
    if backend == "local":
        return str(folder)
    url = f"{dataset_root}/legacy-{uuid.uuid4().hex}"
    copy_folder(folder, url)
    return url


@pytest.mark.parametrize(("backend", "scenario"), CASES, indirect=["backend"])
def test_reads_what_0_0_1_wrote(
    legacy_dataset: Callable[[str], tuple[Path, LegacyDump]],
    backend: str,
    dataset_root: str,
    scenario: str,
) -> None:
    folder, dump = legacy_dataset(scenario)
    expected = written_records(SCENARIOS[scenario])
    # The harness itself: 0.0.1 gives back what it was given.
    assert dump.items == expected
    assert dump.length == len(expected)
    model_order = binwise_model(SCENARIOS[scenario])
    if model_order is not None:
        assert dump.binwise == model_order

    url = place(folder, backend, dataset_root)
    with SplitDataLoader(url) as loader:
        assert loader.is_legacy
        assert len(loader) == dump.length
        assert read_each(loader, backend) == dump.items
        assert list(loader) == dump.items
        backwards = range(1, len(expected) + 1)
        if backend != "local":
            backwards = backwards[:: max(1, len(expected) // 40)]
        assert [loader[-k] for k in backwards] == [expected[-k] for k in backwards]
        assert loader[1::2] == expected[1::2]
        picks = [*range(len(expected) - 1, -1, -3), 0, 0] if expected else []
        assert loader.get_many(picks) == [expected[i] for i in picks]
        with pytest.raises(IndexError):
            loader[len(expected)]
        assert list(loader.iterate_binwise()) == dump.binwise
        shuffled = list(loader.iterate_binwise(shuffle=True, seed=1))
        assert sorted(shuffled) == sorted(dump.binwise)
        assert list(loader.iterate_binwise(shuffle=True, seed=1)) == shuffled
        clone = pickle.loads(pickle.dumps(loader))
        try:
            assert clone.is_legacy
            assert read_each(clone, backend) == dump.items
        finally:
            clone.close()


@pytest.mark.parametrize(("backend", "scenario"), CASES, indirect=["backend"])
def test_convert_legacy_keeps_every_record(
    legacy_dataset: Callable[[str], tuple[Path, LegacyDump]],
    backend: str,
    dataset_root: str,
    scenario: str,
) -> None:
    folder, dump = legacy_dataset(scenario)
    source = place(folder, backend, dataset_root)
    dest = f"{dataset_root}/converted-{uuid.uuid4().hex}"
    assert convert_legacy(source, dest) == dump.length
    with SplitDataLoader(dest) as converted:
        assert not converted.is_legacy
        assert len(converted) == dump.length
        assert read_each(converted, backend) == dump.items
        binwise = list(converted.iterate_binwise())
        assert sorted(binwise) == sorted(dump.binwise)
        if scenario in UNSHUFFLED_ONE_CALL:
            # Documented: one unshuffled 0.0.1 call keeps its bin-wise order.
            assert binwise == dump.binwise
    # The source is untouched.
    with SplitDataLoader(source) as original:
        assert original.is_legacy
        assert read_each(original, backend) == dump.items


def test_convert_in_place(
    legacy_dataset: Callable[[str], tuple[Path, LegacyDump]], backend: str, dataset_root: str
) -> None:
    folder, dump = legacy_dataset("append")
    url = writable_copy(folder, backend, dataset_root)
    assert convert_legacy(url, url, start_clean=True) == dump.length
    with SplitDataLoader(url) as loader:
        assert not loader.is_legacy
        assert read_all(loader) == dump.items
    fs, root = fsspec.core.url_to_fs(url)
    leftovers = [p for p in fs.find(root) if p.endswith(".dat")]
    assert leftovers == []


def writable_copy(folder: Path, backend: str, dataset_root: str) -> str:
    """A copy of ``folder`` that a test may change (the session's folder is shared)."""
    if backend != "local":
        return place(folder, backend, dataset_root)
    target = f"{dataset_root}/{folder.name}-copy-{uuid.uuid4().hex}"
    copy_folder(folder, target)
    return target


def test_writing_into_a_0_0_1_dataset_is_refused(
    legacy_dataset: Callable[[str], tuple[Path, LegacyDump]], backend: str, dataset_root: str
) -> None:
    folder, dump = legacy_dataset("one-write")
    url = writable_copy(folder, backend, dataset_root)
    with pytest.raises(ReadOnlyDatasetError):
        write_split_data(url, [b"more"], splits=5)
    with pytest.raises(ReadOnlyDatasetError):
        SplitWriter(url, bins=5)
    with SplitDataLoader(url) as loader:
        assert read_all(loader) == dump.items
