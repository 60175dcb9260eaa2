"""Installing the real splitdataloader 0.0.1 into a folder and running it in a subprocess.

Used by ``test_legacy.py`` and by ``golden/make_golden.py``. 0.0.1 is never imported into
the calling process: it has the same import name as the package under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LEGACY_VERSION = "0.0.1"
DRIVER = Path(__file__).with_name("legacy_driver.py")


@dataclass(frozen=True)
class LegacyWrite:
    """One call of 0.0.1's ``write_split_data``."""

    records: tuple[bytes, ...]
    splits: int
    shuffle: bool = False
    start_clean: bool = False


@dataclass(frozen=True)
class LegacyDump:
    """What 0.0.1's own loader returned for a dataset."""

    length: int
    items: list[bytes]
    binwise: list[bytes]


def install_legacy(folder: Path) -> Path:
    """Install splitdataloader 0.0.1 into ``folder`` (kept if already there) with pip."""
    if (folder / "splitdataloader" / "data_writer_and_loader.py").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(staging),
        f"splitdataloader=={LEGACY_VERSION}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"installing splitdataloader {LEGACY_VERSION} failed:\n{done.stdout}\n{done.stderr}"
        )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def run_legacy(package_dir: Path, target: Path, writes: list[LegacyWrite], seed: int) -> LegacyDump:
    """Write ``target`` with 0.0.1 (``seed`` fixes its shuffles) and dump what it reads."""
    spec = {
        "target": str(target),
        "seed": seed,
        "writes": [
            {
                "records": [record.hex() for record in write.records],
                "splits": write.splits,
                "shuffle": write.shuffle,
                "start_clean": write.start_clean,
            }
            for write in writes
        ],
    }
    with tempfile.TemporaryDirectory(prefix="sdl-legacy-") as scratch:
        spec_path = Path(scratch, "spec.json")
        out_path = Path(scratch, "out.json")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(package_dir)}
        done = subprocess.run(
            [sys.executable, str(DRIVER), str(package_dir), str(spec_path), str(out_path)],
            cwd=package_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"splitdataloader {LEGACY_VERSION} failed:\n{done.stderr}")
        result = json.loads(out_path.read_text())
    return LegacyDump(
        length=result["len"],
        items=[bytes.fromhex(item) for item in result["items"]],
        binwise=[bytes.fromhex(item) for item in result["binwise"]],
    )
