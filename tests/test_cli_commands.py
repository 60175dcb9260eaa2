"""The ``splitdata`` commands, run as the installed executable in a subprocess, against
local disk and the S3 server: what they print for people and for scripts, their exit
codes, progress on stderr, one-line errors, and Ctrl-C."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import tarfile
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner
from conftest import S3_BUCKET
from s3_server import S3Server

from splitdataloader import SplitDataLoader, cli, decode_sample, verify, write_split_data

SCRIPT = Path(sysconfig.get_path("scripts")) / "splitdata"
GOLDEN = Path(__file__).resolve().parent / "golden"


def splitdata(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    expect: int = 0,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``splitdata`` console script; check its exit code."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e '.[cli]'"
    result = subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )
    assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
    return result


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode("utf-8")


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode("utf-8")


def s3_url(name: str) -> str:
    return f"s3://{S3_BUCKET}/cli-{uuid.uuid4().hex}/{name}"


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "2024" / "may").mkdir(parents=True)
    for k in range(12):
        (root / "2024" / "may" / f"img{k:02d}.jpg").write_bytes(os.urandom(100 + 37 * k))
    (root / "README").write_bytes(b"holiday pictures\n")
    return root


def test_pack_a_folder_into_s3_and_unpack_it(tree: Path, tmp_path: Path) -> None:
    url = s3_url("photos")
    packed = json.loads(out(splitdata("pack", tree, url, "--paths", "-b", "3", "--json")))
    assert (packed["records"], packed["total_records"], packed["record_layout"]) == (
        13,
        13,
        "sample",
    )
    assert packed["source_bytes"] == sum(len(d) for d in tree_files(tree).values())
    splitdata("unpack", url, tmp_path / "restored")
    assert tree_files(tmp_path / "restored") == tree_files(tree)
    files = tree_files(tree)
    first, last = files["README"], files["2024/may/img11.jpg"]
    assert splitdata("get", url, "0", "-1", "--field", "").stdout == first + last
    listed = [json.loads(line) for line in out(splitdata("cat", url, "--json")).splitlines()]
    stored = [x["text"].encode() if "text" in x else base64.b64decode(x["base64"]) for x in listed]
    # A folder's files come before its subfolders', each level in name order.
    order = ["README"] + [f"2024/may/img{k:02d}.jpg" for k in range(12)]
    assert [decode_sample(record).key for record in stored] == order
    with SplitDataLoader(url) as loader:
        assert loader.manifest is not None
        assert loader.manifest.extra["pack"]["records"] == "sample"


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[bytes]]:
    lines = [
        json.dumps({"id": k, "text": f"line {k} " + "é" * (k % 7)}).encode() for k in range(40)
    ]
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    return path, lines


def test_lines_in_and_records_out(corpus: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    path, lines = corpus
    url = tmp_path / "corpus"
    packed = out(splitdata("pack", path, url, "--names", "-c", "zstd:level=5", "-b", "4"))
    size = sum(len(x) + 1 for x in lines)  # the lines with their newlines
    assert packed.startswith(f"packed 40 records ({size / 1000:.1f} kB) from 1 source into {url}")
    got = [
        json.loads(x) for x in out(splitdata("get", url, "0", "-1", "3:6", "--json")).splitlines()
    ]
    assert [(g["index"], g["text"].encode()) for g in got] == [
        (i, lines[i]) for i in (0, 39, 3, 4, 5)
    ]
    assert splitdata("get", url, "2").stdout == lines[2]
    splitdata("get", url, "1", "2", "-o", tmp_path / "records")
    assert tree_files(tmp_path / "records") == {"1": lines[1], "2": lines[2]}
    head = splitdata("head", url, "-n", "3")
    assert [row.split()[0] for row in out(head).splitlines()] == ["0", "1", "2"]
    assert '{"id": 1' in out(head).splitlines()[1]
    assert "(3 of 40 records)" in err(head)
    assert splitdata("cat", url, "-l").stdout == b"\n".join(lines) + b"\n"
    shuffled = splitdata("cat", url, "--binwise", "--shuffle", "--seed", "4", "-l").stdout
    assert sorted(shuffled.splitlines()) == sorted(lines)


def make_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_with_progress(tmp_path: Path) -> None:
    for shard in range(2):
        make_shard(
            tmp_path / f"shard-{shard}.tar",
            [
                item
                for k in range(shard * 50, shard * 50 + 50)
                for item in (
                    (f"s{k:04d}.jpg", os.urandom(2000)),
                    (f"s{k:04d}.cls", b"%d" % (k % 10)),
                )
            ],
        )
    url = tmp_path / "train"
    remote_shard = s3_url("shard-1.tar")
    fs, _ = fsspec.core.url_to_fs(remote_shard)
    fs.put_file(str(tmp_path / "shard-1.tar"), remote_shard)
    packed = splitdata("pack", tmp_path / "shard-0.tar", remote_shard, url, "--progress")
    assert "packed 100 records" in out(packed)
    assert "rec/s" in err(packed)
    assert "B/s" in err(packed)
    assert splitdata("get", url, "57", "--field", "cls").stdout == b"7"
    missing = splitdata("get", url, "57", "--field", "png", expect=1)
    assert (
        err(missing).strip()
        == "Error: record 57 (sample 's0057') has no field 'png'; it has 'jpg', 'cls'"
    )


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_lists_bad_records_and_repair_fixes_what_it_can(tmp_path: Path) -> None:
    url = tmp_path / "ds"
    records = [os.urandom(16) + bytes([k]) * 50 for k in range(60)]
    write_split_data(url, records, splits=3)
    assert out(splitdata("verify", url)).splitlines()[-1] == "ok: no problems"
    manifest = json.loads((url / "manifest.json").read_bytes())
    (url / manifest["commits"][0]["index"]["name"]).unlink()
    segment = next(p for p in (url / "data").iterdir() if records[10] in p.read_bytes())
    flip_byte(segment, segment.read_bytes().index(records[10]) + 20)
    (url / "data" / "leftover.seg").write_bytes(b"from a crashed writer")
    bad = splitdata("verify", url, expect=1)
    assert "2 problems:" in out(bad)
    assert f"  BAD record 10: data/{segment.name} at offset" in out(bad)
    assert "[repairable]" in out(bad)
    assert "1 files no commit references" in out(bad)
    repaired = splitdata("verify", url, "--repair", "--grace", "0", expect=1)
    assert "rebuilt index/" in out(repaired)
    assert "removed 1 unreferenced files" in out(repaired)
    assert "NOT REPAIRED record 10:" in out(repaired)
    assert not (url / "data" / "leftover.seg").exists()
    report = verify(url)
    assert [p.record for p in report.problems] == [10]
    crashed = tmp_path / "crashed"
    (crashed / "data").mkdir(parents=True)
    (crashed / "data" / "x.seg").write_bytes(b"written before a crash")
    assert "never committed" in err(splitdata("verify", crashed, expect=1))
    cleaned = splitdata("verify", crashed, "--repair", "--grace", "0")
    assert "removed 1 unreferenced files" in out(cleaned)
    assert not (crashed / "data" / "x.seg").exists()
    with SplitDataLoader(url) as loader:
        assert [loader[i] for i in range(60) if i != 10] == records[:10] + records[11:]


def test_verify_and_repair_on_s3_for_scripts() -> None:
    url = s3_url("ds")
    records = [os.urandom(30) for _ in range(50)]
    write_split_data(url, records, splits=2)
    fs, root = fsspec.core.url_to_fs(url)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    fs.rm_file(f"{root}/{manifest['commits'][0]['index']['name']}")
    result = json.loads(out(splitdata("verify", url, "--repair", "--grace", "0", "--json")))
    assert result["verify"]["ok"] is False
    assert [p["repairable"] for p in result["verify"]["problems"]] == [True]
    assert result["repair"]["ok"] is True
    assert len(result["repair"]["rebuilt"]) == 1
    assert verify(url).ok
    with SplitDataLoader(url) as loader:
        assert loader.get_many(range(50)) == records


def test_cp_to_s3_and_back_re_encoded(tmp_path: Path) -> None:
    source = tmp_path / "source"
    records = [os.urandom(10) * (k % 9 + 1) for k in range(300)]
    write_split_data(source, records, splits=4)
    remote = s3_url("copy")
    copied = json.loads(out(splitdata("cp", source, remote, "--json")))
    assert (copied["mode"], copied["files_copied"], copied["records"]) == ("files", 5, 300)
    back = tmp_path / "back"
    reencoded = splitdata("cp", remote, back, "-c", "zstd", "-b", "3", "--progress")
    assert out(reencoded).startswith("re-encoded 300 records")
    assert "300/300 rec" in err(reencoded)
    with SplitDataLoader(back) as loader:
        assert list(loader) == records
        assert loader.num_bins == 3
        assert loader.manifest is not None
        assert loader.manifest.codecs[0]["id"] == "zstd"


def test_convert_a_legacy_folder_in_place(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(GOLDEN / "legacy-0.0.1", legacy)
    assert json.loads(out(splitdata("info", legacy, "--json")))["format_version"] == "0.0.1"
    remote = s3_url("converted")
    splitdata("convert", legacy, remote, "-b", "2")
    with SplitDataLoader(remote) as loader:
        assert (len(loader), loader.num_bins) == (220, 2)
    converted = splitdata("convert", legacy, "--progress")
    assert "converted 220 records" in out(converted)
    assert not (legacy / "index.dat").exists()
    expected = json.loads((GOLDEN / "legacy-0.0.1.expected.json").read_text())["sha256"]
    with SplitDataLoader(legacy) as loader:
        assert not loader.is_legacy
        assert [hashlib.sha256(r).hexdigest() for r in loader] == expected


def test_bench_reports_every_phase(tmp_path: Path) -> None:
    url = tmp_path / "ds"
    write_split_data(url, [os.urandom(100) for _ in range(500)], splits=4)
    report = json.loads(out(splitdata("bench", url, "--random-reads", "50", "--json")))
    assert [(p["name"], p["records"]) for p in report["phases"]] == [
        ("random", 50),
        ("batch", 50),
        ("sequential", 500),
        ("shuffled", 500),
    ]
    assert all(p["nbytes"] == 100 * p["records"] for p in report["phases"])


def test_the_demo_packs_into_s3(tmp_path: Path) -> None:
    url = s3_url("demo")
    summary = json.loads(out(splitdata("demo", "--limit", "30", "--dest", url, "--json")))
    assert (summary["files"], summary["verified"], summary["dest_kept"]) == (30, 30, True)
    with SplitDataLoader(url) as loader:
        assert len(loader) == 30


def test_errors_are_one_line_unless_debugging(tmp_path: Path) -> None:
    missing = splitdata("info", tmp_path / "nothing", expect=1)
    assert err(missing).splitlines() == [
        f"Error: no dataset at {tmp_path / 'nothing'}: neither manifest.json nor a "
        f"splitdataloader 0.0.1 index.dat exists there"
    ]
    debug = splitdata("info", tmp_path / "nothing", "--debug", expect=1)
    assert "Traceback" in err(debug)
    assert "DatasetNotFoundError" in err(debug)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"a": 1}\n{"a": 2}\n{oops\n')
    failed = splitdata("pack", bad, tmp_path / "ds", expect=1)
    assert len(err(failed).splitlines()) == 1
    assert "bad.jsonl line 3 is not JSON" in err(failed)
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_ctrl_c_stops_without_committing(tmp_path: Path) -> None:
    url = tmp_path / "ds"
    write_split_data(url, [b"first %d" % k for k in range(5)], splits=2)
    before = (url / "manifest.json").read_bytes()
    fifo = tmp_path / "lines.txt"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [str(SCRIPT), "pack", str(fifo), str(url), "--append"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with fifo.open("wb") as writer:
            writer.write(b"more\n" * 5000)
            writer.flush()
            # Wait until the writer has opened its segments, then press Ctrl-C while it
            # waits for more input.
            deadline = time.monotonic() + 60
            while len(list((url / "data").iterdir())) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr.decode().startswith("Interrupted: nothing half-done was committed")
    assert (url / "manifest.json").read_bytes() == before
    report = verify(url)
    assert report.ok
    assert report.unreferenced == []  # the aborted writer removed its files
    with SplitDataLoader(url) as loader:
        assert len(loader) == 5


def test_storage_options_come_from_flags_the_environment_or_a_config_file(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = s3_url("ds")
    write_split_data(url, [b"x"] * 7, splits=2)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["AWS_MAX_ATTEMPTS"] = "1"
    flag = splitdata("info", url, "--json", "-s", f"endpoint_url={s3_server.endpoint}", env=env)
    assert json.loads(out(flag))["records"] == 7
    from_env = {
        **env,
        "SPLITDATA_STORAGE_OPTIONS": json.dumps({"endpoint_url": s3_server.endpoint}),
    }
    assert json.loads(out(splitdata("info", url, "--json", env=from_env)))["records"] == 7
    config = tmp_path / "config.toml"
    config.write_text(f'[storage."s3://{S3_BUCKET}/"]\nendpoint_url = "{s3_server.endpoint}"\n')
    from_file = {**env, "SPLITDATA_CONFIG": str(config)}
    assert json.loads(out(splitdata("info", url, "--json", env=from_file)))["records"] == 7


def test_keys_come_from_key_files_or_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    key = os.urandom(32)
    (keys / "team.key").write_text(key.hex())
    source = tmp_path / "notes.txt"
    source.write_bytes(b"secret one\nsecret two\n")
    url = tmp_path / "secure"
    splitdata("pack", source, url, "-c", "aesgcm:key_id=team", "--key-file", keys)
    assert b"secret" not in b"".join(p.read_bytes() for p in (url / "data").iterdir())
    denied = splitdata("get", url, "1", expect=1)
    assert len(err(denied).splitlines()) == 1
    assert "key id 'team'" in err(denied)
    assert splitdata("get", url, "1", "--key-file", keys / "team.key").stdout == b"secret two"
    env = {**os.environ, "SPLITDATALOADER_KEY_TEAM": key.hex()}
    assert splitdata("cat", url, "-l", env=env).stdout == b"secret one\nsecret two\n"


COMMANDS = ["pack", "unpack", "info", "get", "head", "cat", "verify", "cp", "convert", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_each_command_by_example(command: str) -> None:
    result = CliRunner().invoke(cli.main, [command, "--help"])
    assert result.exit_code == 0
    examples = result.output.split("Examples:", 1)[1]
    assert f"splitdata {command} " in examples


def test_the_group_help_lists_every_command() -> None:
    listed = out(splitdata("--help")).split("Commands:", 1)[1].split()
    assert set(COMMANDS) | {"demo"} <= set(listed)
