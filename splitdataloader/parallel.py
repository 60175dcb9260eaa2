"""Bin-wise iteration read and decoded in worker processes, in the single-process order.

Worker ``k`` of ``n`` takes the bins at positions ``k, k + n, k + 2n, …`` of the epoch's
bin order and runs the same reading path as the consumer would (index look-up, segment
reads with read-ahead, checksum verification, decompression, decryption), sending chunks
of records through an :class:`~splitdataloader.prefetch.MpQItr` and a marker after each
bin. The consumer takes bin ``j`` from worker ``j mod n``, so records come out in exactly
the order of the single-process iteration for the same seed: for shuffled passes each
worker is handed the random generator's state at the start of each of its bins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .prefetch import MpQItr

if TYPE_CHECKING:
    from .loader import SplitDataLoader

__all__ = ["bin_states", "parallel_chunks"]

#: Sent by a worker after the last chunk of each bin.
_END_OF_BIN = None
#: Chunks (up to :data:`~splitdataloader.iteration.CHUNK_RECORDS` records, often hundreds of
#: KiB) of this size or more cross in shared memory: one copy each way, where the pipe would
#: take a round trip between the processes for every 64 KiB.
_CHUNK_SHM_THRESHOLD = 64 << 10


def bin_states(
    rng: np.random.Generator, order: Sequence[int], bin_records: Sequence[int]
) -> list[dict[str, Any]]:
    """The generator state at the start of each bin of ``order``, advancing ``rng`` as a
    shuffled single-process pass does (one permutation per non-empty bin)."""
    states: list[dict[str, Any]] = []
    for bin_id in order:
        states.append(dict(rng.bit_generator.state))
        if bin_records[bin_id]:
            rng.permutation(bin_records[bin_id])
    return states


def _worker_chunks(
    loader: SplitDataLoader, bins: list[int], states: list[dict[str, Any]] | None
) -> Iterator[list[bytes] | None]:
    """Run in a worker: the chunks of each of ``bins``, each bin followed by a marker."""
    rngs: list[np.random.Generator] | None = None
    if states is not None:
        rngs = []
        for state in states:
            rng = np.random.default_rng()
            rng.bit_generator.state = state
            rngs.append(rng)
    with loader:
        yield from loader._bin_chunks(bins, rngs, markers=True)


def parallel_chunks(
    loader: SplitDataLoader,
    order: Sequence[int],
    states: Sequence[dict[str, Any]] | None,
    workers: int,
    start_method: str | None = None,
) -> Iterator[list[bytes]]:
    """Chunks of the bins of ``order`` (in that order), read by ``workers`` processes."""
    workers = max(1, min(workers, len(order)))
    iterators: list[MpQItr[list[bytes] | None]] = []
    for k in range(workers):
        bins = list(order[k::workers])
        mine = None if states is None else list(states[k::workers])
        iterator = MpQItr[list[bytes] | None].with_options(
            start_method=start_method, shm_threshold=_CHUNK_SHM_THRESHOLD
        )(_worker_chunks, loader, bins, mine)
        iterators.append(iterator)
    try:
        for iterator in iterators:
            iter(iterator)  # start every worker now: they read ahead while we wait
        for j in range(len(order)):
            iterator = iterators[j % workers]
            while (chunk := next(iterator)) is not _END_OF_BIN:
                yield chunk
        for iterator in iterators:
            # Take each worker's end message: a worker that has finished exits by itself,
            # where close() would stop it with a signal in the middle of its cleanup.
            for _ in iterator:
                pass
    finally:
        for iterator in iterators:
            iterator.close()
