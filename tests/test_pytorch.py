"""The PyTorch adapters with the real torch: DataLoader workers, DistributedSampler, resume
with another number of workers, and a real two-process torch.distributed (gloo) run."""

from __future__ import annotations

import multiprocessing
import queue
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import _torch_helpers
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import ResumeStateError, SamplingError
from splitdataloader.pytorch import SplitDataset, SplitIterableDataset

BINS = 6
COUNT = 203  # a prime: no world size or batch size divides it


def record(k: int) -> bytes:
    return b"item-%04d;" % k + bytes([k % 251]) * (k % 17)


@pytest.fixture
def dataset(dataset_root: str) -> tuple[str, list[bytes]]:
    """A two-commit dataset on the current backend, and its records."""
    url = f"{dataset_root}/ds"
    records = [record(k) for k in range(COUNT)]
    write_split_data(url, records[:150], splits=BINS)
    write_split_data(url, records[150:], splits=BINS)
    return url, records


@pytest.fixture
def local_dataset(tmp_path: Path) -> tuple[str, list[bytes]]:
    url = str(tmp_path / "ds")
    records = [record(k) for k in range(COUNT)]
    write_split_data(url, records[:150], splits=BINS)
    write_split_data(url, records[150:], splits=BINS)
    return url, records


def flatten(loader: DataLoader[Any]) -> list[bytes]:
    return [item for batch in loader for item in batch]


def test_the_package_imports_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import splitdataloader
        from splitdataloader import SplitDataLoader, sampling
        assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
        try:
            import splitdataloader.pytorch
        except splitdataloader.errors.MissingPluginError as err:
            assert isinstance(err, ImportError)
            print(err)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'splitdataloader[torch]'" in result.stdout


# ------------------------------------------------------------------ map-style


def test_map_style_dataset_with_distributed_sampler_and_workers(
    dataset: tuple[str, list[bytes]],
) -> None:
    url, records = dataset
    data = SplitDataset(url)
    assert len(data) == COUNT
    assert data[7] == records[7]
    assert data.__getitems__([5, 202, 5]) == [records[5], records[202], records[5]]
    seen: list[bytes] = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(data, batch_size=16, sampler=sampler, num_workers=2)
        got = flatten(loader)
        assert got == [records[i] for i in sampler]
        seen.extend(got)
    assert set(seen) == set(records)
    assert len(seen) == COUNT + 1  # DistributedSampler pads to an even split


def test_map_style_dataset_applies_its_transform_in_workers(
    local_dataset: tuple[str, list[bytes]],
) -> None:
    url, records = local_dataset
    data = SplitDataset(SplitDataLoader(url), transform=len)
    loader = DataLoader(data, batch_size=10, num_workers=2)
    assert [int(n) for batch in loader for n in batch] == [len(r) for r in records]


# ------------------------------------------------------------------ iterable


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_dataset_yields_the_epoch_order_through_workers(
    dataset: tuple[str, list[bytes]], workers: int
) -> None:
    url, _ = dataset
    data = SplitIterableDataset(url, seed=5, batch_size=8, rank=1, world_size=2)
    data.set_epoch(3)
    expected = list(SplitDataLoader(url).epoch(3, seed=5, rank=1, world_size=2, even="pad"))
    assert len(data) == len(expected) == 102
    loader = DataLoader(data, batch_size=8, num_workers=workers)
    assert len(loader) == 13
    assert flatten(loader) == expected
    # The same epoch again gives the same order; the next epoch another one.
    assert flatten(loader) == expected
    data.set_epoch(4)
    following = flatten(loader)
    assert following != expected
    assert len(following) == len(expected)


@pytest.mark.parametrize("even", [None, "pad", "drop"])
def test_ranks_share_an_epoch_through_dataloader_workers(
    local_dataset: tuple[str, list[bytes]], even: str | None
) -> None:
    url, records = local_dataset
    shares = []
    for rank in range(3):
        data = SplitIterableDataset(url, seed=1, even=even, batch_size=5, rank=rank, world_size=3)
        shares.append(flatten(DataLoader(data, batch_size=5, num_workers=2)))
    together = [item for share in shares for item in share]
    if even is None:
        assert sorted(together) == sorted(records)
    elif even == "pad":
        assert {len(share) for share in shares} == {68}
        assert set(together) == set(records)
        assert sum((Counter(together) - Counter(records)).values()) == 1
    else:
        assert {len(share) for share in shares} == {67}
        assert len(set(together)) == len(together) == 201


def test_iterable_dataset_applies_its_transform_in_workers(
    local_dataset: tuple[str, list[bytes]],
) -> None:
    url, records = local_dataset
    data = SplitIterableDataset(url, shuffle=False, batch_size=4, transform=bytes.upper)
    got = flatten(DataLoader(data, batch_size=4, num_workers=2))
    assert got == [r.upper() for r in SplitDataLoader(url).epoch(shuffle=False)]
    assert sorted(got) == sorted(r.upper() for r in records)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (0, 2), (2, 0)])
def test_resuming_with_another_number_of_workers(
    dataset: tuple[str, list[bytes]], before: int, after: int
) -> None:
    url, _ = dataset
    batch_size = 6
    options: dict[str, Any] = {"seed": 8, "batch_size": batch_size, "rank": 0, "world_size": 2}
    data = SplitIterableDataset(url, **options)
    data.set_epoch(2)
    uninterrupted = flatten(DataLoader(data, batch_size=batch_size, num_workers=before))
    taken_batches = 7
    received: list[bytes] = []
    for number, batch in enumerate(DataLoader(data, batch_size=batch_size, num_workers=before)):
        received.extend(batch)
        if number + 1 == taken_batches:
            break
    assert received == uninterrupted[: taken_batches * batch_size]
    taken = None if before == 0 else len(received)  # without workers the dataset counts
    state = data.state_dict(taken)
    assert (state["seed"], state["epoch"], state["consumed"]) == (8, 2, len(received))
    # A new process: a fresh dataset object, the state loaded, another number of workers.
    resumed = SplitIterableDataset(url, **options)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the loaded epoch: the loaded position stays
    assert len(resumed) == len(uninterrupted) - len(received)
    rest = flatten(DataLoader(resumed, batch_size=batch_size, num_workers=after))
    assert rest == uninterrupted[len(received) :]
    # Saved again mid-way through the resumed pass, the position counts from the epoch start.
    assert resumed.state_dict(taken=12)["consumed"] == len(received) + 12
    # set_epoch starts the next epoch from its beginning.
    resumed.set_epoch(3)
    assert len(resumed) == len(uninterrupted)


def test_a_state_resumes_on_the_other_rank(local_dataset: tuple[str, list[bytes]]) -> None:
    url, _ = local_dataset
    ranks = [
        SplitIterableDataset(url, seed=2, batch_size=4, rank=r, world_size=2) for r in range(2)
    ]
    full = [flatten(DataLoader(d, batch_size=4, num_workers=2)) for d in ranks]
    state = ranks[0].state_dict(taken=40)
    for rank, data in enumerate(ranks):
        data.load_state_dict(state)
        assert flatten(DataLoader(data, batch_size=4, num_workers=1)) == full[rank][40:]


def test_state_dict_needs_the_count_when_workers_did_the_reading(
    local_dataset: tuple[str, list[bytes]],
) -> None:
    url, _ = local_dataset
    data = SplitIterableDataset(url, batch_size=4)
    flatten(DataLoader(data, batch_size=4, num_workers=2))
    with pytest.raises(SamplingError, match="taken="):
        data.state_dict()
    with pytest.raises(SamplingError, match="taken"):
        data.state_dict(taken=-1)
    assert data.state_dict(taken=10**6)["consumed"] == COUNT


def test_a_state_of_another_seed_or_dataset_is_refused(
    tmp_path: Path, local_dataset: tuple[str, list[bytes]]
) -> None:
    url, records = local_dataset
    state = SplitIterableDataset(url, seed=1, batch_size=4).state_dict(taken=8)
    with pytest.raises(ResumeStateError, match="seed"):
        SplitIterableDataset(url, seed=2, batch_size=4).load_state_dict(state)
    other = str(tmp_path / "other")
    write_split_data(other, records, splits=BINS)
    refused = SplitIterableDataset(other, seed=1, batch_size=4)
    with pytest.raises(ResumeStateError, match="another dataset"):
        refused.load_state_dict(state)
    # A refused state leaves the dataset as it was.
    assert refused.epoch == 0
    assert len(refused) == COUNT
    with pytest.raises(ResumeStateError, match="world_size"):
        SplitIterableDataset(url, seed=1, batch_size=4, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ResumeStateError, match="mapping"):
        SplitIterableDataset(url, seed=1).load_state_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"rank": 1}, "world_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"even": "fair"}, "even"),
        ({"mix_bins": 0}, "mix_bins"),
    ],
)
def test_bad_arguments_are_refused(
    local_dataset: tuple[str, list[bytes]], kwargs: dict[str, Any], name: str
) -> None:
    url, _ = local_dataset
    with pytest.raises(SamplingError, match=name):
        SplitIterableDataset(url, **kwargs)


def test_set_epoch_refuses_a_negative_epoch(local_dataset: tuple[str, list[bytes]]) -> None:
    with pytest.raises(SamplingError, match="epoch"):
        SplitIterableDataset(local_dataset[0]).set_epoch(-1)


def test_loader_options_go_with_a_url_only(local_dataset: tuple[str, list[bytes]]) -> None:
    url, records = local_dataset
    with pytest.raises(TypeError, match="verify"):
        SplitDataset(SplitDataLoader(url), verify=False)
    assert SplitDataset(url, verify=False)[3] == records[3]


# ------------------------------------------------------------------ torch.distributed


@pytest.mark.slow
def test_a_real_two_rank_gloo_job_splits_each_epoch(
    local_dataset: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, records = local_dataset
    world_size, batch_size = 2, 8
    epochs = [(0, "fork"), (1, "spawn")]
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    init_file = str(tmp_path / "rendezvous")
    processes = [
        context.Process(
            target=_torch_helpers.run_rank,
            args=(rank, world_size),
            kwargs={
                "init_file": init_file,
                "url": url,
                "batch_size": batch_size,
                "epochs": epochs,
                "results": results,
            },
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        for _ in processes:
            reports.append(results.get(timeout=240))
    except queue.Empty:
        pytest.fail("a rank neither finished nor failed within 240 s")
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
    errors = [report["error"] for report in reports if "error" in report]
    assert not errors, errors[0]
    assert all(process.exitcode == 0 for process in processes)
    assert sorted(report["rank"] for report in reports) == [0, 1]
    # Ranks learnt their rank from the process group: their shares differ.
    assert {report["length"] for report in reports} == {102}
    loader = SplitDataLoader(url)
    reports.sort(key=lambda report: int(report["rank"]))
    for (epoch, _), gathered, seen_by_1 in zip(epochs, *(r["epochs"] for r in reports)):
        assert gathered == seen_by_1
        shares = [part["records"] for part in gathered]
        assert [part["batches"] for part in gathered] == [13, 13]
        for rank, share in enumerate(shares):
            assert share == list(loader.epoch(epoch, seed=13, rank=rank, world_size=2, even="pad"))
        together = shares[0] + shares[1]
        assert set(together) == set(records)
        assert len(together) == COUNT + 1
        assert set(shares[0]).isdisjoint(shares[1][:-1])
    first_epoch = reports[0]["epochs"][0][0]["records"]
    second_epoch = reports[0]["epochs"][1][0]["records"]
    assert first_epoch != second_epoch
