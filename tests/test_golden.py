"""Golden datasets committed in tests/golden/ must read back correctly forever.

Each folder sits next to ``<name>.expected.json``: the sha256 of every record in index
order, computed from the input records when the folder was made (see make_golden.py).
A failure here means a change broke reading data that already exists: fix the reader,
never the golden files.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from reference_model import CommitModel, DatasetModel, check_binwise_structure, copy_folder

from splitdataloader import SplitDataLoader

GOLDEN = Path(__file__).resolve().parent / "golden"
DATASETS = {"v2-7bins": False, "legacy-0.0.1": True}  # name -> written by 0.0.1


def expected(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((GOLDEN / f"{name}.expected.json").read_text())
    return document


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def model_of(document: dict[str, Any]) -> DatasetModel:
    """The commits of the golden dataset, with each record standing for its sha256."""
    hashes = [bytes.fromhex(h) for h in document["sha256"]]
    model = DatasetModel()
    first = 0
    for commit in document["commits"]:
        count = commit["records"]
        records = tuple(hashes[first : first + count])
        model.commits.append(CommitModel(records, commit["bins"], shuffled=commit["shuffle"]))
        first += count
    assert first == len(hashes) == document["records"]
    return model


def golden_url(name: str, backend: str, dataset_root: str) -> str:
    """The committed folder itself on local disk; a copy of it on other backends."""
    folder = GOLDEN / name
    if backend == "local":
        return str(folder)
    url = f"{dataset_root}/{name}-{uuid.uuid4().hex}"
    copy_folder(folder, url)
    return url


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_golden_dataset_reads_back(name: str, backend: str, dataset_root: str) -> None:
    url = golden_url(name, backend, dataset_root)
    document = expected(name)
    model = model_of(document)
    hashes = model.records
    assert len(set(hashes)) == len(hashes), "golden records are distinct by construction"

    with SplitDataLoader(url) as loader:
        assert loader.is_legacy is DATASETS[name]
        assert len(loader) == len(hashes)
        assert [digest(loader[i]) for i in range(len(loader))] == hashes
        assert [digest(record) for record in loader.get_many(range(len(loader)))] == hashes
        assert [digest(loader[-k]) for k in range(1, 11)] == hashes[::-1][:10]
        binwise = [digest(record) for record in loader.iterate_binwise()]
        check_binwise_structure(binwise, model, loader.num_bins)
        shuffled = [digest(record) for record in loader.iterate_binwise(shuffle=True, seed=9)]
        assert sorted(shuffled) == sorted(hashes)
