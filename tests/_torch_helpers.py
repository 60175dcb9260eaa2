"""Code that runs in the processes of a real two-rank ``torch.distributed`` job (gloo,
127.0.0.1 only): importable by name, as spawned processes need."""

from __future__ import annotations

import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from splitdataloader.pytorch import SplitIterableDataset


def run_rank(
    rank: int,
    world_size: int,
    *,
    init_file: str,
    url: str,
    batch_size: int,
    epochs: list[tuple[int, str]],
    results: Any,
) -> None:
    """One rank: for each ``(epoch, worker start method)``, read this rank's share through a
    DataLoader with two workers, taking part in one collective per batch as DDP does, and
    gather every rank's records on rank 0, which reports them."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
        try:
            dataset = SplitIterableDataset(url, seed=13, batch_size=batch_size)
            report: dict[str, Any] = {"rank": rank, "length": len(dataset), "epochs": []}
            for epoch, method in epochs:
                dataset.set_epoch(epoch)
                loader = DataLoader(
                    dataset, batch_size=batch_size, num_workers=2, multiprocessing_context=method
                )
                mine: list[bytes] = []
                batches = 0
                for batch in loader:
                    mine.extend(batch)
                    batches += 1
                    # A collective per step: a rank with fewer batches would leave the
                    # others waiting here forever (the timeout turns that into a failure).
                    step = torch.ones(1)
                    dist.all_reduce(step)
                    assert int(step.item()) == world_size
                gathered: list[Any] = [None] * world_size
                dist.all_gather_object(gathered, {"records": mine, "batches": batches})
                report["epochs"].append(gathered)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        results.put(report)
    except BaseException:
        results.put({"rank": rank, "error": traceback.format_exc()})
        raise
