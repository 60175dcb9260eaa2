"""An independent model of a dataset as plain Python lists, and the checks built on it.

The model knows only the documented layout rule: record ``j`` of a write session that
spreads ``bins`` bins goes to bin ``(j + start) % bins``, where ``start`` is the number
of records the same session committed before (0 for ``write_split_data``). With
``shuffle`` the bins are visited in a permuted order the model does not know, so for
shuffled writes the checks verify the structure of the output instead of one order.

It also holds small helpers to inspect and copy stored files through fsspec.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
from fsspec.spec import AbstractFileSystem


@dataclass(frozen=True)
class CommitModel:
    """One commit: its records in written order and how they were spread."""

    records: tuple[bytes, ...]
    bins: int
    start: int = 0
    shuffled: bool = False

    def slot_of(self, j: int) -> int:
        """The position in the (possibly permuted) bin order that record ``j`` goes to."""
        return (j + self.start) % self.bins


@dataclass
class DatasetModel:
    """What a dataset must contain after a sequence of commits."""

    commits: list[CommitModel] = field(default_factory=list)

    @property
    def records(self) -> list[bytes]:
        return [record for commit in self.commits for record in commit.records]

    @property
    def shuffled(self) -> bool:
        return any(commit.shuffled for commit in self.commits)

    def min_bins(self) -> int:
        """The fewest bins the dataset can have: every commit's bins exist."""
        return max((commit.bins for commit in self.commits), default=1)

    def binwise(self, num_bins: int) -> list[bytes]:
        """The exact bin-wise order of a dataset none of whose commits was shuffled."""
        if self.shuffled:
            raise ValueError("the order of shuffled commits is not known to the model")
        per_bin: list[list[bytes]] = [[] for _ in range(num_bins)]
        for commit in self.commits:
            for j, record in enumerate(commit.records):
                per_bin[commit.slot_of(j)].append(record)
        return [record for records in per_bin for record in records]


def check_binwise_structure(output: Sequence[bytes], model: DatasetModel, num_bins: int) -> None:
    """Assert that ``output`` is a bin-wise order the model allows, shuffled commits included.

    Records must be unique across the model. Each commit's records that share a slot
    form one block that must appear contiguously and in written order; blocks are then
    assigned to bins from left to right: bins never go backwards, a bin holds at most one
    block per commit with the commits in written order, an unshuffled commit's block sits
    in the bin of its slot, and a shuffled commit's block in some bin below its bin count.
    The assignment is greedy (the lowest feasible bin), which finds one if any exists.
    """
    label: dict[bytes, tuple[int, int]] = {}
    for c, commit in enumerate(model.commits):
        for j, record in enumerate(commit.records):
            assert record not in label, "the structural check needs unique records"
            label[record] = (c, j)
    assert len(output) == len(label), f"{len(output)} records, expected {len(label)}"
    positions = [label.get(record) for record in output]
    assert None not in positions, "output holds a record that was never written"
    assert len(set(positions)) == len(positions), "output repeats a record"

    blocks: list[tuple[int, int]] = []
    expected_next: dict[tuple[int, int], int] = {}
    for c, j in positions:  # type: ignore[misc]  # None was excluded above
        commit = model.commits[c]
        key = (c, j % commit.bins)
        if blocks and blocks[-1] == key:
            assert j == expected_next[key], f"commit {c} record {j} is out of written order"
        else:
            assert key not in expected_next, f"commit {c} slot {key[1]} is split in two runs"
            assert j == key[1], f"commit {c} slot {key[1]} does not start with its first record"
            blocks.append(key)
        expected_next[key] = j + commit.bins

    current_bin = -1
    last_commit = -1
    for c, residue in blocks:
        commit = model.commits[c]
        lowest = current_bin if c > last_commit and current_bin >= 0 else current_bin + 1
        if commit.shuffled:
            chosen = lowest
            assert chosen < commit.bins, f"commit {c} needs more than its {commit.bins} bins"
        else:
            chosen = commit.slot_of(residue)
            assert chosen >= lowest, f"commit {c} slot {residue} comes after a later bin"
        assert chosen < num_bins, f"bin {chosen} does not exist (num_bins={num_bins})"
        if chosen != current_bin:
            current_bin = chosen
        last_commit = c


def tag(serial: int, payload: bytes) -> bytes:
    """A record made unique by a serial number, with an arbitrary payload after it."""
    return struct.pack("<Q", serial) + payload


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and path of ``url``, for tests that inspect or damage files."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def listed_files(url: str) -> tuple[list[str], list[str]]:
    """(segments, index parts) named by the manifest, relative to the dataset root."""
    fs, root = to_fs(url)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    segments = [s["name"] for c in manifest["commits"] for s in c["segments"]]
    parts = [c["index"]["name"] for c in manifest["commits"]]
    return segments, parts


def stored_files(url: str) -> set[str]:
    """Every file under the dataset root, relative to it."""
    fs, root = to_fs(url)
    if not fs.exists(root):
        return set()
    return {path[len(root) + 1 :] for path in fs.find(root)}


def read_all(loader: object) -> list[bytes]:
    """Every record of a loader by index, as a list."""
    return [loader[i] for i in range(len(loader))]  # type: ignore[index,arg-type]


def copy_folder(folder: Path, url: str) -> None:
    """Copy every file under a local ``folder`` to the location ``url``, through fsspec."""
    fs, root = to_fs(url)
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            target = f"{root}/{path.relative_to(folder).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            files[target] = path.read_bytes()
    fs.pipe(files)  # concurrent uploads where the filesystem is asynchronous
