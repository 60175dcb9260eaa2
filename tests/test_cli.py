from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from splitdataloader import SplitDataLoader, cli


def splitdata(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``splitdata`` console script."""
    script = Path(sysconfig.get_path("scripts")) / "splitdata"
    assert script.exists(), f"{script} is missing: pip install -e '.[cli]'"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_demo_packs_and_verifies_the_standard_library() -> None:
    result = splitdata("demo", "--limit", "200")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "packed 200 files" in out
    for phase in ("pack", "random access", "shuffled epoch"):
        line = next(line for line in out.splitlines() if line.startswith(f"{phase} "))
        assert line.split()[-4] == "200", line  # the records column
    assert "all 200 records verified" in out
    assert result.stderr == ""  # no progress bars when stderr is not a terminal


def test_demo_json_summary_and_progress_on_stderr() -> None:
    result = splitdata(
        "demo", "--limit", "200", "--bins", "8", "--seed", "7", "--json", "--progress"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == summary["verified"] == 200
    assert (summary["bins"], summary["seed"], summary["dest_kept"]) == (8, 7, False)
    assert not Path(summary["dest"]).exists()
    assert set(summary["phases"]) == {"pack", "random_access", "epoch"}
    for phase in summary["phases"].values():
        assert phase["records"] == 200
        assert phase["bytes"] == summary["bytes"] > 0
        assert phase["records_per_s"] > 0
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert summary["source"] == str(stdlib)
    for bar in ("pack", "random access", "shuffled epoch"):
        assert f"{bar}: 100%" in result.stderr


def test_importing_the_package_does_not_load_the_cli() -> None:
    code = (
        "import sys, splitdataloader; "
        "print([m for m in ('click', 'tqdm', 'splitdataloader.cli') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small folder of files, with things the demo must leave out."""
    rng = random.Random(3)
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "b.bin").write_bytes(rng.randbytes(10_000))
    (root / "empty").write_bytes(b"")
    (root / "sub" / "c.txt").write_bytes(b"x" * 100)
    (root / "sub" / "deeper" / "d.bin").write_bytes(rng.randbytes(70_000))
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "a.cpython.pyc").write_bytes(b"compiled")
    (root / "link.txt").symlink_to(root / "a.txt")
    (root / "linked-folder").symlink_to(root / "sub", target_is_directory=True)
    os.mkfifo(root / "fifo")
    return root


EXPECTED = ["a.txt", "b.bin", "empty", "sub/c.txt", "sub/deeper/d.bin"]


def test_find_files_keeps_only_regular_files(source: Path) -> None:
    found = [p.relative_to(source).as_posix() for p in cli.find_files(source)]
    assert found == EXPECTED
    assert cli.find_files(source, limit=2) == [source / "a.txt", source / "b.bin"]
    skipped = cli.find_files(source, skip=[source / "sub"])
    assert [p.name for p in skipped] == ["a.txt", "b.bin", "empty"]


def run_demo(*args: str) -> Any:
    return CliRunner().invoke(cli.main, ["demo", "--no-progress", *args])


def test_demo_into_a_given_dest_keeps_a_readable_dataset(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dataset"
    result = run_demo("--source", str(source), "--dest", str(dest), "--bins", "3", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["files"], summary["dest_kept"]) == (5, True)
    with SplitDataLoader(dest) as loader:
        assert loader.num_bins == 3
        assert [loader[i] for i in range(len(loader))] == [
            (source / name).read_bytes() for name in EXPECTED
        ]

    again = run_demo("--source", str(source), "--dest", str(dest))
    assert again.exit_code == 1
    assert "already holds a dataset" in again.output


def test_demo_keep_leaves_the_temporary_dataset(source: Path) -> None:
    result = run_demo("--source", str(source), "--keep", "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    dest = Path(summary["dest"])
    try:
        assert summary["dest_kept"] is True
        with SplitDataLoader(dest) as loader:
            assert len(loader) == summary["files"] == 2
    finally:
        shutil.rmtree(dest)


class CorruptOneRecord(SplitDataLoader):
    def __getitem__(self, index: Any) -> Any:
        data = super().__getitem__(index)
        return data[:-1] + bytes([data[-1] ^ 1]) if index == 1 else data


class DropOneRecord(SplitDataLoader):
    def iterate_binwise(self, shuffle: bool = False, seed: int | None = None) -> Iterator[bytes]:
        records = super().iterate_binwise(shuffle=shuffle, seed=seed)
        yield from (r for r in records if r != b"hello")


def test_demo_fails_with_one_line_on_a_wrong_record(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "SplitDataLoader", CorruptOneRecord)
    result = run_demo("--source", str(source))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: record 1 (b.bin) does not match its source file: "
        "same size (10000 bytes), different bytes"
    ]


def test_demo_fails_with_one_line_on_a_missing_epoch_record(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "SplitDataLoader", DropOneRecord)
    result = run_demo("--source", str(source))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the shuffled epoch returned 4 records for 5 written: "
        "1 missing, e.g. a.txt, 0 unexpected"
    ]


def test_demo_rejects_a_folder_without_files(tmp_path: Path) -> None:
    result = run_demo("--source", str(tmp_path))
    assert result.exit_code == 1
    assert "no regular files under" in result.output
