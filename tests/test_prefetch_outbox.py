"""Frames of several messages, the worker's outbox, and items of every size end to end.

The frame and outbox tests run in this process, with a pipe standing for a worker's; the
property test at the end runs real workers.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import _prefetch_helpers as helpers
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitdataloader import MpQItr, shm
from splitdataloader.prefetch_messages import BATCH, FRAME_BYTES, join, split
from splitdataloader.prefetch_outbox import Outbox

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

KiB = 1 << 10


# --- frames -------------------------------------------------------------------------------


def test_a_frame_gives_back_its_messages_in_order() -> None:
    messages = [pickle.dumps(i, 5) for i in range(300)] + [b"\x80" + bytes(5000)]
    frame = join(messages)
    assert frame[0] == BATCH
    parts = split(frame)
    parts.reverse()  # split() hands them out last first, for pop()
    assert [bytes(part) for part in parts] == messages


def test_a_lone_message_is_its_own_frame() -> None:
    for message in (pickle.dumps("item", 5), bytes([shm.TAG]) + b"descriptor"):
        assert message[0] != BATCH
        assert split(message) == [message]


# --- the outbox ---------------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = multiprocessing.Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


def received(reader: Connection, count: int) -> list[bytes]:
    """The first ``count`` messages sent, in order."""
    out: list[bytes] = []
    while len(out) < count:
        parts = split(reader.recv_bytes())
        out += [bytes(part) for part in reversed(parts)]
    return out


def test_small_messages_pass_the_limit_until_they_fill_a_frame(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    outbox = Outbox(writer, limit=2)  # not started: nothing leaves the queue
    small = [bytes([i % 256]) * 1000 for i in range(FRAME_BYTES // 1000)]
    assert all(outbox.put(message, 0.01) for message in small)
    one_more = b"x" * (FRAME_BYTES - sum(map(len, small)) + 1)
    assert not outbox.put(one_more, 0.01)
    outbox.start()
    assert outbox.put(one_more, 10.0)
    outbox.close()
    assert received(reader, len(small) + 1) == [*small, one_more]
    assert outbox.join(10.0)
    assert not reader.poll(0)


def test_large_messages_wait_at_the_limit_and_travel_alone(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    outbox = Outbox(writer, limit=2)
    large = [bytes([i]) * (40 * KiB) for i in range(3)]
    assert outbox.put(large[0], 0.01)
    assert outbox.put(large[1], 0.01)
    assert not outbox.put(large[2], 0.01)  # two queued, and they fill more than a frame
    outbox.start()
    assert outbox.put(large[2], 10.0)
    outbox.close()
    # Two of them would not fit in one frame: each went as it was.
    assert [reader.recv_bytes() for _ in large] == large
    assert outbox.join(10.0)
    assert not reader.poll(0)


def test_the_sender_stops_when_the_consumer_closes_its_end(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    outbox = Outbox(writer, limit=4)
    outbox.start()
    reader.close()
    outbox.put(b"\x80nobody reads this", 1.0)
    outbox.close()
    assert outbox.join(10.0)
    assert not outbox.sending
    assert not outbox.put(b"\x80nor this", 0.0)


@pytest.mark.parametrize("gap", [0.0, 0.002])
def test_items_fast_or_slow_arrive_in_order_and_a_closed_pipe_is_noticed(
    pipe: tuple[Connection, Connection], gap: float
) -> None:
    reader, writer = pipe
    outbox = Outbox(writer, limit=4)
    outbox.start()
    messages = [pickle.dumps(i, 5) for i in range(50)] + [b"\x80" + bytes(6000)]
    for message in messages:
        time.sleep(gap)
        assert outbox.put(message, 10.0)
    assert received(reader, len(messages)) == messages
    reader.close()
    # Slow or fast, the sender finds the pipe closed, and the puts after that are refused.
    refused = 0
    for _ in range(10_000):
        time.sleep(gap)
        if not outbox.put(b"\x80" + bytes(100), 1.0):
            refused += 1
            break
    assert refused == 1
    assert not outbox.sending
    outbox.close()
    assert outbox.join(10.0)


# --- end to end ---------------------------------------------------------------------------


def test_a_large_pickle_of_many_records_crosses_in_shared_memory() -> None:
    it = MpQItr[list[bytes]](helpers.record_lists, 3, 4000, 400)  # 1.6 MB a list
    got = list(it)
    assert got == [helpers.records(4000, 400, seed) for seed in range(3)]
    assert it.stats.shm_items == 3
    assert it.stats.shm_bytes > 3 * 4000 * 400
    assert it.stats.pipe_bytes < 3 * 1000


@pytest.mark.parametrize("threshold", [64 * KiB, None])
def test_an_object_held_twice_in_an_item_arrives_once(threshold: int | None) -> None:
    it = MpQItr[list[list[bytes]]].with_options(shm_threshold=threshold)(helpers.shared_twice, 200)
    got = list(it)
    assert [len(item[0][0]) for item in got] == [8, 800]
    assert all(item[0] is item[1] for item in got)
    assert it.stats.shm_items == (1 if threshold else 0)


item_specs = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.one_of(st.integers(0, 300), st.integers(1, 100 * KiB), st.integers(64 * KiB, 300 * KiB)),
        st.integers(0, 1000),
    ),
    max_size=40,
)


@given(
    specs=item_specs,
    qsize=st.integers(1, 20),
    workers=st.integers(1, 3),
    threshold=st.sampled_from([64 * KiB, None]),
)
def test_items_of_every_size_arrive_in_order(
    specs: list[tuple[int, int, int]], qsize: int, workers: int, threshold: int | None
) -> None:
    make = MpQItr[Any].with_options(qsize=qsize, num_workers=workers, shm_threshold=threshold)
    it = make(helpers.mixed, specs)
    got = list(it)
    # Every worker yields the same items; an ordered pass takes one from each in turn.
    expected = [helpers.mixed_item(*spec) for spec in specs for _ in range(workers)]
    assert len(got) == len(expected)
    for item, want in zip(got, expected):
        assert type(item) is type(want)
        if isinstance(want, np.ndarray):
            assert np.array_equal(item, want)
        else:
            assert item == want
    assert it.stats.items == len(expected)
    if threshold is None:
        assert it.stats.shm_items == 0
