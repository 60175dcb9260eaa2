"""SplitDataLoader.epoch: ranks' shares of a seeded epoch read from storage, split over
workers, and resumed from a saved state (also in another process, with another number of
workers, on another rank), on every storage backend and on 0.0.1 datasets."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from conftest import S3_MAX_EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.epochs import EpochShard
from splitdataloader.errors import ResumeStateError, SamplingError
from splitdataloader.sampling import EVEN_MODES

GOLDEN = Path(__file__).resolve().parent / "golden"
BINS = 5


def record(k: int) -> bytes:
    return b"record-%05d|" % k + b"x" * (k % 23)


def two_commits(url: str, first: int = 130, second: int = 57) -> list[bytes]:
    """A dataset of two commits (the second an append) over ``BINS`` bins."""
    records = [record(k) for k in range(first + second)]
    write_split_data(url, records[:first], splits=BINS)
    write_split_data(url, records[first:], splits=BINS)
    return records


def round_robin(shares: list[list[bytes]], block_size: int) -> list[bytes]:
    """One block from each worker in turn, as PyTorch's DataLoader takes them."""
    out: list[bytes] = []
    cursors = [0] * len(shares)
    while any(c < len(s) for c, s in zip(cursors, shares)):
        for w, share in enumerate(shares):
            out.extend(share[cursors[w] : cursors[w] + block_size])
            cursors[w] += block_size
    return out


def test_an_unshuffled_epoch_is_the_stored_bin_order(dataset_url: str) -> None:
    records = two_commits(dataset_url)
    with SplitDataLoader(dataset_url) as loader:
        shard = loader.epoch(shuffle=False)
        assert len(shard) == len(records)
        assert list(shard) == list(loader.iterate_binwise())


@pytest.mark.parametrize("name", ["legacy-0.0.1", "v2-7bins"])
def test_golden_datasets_iterate_by_epoch(name: str) -> None:
    with SplitDataLoader(GOLDEN / name) as loader:
        everything = list(loader)
        assert list(loader.epoch(shuffle=False)) == list(loader.iterate_binwise())
        shards = [loader.epoch(4, seed=9, rank=r, world_size=3) for r in range(3)]
        indices = [i for shard in shards for i in shard.indices().tolist()]
        assert sorted(indices) == list(range(len(everything)))
        assert [r for shard in shards for r in shard] == [everything[i] for i in indices]


@pytest.mark.parametrize("even", EVEN_MODES)
def test_ranks_read_disjoint_runs_that_cover_the_epoch(dataset_url: str, even: str | None) -> None:
    records = two_commits(dataset_url)
    world_size = 4
    with SplitDataLoader(dataset_url) as loader:
        whole = loader.epoch(2, seed=11)
        order = whole.indices().tolist()
        assert sorted(order) == list(range(len(records)))
        shards = [
            loader.epoch(2, seed=11, rank=r, world_size=world_size, even=even)
            for r in range(world_size)
        ]
        got = [shard.indices().tolist() for shard in shards]
        read = [list(shard) for shard in shards]
    for indices, data in zip(got, read):
        assert data == [records[i] for i in indices]
    flat = [i for indices in got for i in indices]
    lengths = {len(indices) for indices in got}
    if even is None:
        assert flat == order
    elif even == "pad":
        assert len(lengths) == 1
        assert flat[: len(order)] == order
        assert flat[len(order) :] == order[: len(flat) - len(order)]
    else:
        assert len(lengths) == 1
        assert flat == order[: len(flat)]
        assert len(order) - len(flat) < world_size


def test_each_rank_reads_whole_runs_of_bins(tmp_path: Path) -> None:
    # One commit written round-robin: record k lies in bin k mod bins.
    bins = 8
    url = str(tmp_path / "ds")
    write_split_data(url, [record(k) for k in range(400)], splits=bins)
    with SplitDataLoader(url) as loader:
        shards = [loader.epoch(1, seed=3, rank=r, world_size=3) for r in range(3)]
        runs_per_rank = []
        for shard in shards:
            bin_of = [i % bins for i in shard.indices().tolist()]
            runs = [b for k, b in enumerate(bin_of) if k == 0 or bin_of[k - 1] != b]
            assert len(runs) == len(set(runs)), "a bin came back after another one"
            runs_per_rank.append(runs)
        # Over all ranks each bin is one run, except the bins cut at a rank boundary.
        assert sum(len(runs) for runs in runs_per_rank) <= bins + 2
        mixed = loader.epoch(1, seed=3, mix_bins=4).indices().tolist()
        assert {i % bins for i in mixed[:200]} | {i % bins for i in mixed[200:]} == set(range(8))
        assert len({i % bins for i in mixed[:200]}) == 4


def test_epochs_and_seeds_change_the_order_and_nothing_else(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    two_commits(url)
    with SplitDataLoader(url) as loader:
        base = loader.epoch(0, seed=1).indices().tolist()
        again = SplitDataLoader(url).epoch(0, seed=1).indices().tolist()
        assert again == base
        assert loader.epoch(1, seed=1).indices().tolist() != base
        assert loader.epoch(0, seed=2).indices().tolist() != base
        assert sorted(loader.epoch(1, seed=1).indices().tolist()) == sorted(base)


def test_resuming_gives_the_rest_of_the_uninterrupted_epoch(dataset_url: str, backend: str) -> None:
    url = dataset_url
    two_commits(url)

    @settings(max_examples=S3_MAX_EXAMPLES if backend == "s3" else settings().max_examples)
    @given(
        stop=st.integers(0, 190),
        workers=st.integers(1, 4),
        block_size=st.integers(1, 40),
        world_size=st.integers(1, 3),
        even=st.sampled_from(EVEN_MODES),
        mix_bins=st.integers(1, 3),
    )
    def check(
        *,
        stop: int,
        workers: int,
        block_size: int,
        world_size: int,
        even: str | None,
        mix_bins: int,
    ) -> None:
        options = {"seed": 21, "world_size": world_size, "even": even, "mix_bins": mix_bins}
        rank = world_size - 1
        with SplitDataLoader(url) as loader:
            shard = loader.epoch(6, rank=rank, **options)  # type: ignore[arg-type]
            uninterrupted = list(shard)
            cut = min(stop, len(shard))
            state = pickle.loads(pickle.dumps(shard.state_dict(cut)))
            # Another process opens the dataset again (here: an unpickled loader), builds
            # the same epoch from the state and reads the rest with another number of
            # workers.
            other = pickle.loads(pickle.dumps(loader))
        with other:
            resumed = other.epoch(state["epoch"], rank=rank, **options)  # type: ignore[arg-type]
            start = resumed.resume_from(state)
            assert start == cut
            shares = [
                list(resumed.iterate(start, worker=w, workers=workers, block_size=block_size))
                for w in range(workers)
            ]
            assert [len(s) for s in shares] == [
                resumed.count(start, worker=w, workers=workers, block_size=block_size)
                for w in range(workers)
            ]
            assert round_robin(shares, block_size) == uninterrupted[cut:]

    check()


def test_a_state_resumes_on_another_rank_of_the_same_world(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    two_commits(url)
    with SplitDataLoader(url) as loader:
        ranks = [loader.epoch(3, seed=4, rank=r, world_size=2, even="pad") for r in range(2)]
        state = ranks[0].state_dict(25)
        for shard in ranks:
            assert list(shard.iterate(shard.resume_from(state))) == list(shard)[25:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 5}, "seed"),
        ({"world_size": 3}, "world_size"),
        ({"even": "drop"}, "even"),
        ({"mix_bins": 2}, "mix_bins"),
        ({"shuffle": False}, "shuffle"),
        ({"epoch": 4}, "epoch"),
    ],
)
def test_a_state_of_another_seed_or_split_is_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    url = str(tmp_path / "ds")
    two_commits(url)
    options: dict[str, object] = {"seed": 4, "world_size": 2, "even": "pad"}
    with SplitDataLoader(url) as loader:
        state = loader.epoch(3, **options).state_dict(10)  # type: ignore[arg-type]
        other = {**options, "epoch": 3, **change}
        shard = loader.epoch(**other)  # type: ignore[arg-type]
        with pytest.raises(ResumeStateError, match=message):
            shard.resume_from(state)


def test_a_state_of_another_dataset_or_commit_is_refused(tmp_path: Path) -> None:
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    two_commits(first)
    two_commits(second)
    state = SplitDataLoader(first).epoch(1, seed=2).state_dict(7)
    with pytest.raises(ResumeStateError, match="another dataset"):
        SplitDataLoader(second).epoch(1, seed=2).resume_from(state)
    # A copy of the same dataset is the same dataset.
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert SplitDataLoader(copy).epoch(1, seed=2).resume_from(state) == 7
    # An append changes the epoch's order: the saved position means nothing there.
    write_split_data(first, [b"late"], splits=BINS)
    with pytest.raises(ResumeStateError, match="another dataset"):
        SplitDataLoader(first).epoch(1, seed=2).resume_from(state)


def test_a_state_past_the_end_or_malformed_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    two_commits(url)
    with SplitDataLoader(url) as loader:
        shard = loader.epoch(0, world_size=2, rank=1)
        state = shard.state_dict(len(shard))
        assert list(shard.iterate(shard.resume_from(state))) == []
        with pytest.raises(ResumeStateError, match="past the end"):
            shard.resume_from({**state, "consumed": len(shard) + 1})
        with pytest.raises(ResumeStateError, match="consumed"):
            shard.resume_from({**state, "consumed": -1})
        with pytest.raises(SamplingError, match="consumed"):
            shard.state_dict(len(shard) + 1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": -1, "world_size": 2}, "rank"),
        ({"world_size": 0}, "world_size"),
        ({"seed": -5}, "seed"),
        ({"epoch": -1}, "epoch"),
        ({"mix_bins": 0}, "mix_bins"),
        ({"even": "round"}, "even"),
    ],
)
def test_bad_epoch_arguments_are_refused(
    tmp_path: Path, kwargs: dict[str, object], name: str
) -> None:
    url = str(tmp_path / "ds")
    write_split_data(url, [b"a", b"b", b"c"], splits=2)
    with pytest.raises(SamplingError, match=name) as caught:
        SplitDataLoader(url).epoch(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"workers": 0}, "workers"),
        ({"worker": 3, "workers": 3}, "worker"),
        ({"block_size": 0}, "block_size"),
        ({"start": 4}, "start"),
    ],
)
def test_bad_worker_splits_are_refused_before_reading(
    tmp_path: Path, kwargs: dict[str, int], name: str
) -> None:
    url = str(tmp_path / "ds")
    write_split_data(url, [b"a", b"b", b"c"], splits=2)
    shard = SplitDataLoader(url).epoch()
    start = kwargs.pop("start", 0)
    with pytest.raises(SamplingError, match=name):
        shard.iterate(start, **kwargs)


def test_a_worker_reads_batches_of_records_not_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "ds")
    records = [record(k) for k in range(3000)]
    write_split_data(url, records, splits=6)
    calls: list[int] = []
    with SplitDataLoader(url) as loader:
        original = loader.get_many

        def counting(indices: list[int]) -> list[bytes]:
            calls.append(len(indices))
            return original(indices)

        monkeypatch.setattr(loader, "get_many", counting)
        shard: EpochShard = loader.epoch(1, seed=5)
        monkeypatch.setattr(shard, "_read_records", 500)
        share = list(shard.iterate(0, worker=1, workers=2, block_size=7))
        assert share == [records[i] for i in shard.indices(0, worker=1, workers=2, block_size=7)]
    count = shard.count(0, worker=1, workers=2, block_size=7)
    assert len(share) == count > 1000
    # Small reads first (the first records come quickly), then reads of up to 500 records.
    assert sum(calls) == count
    assert calls == sorted(calls[:-1]) + calls[-1:]
    assert calls[0] >= 7
    assert max(calls) == 500
    assert len(calls) <= count // 500 + 4
