"""Secrets: keys and credentials never reach the dataset, logs, reprs, errors or the CLI.

An encrypted dataset is written and read with a random key and with storage options
holding a random credential, through every path that logs, formats or raises: writes,
reads, damaged records, a wrong key, a missing key, a missing dataset, verify and repair,
and the ``splitdata`` commands. Neither secret, in any of its usual spellings (raw, hex,
base64), may appear in a stored file, a log record, a repr or an error message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import secrets
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import S3_BUCKET
from reference_model import to_fs
from s3_server import S3Server

from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader.cli import main
from splitdataloader.errors import SplitDataError
from splitdataloader.verify import repair, verify

CHAIN = [{"id": "aesgcm", "key_id": "k1"}]


def spellings(secret: bytes | str) -> list[bytes]:
    """The ways a secret could be written out."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    if isinstance(secret, bytes):
        forms.append(repr(secret).encode())
    return forms


def assert_absent(text: bytes | str, *secrets_: bytes | str) -> None:
    data = text.encode(errors="replace") if isinstance(text, str) else text
    for secret in secrets_:
        for form in spellings(secret):
            assert form not in data, f"a secret ({form[:6]!r}…) leaked"


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def credential() -> str:
    return f"credential-{secrets.token_hex(16)}"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def stored_bytes(url: str) -> bytes:
    fs, root = to_fs(url)
    return b"".join(fs.cat_file(path) for path in sorted(fs.find(root)))


def failures(url: str, key: bytes, options: dict[str, object]) -> list[BaseException]:
    """The errors of every failing path: damaged, wrong key, no key, no dataset."""
    caught: list[BaseException] = []
    attempts = [
        lambda: SplitDataLoader(url, keys={"k1": secrets.token_bytes(32)}, storage_options=options)[
            0
        ],
        lambda: SplitDataLoader(url, keys={}, key_providers=[], storage_options=options)[0],
        lambda: SplitDataLoader(f"{url}-missing", storage_options=options),
        lambda: write_split_data(
            url, [b"x"], codecs=["zstd"], keys={"k1": key}, storage_options=options
        ),
    ]
    for attempt in attempts:
        try:
            attempt()
        except Exception as err:
            caught.append(err)
    return caught


def exercise(url: str, key: bytes, credential: str, options: dict[str, object]) -> str:
    """Write, read, damage, fail, verify and repair; return every repr, message and
    traceback produced on the way."""
    records = [b"secret record %d" % k for k in range(30)]
    with SplitWriter(
        url, bins=3, codecs=CHAIN, keys={"k1": key}, storage_options=options
    ) as writer:
        writer.write_many(records)
        texts = [repr(writer), repr(writer._storage), repr(writer._storage.spec)]
    loader = SplitDataLoader(url, keys={"k1": key}, storage_options=options)
    assert list(loader) == records
    texts += [repr(loader), str(loader.manifest), repr(pickle.loads(pickle.dumps(loader)))]
    texts += [json.dumps(verify(url, storage_options=options, keys={"k1": key}).to_json())]
    texts += [json.dumps(repair(url, storage_options=options, grace_period=0).to_json())]
    fs, root = to_fs(url)
    segment = sorted(fs.find(f"{root}/data"))[0]
    data = bytearray(fs.cat_file(segment))
    data[-1] ^= 1
    fs.pipe_file(segment, bytes(data))
    errors = failures(url, key, options)
    try:
        SplitDataLoader(url, keys={"k1": key}, storage_options=options).get_many(range(30))
    except SplitDataError as err:
        errors.append(err)
    texts += [json.dumps(verify(url, storage_options=options, keys={"k1": key}).to_json())]
    assert len(errors) == 5, errors
    for err in errors:
        texts += [str(err), repr(err), "".join(traceback.format_exception(err))]
    return "\n".join(texts)


def test_no_secret_in_files_logs_reprs_or_errors(
    tmp_path: Path, key: bytes, credential: str, logs: pytest.LogCaptureFixture
) -> None:
    # The local filesystem ignores unknown options: a credential passes through unused.
    url = str(tmp_path / "ds")
    options: dict[str, object] = {"secret": credential}
    texts = exercise(url, key, credential, options)
    assert_absent(texts, key, credential)
    assert_absent(stored_bytes(url), key, credential)
    assert_absent("\n".join(r.getMessage() for r in logs.records), key, credential)
    assert logs.records, "nothing was logged: the check would be empty"


@pytest.mark.s3
def test_no_s3_credential_in_files_logs_reprs_or_errors(
    s3_server: S3Server, key: bytes, logs: pytest.LogCaptureFixture
) -> None:
    # moto accepts any credential: a fresh random one is sent with every request.
    credential = f"credential{secrets.token_hex(12)}"
    options: dict[str, object] = {
        "key": "access-key-id",
        "secret": credential,
        "endpoint_url": s3_server.endpoint,
        "skip_instance_cache": True,
    }
    url = f"s3://{S3_BUCKET}/secrets-{uuid.uuid4().hex}/ds"
    texts = exercise(url, key, credential, options)
    assert_absent(texts, key, credential)
    assert_absent(stored_bytes(url), key, credential)
    assert_absent("\n".join(r.getMessage() for r in logs.records), key, credential)


def run_cli(*arguments: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, list(arguments), env=env)
    shown = ""
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        shown = "".join(traceback.format_exception(*result.exc_info))
    return f"{result.output}\n{shown}"


@pytest.mark.s3
def test_cli_never_echoes_credentials(s3_server: S3Server, tmp_path: Path, key: bytes) -> None:
    credential = f"credential{secrets.token_hex(12)}"
    url = f"s3://{S3_BUCKET}/secrets-cli-{uuid.uuid4().hex}/ds"
    flags = [
        "-s",
        f"endpoint_url={s3_server.endpoint}",
        "-s",
        "key=access-key-id",
        "-s",
        f"secret={credential}",
    ]
    write_split_data(
        url,
        [b"record %d" % k for k in range(10)],
        splits=2,
        codecs=CHAIN,
        keys={"k1": key},
        storage_options={"endpoint_url": s3_server.endpoint, "key": "k", "secret": "s"},
    )
    key_file = tmp_path / "k1.key"
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    outputs = [
        run_cli("info", url, *flags),
        run_cli("info", url, "--json", *flags),
        run_cli("verify", url, *flags),
        run_cli("verify", url, "--repair", *flags),
        run_cli("info", f"{url}-missing", *flags),
        run_cli("info", f"{url}-missing", "--debug", *flags),
        run_cli("head", url, "-n", "2", "--key-file", str(key_file), *flags),
        run_cli("info", url, env={"SPLITDATA_STORAGE_OPTIONS": json.dumps({"secret": credential})}),
    ]
    text = "\n".join(outputs)
    assert "record" in text or "records" in text  # the commands did run
    assert_absent(text, credential, key)
