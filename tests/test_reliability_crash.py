"""Crash safety: writers killed with SIGKILL at storage operations and at random times.

Every kill must leave a dataset that opens and holds exactly the records of the last
commit (or of the one in flight, if its manifest write landed); ``repair`` must remove
every file the manifest does not list without changing a record; and a new append must
then succeed (:mod:`reliability_crash`). The quick variants kill at a sample of the
plan's operations; the ``slow`` ones at every operation, and at random times.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import s3fs
from click.testing import CliRunner
from conftest import S3_BUCKET
from crash_zygote import STAGES, stage_records, states, write_base
from reliability_crash import CrashStats, Zygote, commits_done, kill_once, run_kills

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.cli import main
from splitdataloader.verify import repair, verify

pytestmark = pytest.mark.timeout(900)


def local_urls(tmp_path: Path) -> Callable[[int], str]:
    return lambda k: str(tmp_path / f"ds-{k}")


def s3_urls() -> Callable[[int], str]:
    prefix = uuid.uuid4().hex
    return lambda k: f"s3://{S3_BUCKET}/crash-{prefix}/ds-{k}"


def check(stats: CrashStats, kills: int) -> None:
    assert stats.failures == [], "\n".join(stats.failures[:20])
    assert stats.kills >= kills
    # The kills landed all over the plan: some left files for repair to remove, some
    # came while a manifest write was in flight.
    assert stats.orphans_removed > 0
    assert stats.records_checked > 0


def test_plan_states_are_distinct() -> None:
    """Each commit of the plan changes the records, so a lost commit cannot go unseen."""
    seen = states()
    assert len({tuple(state) for state in seen}) == len(seen) == len(STAGES)
    every = [record for name, _, _ in STAGES for record in stage_records(name)]
    assert len(set(every)) == len(every)


def test_kills_at_storage_operations_local(tmp_path: Path) -> None:
    stats = run_kills(local_urls(tmp_path), str(tmp_path), points=30, timed=6, seed=1)
    check(stats, 30)


@pytest.mark.s3
def test_kills_at_storage_operations_s3(tmp_path: Path) -> None:
    stats = run_kills(s3_urls(), str(tmp_path), points=6, seed=2)
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.kills == 6


@pytest.mark.slow
def test_kills_at_every_operation_and_random_times_local(tmp_path: Path) -> None:
    stats = run_kills(local_urls(tmp_path), str(tmp_path), points=None, timed=150, seed=3)
    check(stats, 100)
    assert stats.in_commit > 0


@pytest.mark.slow
@pytest.mark.s3
def test_kills_at_operations_and_random_times_s3(tmp_path: Path) -> None:
    stats = run_kills(s3_urls(), str(tmp_path), points=15, timed=3, seed=4)
    check(stats, 15)


def test_kills_around_each_manifest_write(tmp_path: Path) -> None:
    """Killed right before each manifest write, inside it (on local disk: after the new
    manifest's temporary file is written, before it replaces the old one), and right
    after it: the commit is wholly absent, absent, and wholly there."""
    log = str(tmp_path / "probe.log")
    with Zygote() as zygote:
        # The operation numbers around the manifest writes, from an uninterrupted run.
        stats = kill_once(zygote, str(tmp_path / "probe"), log, delay=30.0)
        assert stats.finished == 1
        assert stats.failures == []
        points: list[tuple[int, tuple[int, bool]]] = []
        begun = 0
        with open(log) as handle:
            for line in handle:
                if line.startswith("begin "):
                    begun += 1
                if line == "begin Storage.commit_manifest\n":
                    done = len([p for p in points if p[1][1]])
                    points += [(begun, (done, False)), (begun + 1, (done, True))]
                elif line == "end Storage.commit_manifest\n":
                    points.append((begun + 1, (points[-1][1][0] + 1, False)))
        assert len([p for p in points if p[1][1]]) == len(STAGES) - 1
        for kill_at, expected in points:
            if kill_at > begun:
                continue  # the plan's last operation: nothing follows to kill at
            trial = kill_once(zygote, str(tmp_path / f"k{kill_at}"), log, kill_at=kill_at)
            assert trial.failures == [], trial.failures
            assert trial.kills == 1
            assert commits_done(log) == expected


def test_splitdata_verify_repair_removes_a_killed_writers_files(tmp_path: Path) -> None:
    """The command line's ``verify --repair`` does what :func:`repair` does after a kill."""
    log = str(tmp_path / "kill.log")
    url = str(tmp_path / "ds")
    with Zygote() as zygote:
        write_base(url)
        # Operation 40 lies inside the second commit: its first files are written.
        answer = zygote.run(url, log, kill_at=40)
    assert answer["signal"] == 9
    done, in_flight = commits_done(log)
    with SplitDataLoader(url) as loader:
        before = loader.get_many(range(len(loader)))
        listed = {"manifest.json", *(loader.manifest.files() if loader.manifest else [])}
    assert before == states()[done] or (in_flight and before == states()[done + 1])
    stored = {p.relative_to(url).as_posix() for p in Path(url).rglob("*") if p.is_file()}
    assert stored - listed, "the kill left no file to remove"
    result = CliRunner().invoke(main, ["verify", url, "--repair", "--grace", "0"])
    assert result.exit_code == 0, result.output
    stored = {p.relative_to(url).as_posix() for p in Path(url).rglob("*") if p.is_file()}
    assert stored == listed
    with SplitDataLoader(url) as loader:
        assert loader.get_many(range(len(loader))) == before


#: A writer that uploads one big uncommitted segment, says so, and waits to be killed.
_UPLOADING_WRITER = """
import sys, time
from splitdataloader import SplitWriter
writer = SplitWriter(sys.argv[1], bins=1)
writer.write_many(bytes([k]) * (1 << 20) for k in range(14))
print("written", flush=True)
time.sleep(600)
"""


@pytest.mark.s3
def test_repair_aborts_the_uploads_a_killed_writer_left_on_s3(tmp_path: Path) -> None:
    """A writer killed in the middle of a multipart upload leaves parts that no listing
    shows and the store keeps (and bills) until the upload is aborted: ``verify
    --repair`` aborts them once they are older than the grace period, and only them."""
    prefix = f"crash-{uuid.uuid4().hex}"
    url = f"s3://{S3_BUCKET}/{prefix}/ds"
    write_split_data(url, [b"committed"])
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    # A sibling whose name starts like the dataset's: its upload is not the dataset's.
    neighbour = fs.call_s3("create_multipart_upload", Bucket=S3_BUCKET, Key=f"{prefix}/ds2/x")

    def unfinished() -> list[str]:
        listing = fs.call_s3("list_multipart_uploads", Bucket=S3_BUCKET, Prefix=f"{prefix}/")
        return sorted(u["Key"] for u in listing.get("Uploads", []))

    with subprocess.Popen(
        [sys.executable, "-c", _UPLOADING_WRITER, url], stdout=subprocess.PIPE, text=True
    ) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "written\n"
        finally:
            writer.kill()
    left = [key for key in unfinished() if key.startswith(f"{prefix}/ds/")]
    assert len(left) == 1, left
    assert left[0].startswith(f"{prefix}/ds/data/"), left
    name = left[0].removeprefix(f"{prefix}/ds/")
    assert verify(url).unfinished_uploads == [name]

    # moto says every upload started in 2010: a grace period of a century keeps it young.
    century = str(100 * 365 * 86400)
    young = CliRunner().invoke(main, ["verify", url, "--repair", "--grace", century])
    assert young.exit_code == 0, young.output
    assert "unfinished uploads are younger than the grace period" in young.output
    assert len(unfinished()) == 2
    dry = repair(url, grace_period=0, dry_run=True)
    assert dry.aborted_uploads == [name]
    assert len(unfinished()) == 2

    result = CliRunner().invoke(main, ["verify", url, "--repair", "--grace", "0"])
    assert result.exit_code == 0, result.output
    assert "aborted 1 unfinished uploads" in result.output
    assert unfinished() == [f"{prefix}/ds2/x"]
    with SplitDataLoader(url) as loader:
        assert list(loader) == [b"committed"]
    fs.call_s3(
        "abort_multipart_upload",
        Bucket=S3_BUCKET,
        Key=f"{prefix}/ds2/x",
        UploadId=neighbour["UploadId"],
    )
