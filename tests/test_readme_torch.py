"""The README's distributed-training example runs as written (gloo on 127.0.0.1 instead of
NCCL, two DataLoader workers), is interrupted mid-epoch, and resumes from its checkpoint
with exactly the batches that the uninterrupted run got."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from splitdataloader import write_split_data

README = Path(__file__).resolve().parent.parent / "README.md"
RECORDS = 20_000  # 625 batches of 32 per epoch: the example checkpoints every 500

DRIVER = textwrap.dedent(
    """
    import sys

    import torch.distributed as dist

    code, url, records = sys.argv[1], sys.argv[2], int(sys.argv[3])
    code = code.replace('"nccl"', '"gloo"').replace('"data/train"', repr(url))
    code = code.replace("num_workers=4", "num_workers=2")  # this machine has 2 cores


    class Interrupted(Exception):
        pass


    def run(checkpoint, stop_after=None):
        batches, saved = [], []

        def train_step(batch):
            if len(batches) == stop_after:
                raise Interrupted
            batches.append(list(batch))

        names = {
            "load_checkpoint": lambda: checkpoint,
            "save_checkpoint": saved.append,
            "train_step": train_step,
            "epochs": 2,
        }
        try:
            exec(code, names)
        except Interrupted:
            pass
        finally:
            dist.destroy_process_group()
        return batches, saved


    full, checkpoints = run(None)
    per_epoch = -(-records // 32)
    assert len(full) == 2 * per_epoch and len(checkpoints) == 2
    for epoch in range(2):
        seen = [r for b in full[epoch * per_epoch : (epoch + 1) * per_epoch] for r in b]
        assert sorted(seen) == sorted(b"sample %d" % k for k in range(records)), epoch
    assert full[0] != full[per_epoch]
    # Killed at step 560 of epoch 1: the last checkpoint was taken after step 499.
    crashed, saved = run(None, stop_after=per_epoch + 560)
    assert crashed == full[: per_epoch + 560]
    assert saved[-1]["data"]["epoch"] == 1 and saved[-1]["data"]["consumed"] == 500 * 32
    resumed, _ = run(saved[-1])
    assert resumed == full[per_epoch + 500 :]
    print("resumed", len(resumed), "batches")
    """
)


def example() -> str:
    section = README.read_text(encoding="utf-8").split("### Distributed training with PyTorch")[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's distributed-training section has no example"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_readme_distributed_example_runs_and_resumes(tmp_path: Path) -> None:
    code = example()
    assert '"nccl"' in code
    assert '"data/train"' in code
    url = str(tmp_path / "train")
    write_split_data(url, (b"sample %d" % k for k in range(RECORDS)), splits=16)
    environment = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
        "PATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, code, url, str(RECORDS)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"resumed {2 * 625 - 625 - 500} batches" in result.stdout
