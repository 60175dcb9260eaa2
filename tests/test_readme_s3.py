"""The README's S3 example runs as written, against the test S3 server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server

import splitdataloader
from splitdataloader import SplitDataLoader, write_split_data

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_ENDPOINT = "https://minio.internal:9000"


def s3_example() -> str:
    section = README.read_text(encoding="utf-8").split("### On S3", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's S3 section has no Python example"
    return match.group(1)


def test_readme_s3_example_runs(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = s3_example()
    assert EXAMPLE_ENDPOINT in code
    # The example's profile lives in the shared credentials file, as it would for a user.
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[minio]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3_server.create_bucket("datasets")
    records = [f"record {k}".encode() for k in range(500)]
    namespace = {
        "records": records,
        "random_indices": [3, 499, 3, 250],
        "epoch": 1,
        "write_split_data": write_split_data,
        "SplitDataLoader": SplitDataLoader,
    }
    exec(code.replace(EXAMPLE_ENDPOINT, s3_server.endpoint), namespace)
    assert namespace["batch"] == [records[3], records[499], records[3], records[250]]
    loader = namespace["loader"]
    assert isinstance(loader, splitdataloader.SplitDataLoader)
    assert sorted(loader.iterate_binwise(shuffle=True, seed=1)) == sorted(records)
