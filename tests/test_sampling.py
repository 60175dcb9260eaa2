"""Epoch orders and their split over ranks and workers (splitdataloader.sampling), as
properties: permutations, determinism from (seed, epoch) only, bin structure, disjoint and
complete partitions, equal shares, and worker splits that a round-robin consumer puts back
in order whatever the number of workers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitdataloader.errors import ResumeStateError, SamplingError
from splitdataloader.sampling import (
    EVEN_MODES,
    EpochOrder,
    EpochState,
    rank_span,
    worker_count,
    worker_positions,
)

counts_strategy = st.lists(st.integers(0, 30), min_size=0, max_size=12)
seeds = st.integers(0, 2**64)
epochs = st.integers(0, 1000)
mix = st.integers(1, 5)


def round_robin(shares: list[list[int]], block_size: int) -> list[int]:
    """What a consumer that takes one block from each worker in turn receives (PyTorch's
    DataLoader with batch_size == block_size): a worker that has nothing left is skipped."""
    out: list[int] = []
    cursors = [0] * len(shares)
    while any(c < len(s) for c, s in zip(cursors, shares)):
        for w, share in enumerate(shares):
            out.extend(share[cursors[w] : cursors[w] + block_size])
            cursors[w] += block_size
    return out


# ------------------------------------------------------------------ the order


@given(counts_strategy, seeds, epochs, mix, st.booleans())
def test_an_epoch_is_a_permutation_of_every_record(
    counts: list[int], seed: int, epoch: int, mix_bins: int, shuffle: bool
) -> None:
    order = EpochOrder(counts, seed, epoch, shuffle=shuffle, mix_bins=mix_bins)
    records = order.records()
    assert order.total == sum(counts)
    assert sorted(records.tolist()) == list(range(sum(counts)))


@given(
    counts=counts_strategy,
    seed=seeds,
    epoch=epochs,
    mix_bins=mix,
    shuffle=st.booleans(),
    data=st.data(),
)
def test_the_order_depends_on_seed_and_epoch_only(
    *, counts: list[int], seed: int, epoch: int, mix_bins: int, shuffle: bool, data: st.DataObject
) -> None:
    first = EpochOrder(counts, seed, epoch, shuffle=shuffle, mix_bins=mix_bins)
    second = EpochOrder(list(counts), seed, epoch, shuffle=shuffle, mix_bins=mix_bins)
    whole = first.records()
    assert second.records().tolist() == whole.tolist()
    if not sum(counts):
        return
    # Positions asked in any order and in pieces give the same records as the whole epoch
    # (permutations are drawn per group, when first needed, and may be evicted).
    positions = data.draw(st.lists(st.integers(0, sum(counts) - 1), max_size=40))
    fresh = EpochOrder(counts, seed, epoch, shuffle=shuffle, mix_bins=mix_bins)
    for position in positions:
        assert int(fresh.take(np.array([position]))[0]) == int(whole[position])
    assert fresh.take(np.array(positions, dtype=np.int64)).tolist() == [
        int(whole[p]) for p in positions
    ]


@given(st.lists(st.integers(0, 30), min_size=1, max_size=12), seeds, epochs, mix)
def test_bins_are_permuted_and_groups_mix_only_their_bins(
    counts: list[int], seed: int, epoch: int, mix_bins: int
) -> None:
    order = EpochOrder(counts, seed, epoch, mix_bins=mix_bins)
    assert sorted(order.bin_order.tolist()) == list(range(len(counts)))
    records = order.records()
    bins = order.bin_of(records)
    # Bin-major numbering: record p of bin b is offsets[b] + p.
    starts = np.cumsum([0, *counts])
    assert all(starts[b] <= r < starts[b + 1] for r, b in zip(records.tolist(), bins.tolist()))
    epoch_bins = order.bin_order.tolist()
    for group in range(order.groups):
        members = epoch_bins[group * mix_bins : (group + 1) * mix_bins]
        lo, hi = int(order.group_bounds[group]), int(order.group_bounds[group + 1])
        assert Counter(bins[lo:hi].tolist()) == Counter(
            {b: counts[b] for b in members if counts[b]}
        )
    if mix_bins == 1:
        # Each bin is one run, in the epoch's bin order.
        runs = [b for k, b in enumerate(bins.tolist()) if k == 0 or bins[k - 1] != b]
        assert runs == [b for b in epoch_bins if counts[b]]


@given(counts_strategy, seeds, epochs, mix)
def test_without_shuffle_the_order_is_the_stored_order(
    counts: list[int], seed: int, epoch: int, mix_bins: int
) -> None:
    order = EpochOrder(counts, seed, epoch, shuffle=False, mix_bins=mix_bins)
    assert order.records().tolist() == list(range(sum(counts)))


@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=12).filter(lambda c: sum(c) >= 20),
    seeds,
    epochs,
    mix,
)
def test_other_epochs_and_seeds_give_other_orders(
    counts: list[int], seed: int, epoch: int, mix_bins: int
) -> None:
    # With 20 records or more, two independent orders coincide with a probability far
    # below 2**-19.
    base = EpochOrder(counts, seed, epoch, mix_bins=mix_bins).records().tolist()
    assert EpochOrder(counts, seed, epoch + 1, mix_bins=mix_bins).records().tolist() != base
    assert EpochOrder(counts, seed + 1, epoch, mix_bins=mix_bins).records().tolist() != base


def test_the_order_is_the_same_in_another_process() -> None:
    # No dependence on the process: pid, time, hash randomisation, import order.
    code = (
        "from splitdataloader.sampling import EpochOrder;"
        "print(EpochOrder([5, 0, 9, 13, 2], 7, 3, mix_bins=2).records().tolist())"
    )
    here = EpochOrder([5, 0, 9, 13, 2], 7, 3, mix_bins=2).records().tolist()
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
        )
        assert result.stdout.strip() == str(here)


# ------------------------------------------------------------------ ranks


@given(st.integers(0, 500), st.integers(1, 17), st.sampled_from(EVEN_MODES))
def test_ranks_split_the_epoch(total: int, world_size: int, even: str | None) -> None:
    spans = [rank_span(total, rank, world_size, even) for rank in range(world_size)]
    lengths = [length for _, length in spans]
    taken = [
        (first + k) % total if total else first + k
        for first, length in spans
        for k in range(length)
    ]
    if even is None:
        # Exact: disjoint, complete, in epoch order, lengths within one of each other.
        assert taken == list(range(total))
        assert max(lengths) - min(lengths) <= 1
    elif even == "pad":
        assert len(set(lengths)) == 1
        assert lengths[0] * world_size >= total > (lengths[0] - 1) * world_size
        assert set(taken) == set(range(total))
        assert taken[:total] == list(range(total))
        # The repeats come from the epoch's start, fewer than one per rank.
        assert len(taken) - total < world_size
    else:
        assert len(set(lengths)) == 1
        assert taken == list(range(len(taken)))
        assert 0 <= total - len(taken) < world_size


@pytest.mark.parametrize(
    ("rank", "world_size"), [(-1, 2), (2, 2), (5, 2), (0, 0), (0, -1), (True, 2), (0.5, 2)]
)
def test_a_rank_outside_the_world_is_refused(rank: object, world_size: object) -> None:
    with pytest.raises(SamplingError, match=r"rank|world_size"):
        rank_span(10, rank, world_size)  # type: ignore[arg-type]


def test_an_unknown_even_mode_is_refused() -> None:
    with pytest.raises(SamplingError, match="even"):
        rank_span(10, 0, 2, "balance")


# ------------------------------------------------------------------ workers


@given(
    st.integers(0, 300),
    st.integers(1, 6),
    st.integers(1, 40),
    st.data(),
)
def test_workers_split_a_run_and_round_robin_restores_it(
    length: int, workers: int, block_size: int, data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, length))
    shares = [
        worker_positions(length, w, workers, block_size, start).tolist() for w in range(workers)
    ]
    assert [len(s) for s in shares] == [
        worker_count(length, w, workers, block_size, start) for w in range(workers)
    ]
    assert sorted(p for s in shares for p in s) == list(range(start, length))
    assert round_robin(shares, block_size) == list(range(start, length))
    # Pieces of a worker's share are slices of the whole.
    for w, share in enumerate(shares):
        lo = data.draw(st.integers(0, len(share)))
        hi = data.draw(st.integers(lo, len(share)))
        piece = worker_positions(length, w, workers, block_size, start, first=lo, stop=hi)
        assert piece.tolist() == share[lo:hi]


@pytest.mark.parametrize(
    ("worker", "workers", "block_size", "start", "name"),
    [
        (0, 0, 1, 0, "workers"),
        (2, 2, 1, 0, "worker"),
        (-1, 2, 1, 0, "worker"),
        (0, 1, 0, 0, "block_size"),
        (0, 1, 1, 11, "start"),
        (0, 1, 1, -1, "start"),
    ],
)
def test_a_bad_worker_split_is_refused(
    worker: int, workers: int, block_size: int, start: int, name: str
) -> None:
    with pytest.raises(SamplingError, match=name):
        worker_positions(10, worker, workers, block_size, start)
    with pytest.raises(SamplingError, match=name):
        worker_count(10, worker, workers, block_size, start)


# ------------------------------------------------------------------ all together


@given(
    counts=counts_strategy,
    seed=seeds,
    epoch=epochs,
    mix_bins=mix,
    world_size=st.integers(1, 5),
    workers=st.integers(1, 4),
    block_size=st.integers(1, 16),
    even=st.sampled_from(EVEN_MODES),
)
def test_ranks_and_workers_partition_the_epoch(
    *,
    counts: list[int],
    seed: int,
    epoch: int,
    mix_bins: int,
    world_size: int,
    workers: int,
    block_size: int,
    even: str | None,
) -> None:
    order = EpochOrder(counts, seed, epoch, mix_bins=mix_bins)
    total = order.total
    whole = order.records().tolist()
    got: list[int] = []
    for rank in range(world_size):
        first, length = rank_span(total, rank, world_size, even)
        run = [whole[(first + k) % total] for k in range(length)] if length else []
        parts = []
        for w in range(workers):
            positions = worker_positions(length, w, workers, block_size)
            epoch_positions = (first + positions) % total if total else positions
            parts.append(order.take(epoch_positions).tolist())
        assert round_robin(parts, block_size) == run
        got.extend(run)
    if even == "pad":
        assert Counter(got) - Counter(whole) == Counter(whole[: len(got) - total])
        assert set(got) == set(whole)
    elif even == "drop":
        assert got == whole[: len(got)]
    else:
        assert got == whole


# ------------------------------------------------------------------ arguments and states


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1}, "seed"),
        ({"epoch": -3}, "epoch"),
        ({"mix_bins": 0}, "mix_bins"),
        ({"seed": "7"}, "seed"),
        ({"epoch": 1.0}, "epoch"),
    ],
)
def test_bad_order_arguments_are_refused(kwargs: dict[str, object], name: str) -> None:
    arguments: dict[str, object] = {"seed": 1, "epoch": 0, **kwargs}
    mix_bins = arguments.pop("mix_bins", 1)
    with pytest.raises(SamplingError, match=name):
        EpochOrder([3, 4], arguments["seed"], arguments["epoch"], mix_bins=mix_bins)  # type: ignore[arg-type]


def test_positions_outside_the_epoch_are_refused() -> None:
    order = EpochOrder([3, 4], 1, 0)
    with pytest.raises(SamplingError, match=r"\[0, 7\)"):
        order.take(np.array([7]))


STATE = EpochState(dataset="abc@1", records=70, seed=5, epoch=2, consumed=9, world_size=4)


def test_a_state_round_trips_through_plain_values() -> None:
    plain = STATE.to_dict()
    assert all(isinstance(v, (str, int, bool, type(None))) for v in plain.values())
    assert EpochState.from_dict(plain) == STATE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"consumed": "9"}, "consumed"),
        ({"shuffle": 1}, "shuffle"),
        ({"even": "both"}, "even"),
        ({"dataset": 3}, "dataset"),
        ({"world_size": True}, "world_size"),
    ],
)
def test_a_malformed_state_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ResumeStateError, match=message):
        EpochState.from_dict({**STATE.to_dict(), **change})


def test_a_state_missing_fields_or_not_a_mapping_is_refused() -> None:
    plain = STATE.to_dict()
    del plain["seed"]
    with pytest.raises(ResumeStateError, match="seed"):
        EpochState.from_dict(plain)
    with pytest.raises(ResumeStateError, match="mapping"):
        EpochState.from_dict([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "other@1"),
        ("records", 71),
        ("seed", 6),
        ("world_size", 2),
        ("shuffle", False),
        ("mix_bins", 3),
        ("even", "pad"),
    ],
)
def test_a_state_of_another_dataset_or_split_does_not_match(field: str, value: object) -> None:
    other = EpochState(**{**STATE.to_dict(), field: value})
    with pytest.raises(ResumeStateError, match=field):
        other.check_matches(STATE)
    # Epoch and position are what a state carries; they never make it foreign.
    EpochState(**{**STATE.to_dict(), "epoch": 0, "consumed": 0}).check_matches(STATE)
