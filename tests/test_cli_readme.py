"""The README's tour of the ``splitdata`` command runs as written, in one shell session,
against local disk and the test S3 server, so the guide cannot drift from the code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import fsspec
from s3_server import S3Server

from splitdataloader import decode_sample

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PLUGIN = Path(__file__).resolve().parent / "fake_plugin"
EXAMPLE_ENDPOINT = "http://localhost:9000"
BLOCK = re.compile(r"```(bash|python|toml)\n(.*?)```", re.DOTALL)
#: The training step the Python example calls: it records what it was given.
PRELUDE = """\
import json
_trained = []
def train_step(key, data):
    _trained.append([key, len(data)])
"""
EPILOGUE = """
with open("trained.json", "w") as _out:
    json.dump(_trained, _out)
"""


def tour() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## The `splitdata` command: a tour", 1)[1].split("\n## ", 1)[0]


def as_script(section: str, endpoint: str) -> str:
    """The tour's blocks, in order, as one bash script."""
    parts = ["set -euo pipefail"]
    for language, code in BLOCK.findall(section.replace(EXAMPLE_ENDPOINT, endpoint)):
        if language == "bash":
            parts.append(code)
        elif language == "python":
            parts.append(f"python - <<'PYTHON'\n{PRELUDE}{code}{EPILOGUE}PYTHON")
        else:  # the config file the text says where to put
            parts.append(
                "mkdir -p ~/.config/splitdata\n"
                f"cat > ~/.config/splitdata/config.toml <<'TOML'\n{code}TOML"
            )
    return "\n".join(parts) + "\n"


def test_the_readme_tour_runs_as_written(s3_server: S3Server, tmp_path: Path) -> None:
    section = tour()
    commands = [line for line in section.splitlines() if line.startswith("splitdata ")]
    used = {line.split()[1] for line in commands}
    assert {"pack", "info", "head", "verify", "unpack", "get", "cat", "cp", "bench"} <= used
    script = as_script(section, s3_server.endpoint)
    with contextlib.suppress(OSError):  # the bucket the tour uses
        s3_server.create_bucket("my-bucket")
    work, home = tmp_path / "work", tmp_path / "home"
    photos = work / "photos"
    (photos / "2024").mkdir(parents=True)
    (home).mkdir()
    for k in range(6):
        (photos / "2024" / f"img{k}.jpg").write_bytes(os.urandom(300 + k))
    (photos / "notes.txt").write_bytes(b"taken in May\n")
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": os.pathsep.join(
            [sysconfig.get_path("scripts"), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "PYTHONPATH": str(PLUGIN),  # the CONTRIBUTING.md example plugin, "installed"
    }
    env.pop("SPLITDATA_CONFIG", None)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    restored = work / "restored"
    expected = {p.relative_to(photos): p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    unpacked = {p.relative_to(restored): p.read_bytes() for p in restored.rglob("*") if p.is_file()}
    assert unpacked == expected
    assert result.stdout.count("ok: no problems") == 2
    lines = result.stdout.splitlines()
    got = [json.loads(line) for line in lines if line.startswith('{"index"')]
    assert [(g["index"], g["text"]) for g in got] == [
        (0, '{"text": "first"}'),
        (1, '{"text": "second"}'),
    ]
    assert lines[lines.index(json.dumps(got[-1])) + 1 :][:2] == [
        '{"text": "first"}',
        '{"text": "second"}',
    ]  # cat --lines, right after get --json
    trained = json.loads((work / "trained.json").read_text())
    assert sorted(map(tuple, trained)) == sorted(
        (path.as_posix(), len(data)) for path in expected for data in [expected[path]] * 2
    )

    fs, _ = fsspec.core.url_to_fs("s3://my-bucket")
    secure = json.loads(fs.cat_file("my-bucket/photos-secure/manifest.json"))
    assert [c["id"] for c in secure["codecs"]] == ["zstd", "aesgcm"]
    assert secure["codecs"][1]["key_id"] == "team-a"
    plugin = json.loads((work / "data" / "photos-bz2" / "manifest.json").read_text())
    assert plugin["codecs"] == [{"id": "bz2", "level": 9}]
    assert (home / ".config" / "splitdata" / "config.toml").is_file()
    # What the tour packed reads back through the library as the text says.
    from splitdataloader import SplitDataLoader  # noqa: PLC0415 - after the tour ran

    with SplitDataLoader(work / "data" / "photos") as loader:
        keys = {decode_sample(record).key for record in loader}
    assert keys == {path.as_posix() for path in expected}
