"""Corruption trials: random damage to every kind of file never yields a wrong record.

Each trial damages one file of a reference dataset (manifest, index part, segment, codec
resource, 0.0.1 index or bin) with a flipped bit, an overwritten byte, a zeroed or cut-out
run, a truncation, appended bytes or a deletion (and, in the manifest, a digit or
hexadecimal character changed), then reads it every way (:mod:`reliability_kit`). Every
read must return the right bytes or raise a specific error naming a file of the dataset.
The ``slow`` variants run many more trials, and on the S3 server.
"""

from __future__ import annotations

import random
import re
import uuid
from pathlib import Path

import pytest
from conftest import S3_BUCKET
from reference_model import to_fs
from reliability_corruption import (
    CorruptionStats,
    corrupt_once,
    every_file_and_damage,
    run_trials,
)
from reliability_kit import WRITERS, Reference, read_out, stored_names

QUICK_TRIALS = 50
SLOW_TRIALS = 400
S3_TRIALS = 8


def location(backend: str, tmp_path: Path, name: str) -> str:
    if backend == "local":
        return str(tmp_path / name)
    if backend == "memory":
        return f"memory://rel-{uuid.uuid4().hex}/{name}"
    return f"s3://{S3_BUCKET}/rel-{uuid.uuid4().hex}/{name}"


def check(stats: CorruptionStats, reference: Reference) -> None:
    assert stats.failures == [], "\n".join(stats.failures[:20])
    if not reference.legacy:
        # With checksums, a damage is always either caught or harmless to every read.
        assert stats.undetectable == 0
        assert stats.trials == stats.caught + stats.harmless
    # The trials did reach the readers' checks: most damage is caught.
    assert stats.caught > stats.trials // 2, stats
    kinds = {kind for kind, _ in stats.by_kind}
    if reference.legacy:
        assert kinds == {"0.0.1 index", "0.0.1 bin"}
    else:
        assert {"manifest", "index part", "segment"} <= kinds


def trials(reference_name: str, backend: str, tmp_path: Path, count: int, seed: int) -> None:
    root = location(backend, tmp_path, "")
    reference = WRITERS[reference_name](f"{root}/reference", reference_name)
    stats = run_trials(reference, f"{root}/scratch", count, seed, every_file_and_damage)
    assert stats.trials == count
    check(stats, reference)


@pytest.mark.parametrize("reference_name", list(WRITERS))
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_random_damage_never_yields_a_wrong_record(
    reference_name: str, backend: str, tmp_path: Path
) -> None:
    trials(reference_name, backend, tmp_path, QUICK_TRIALS, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("reference_name", list(WRITERS))
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_many_random_damages(reference_name: str, backend: str, tmp_path: Path) -> None:
    trials(reference_name, backend, tmp_path, SLOW_TRIALS, seed=2)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("reference_name", ["v2", "aesgcm", "legacy"])
def test_random_damage_on_s3(reference_name: str, tmp_path: Path) -> None:
    trials(reference_name, "s3", tmp_path, S3_TRIALS, seed=3)


def digit_positions(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(rb"[0-9]", data)]


@pytest.mark.parametrize("reference_name", ["v2", "crc32-shuffled"])
def test_every_digit_of_the_manifest_changed(reference_name: str, tmp_path: Path) -> None:
    """Each digit of the manifest, replaced by another one: the JSON stays valid and most
    changes pass every structural check (a layout's start, a bin count, a name), so only
    the manifest's own checksum can tell."""
    reference = WRITERS[reference_name](str(tmp_path / "reference"), reference_name)
    fs, root = to_fs(reference.url)
    original = fs.cat_file(f"{root}/manifest.json")
    rng = random.Random(4)
    caught = 0
    positions = digit_positions(original)
    assert len(positions) > 100
    for number, at in enumerate(positions):
        digit = rng.choice([d for d in b"0123456789" if d != original[at]])
        target = str(tmp_path / f"t{number}")
        fs.copy(reference.url, target, recursive=True)
        damaged = original[:at] + bytes([digit]) + original[at + 1 :]
        fs.pipe_file(f"{target}/manifest.json", damaged)
        tally = read_out(reference, target, f"digit {at} -> {chr(digit)}")
        assert tally.failures == [], tally.failures[:5]
        caught += tally.errors > 0
        fs.rm(target, recursive=True)
    assert caught == len(positions)


def test_a_changed_layout_start_is_caught(tmp_path: Path) -> None:
    """The case the manifest checksum exists for: commits whose bins hold equal counts pass
    every structural check with another ``start``, and would return every record shifted."""
    reference = WRITERS["v2"](str(tmp_path / "reference"), "v2")
    fs, root = to_fs(reference.url)
    original = fs.cat_file(f"{root}/manifest.json")
    starts = [m.start(1) for m in re.finditer(rb'"start": (\d)', original)]
    assert starts
    for number, at in enumerate(starts):
        target = str(tmp_path / f"t{number}")
        fs.copy(reference.url, target, recursive=True)
        shifted = bytes([ord("0") + (original[at] - ord("0") + 1) % 4])
        fs.pipe_file(f"{target}/manifest.json", original[:at] + shifted + original[at + 1 :])
        tally = read_out(reference, target, "start")
        assert tally.failures == []
        assert tally.caught == {"DatasetFormatError": 1}  # at open, naming the manifest


def test_trial_kinds_cover_every_file(tmp_path: Path) -> None:
    """The picker reaches every kind of file: codec resources and 0.0.1 files included."""
    seen: set[str] = set()
    for name in ("zstd-dictionary", "legacy"):
        reference = WRITERS[name](str(tmp_path / name), name)
        rng = random.Random(5)
        names = stored_names(reference.url)
        for number in range(30):
            picked = every_file_and_damage(rng, names)
            stats = corrupt_once(reference, str(tmp_path / f"{name}-{number}"), rng, *picked)
            assert stats.failures == []
            seen.update(kind for kind, _ in stats.by_kind)
    assert seen == {
        "manifest",
        "index part",
        "segment",
        "codec resource",
        "0.0.1 index",
        "0.0.1 bin",
    }
