"""S3-specific behaviour against the session's moto server: requests, commits, uploads, caches.

Each test works under a prefix of its own in the session bucket. Where a test is about
the requests the library makes, the client talks to moto through a
:class:`~s3_proxy.FaultProxy` (no faults armed) that records every request: opening a
dataset costs one GET, random access a few ranged GETs, concurrent commits are decided
by the conditional PUT of the manifest, large segments go up as multipart uploads and an
aborted writer leaves neither objects nor unfinished uploads. It also covers appending,
the read-only local caches (``simplecache::`` and ``filecache::``), and the usual places
credentials and endpoints come from (environment, storage options, a shared config file
profile, ``client_kwargs``), with the secret kept out of reprs and error messages.
"""

from __future__ import annotations

import pickle
import random
import shutil
import threading
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs
from aiobotocore.session import AioSession
from conftest import S3_BUCKET
from s3_proxy import FaultProxy, ProxiedRequest
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server

import splitdataloader.readahead
from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader.errors import CommitConflictError, DatasetNotFoundError, ReadOnlyDatasetError
from splitdataloader.storage import DEFAULT_PART_SIZE

pytestmark = [pytest.mark.s3, pytest.mark.timeout(60)]

#: A botocore session for the library's clients in tests that do not test credentials: a
#: new session loads botocore's service models again (~0.2 s a client). The library
#: deep-copies storage options, which works on a session no client was created from yet:
#: this one is never used directly.
_SESSION = AioSession()
#: The session of the tests' own s3fs clients (listings, snapshots) and of cache URLs.
_TEST_SESSION = AioSession()

#: Record counts of the two datasets that opening and random access are measured on.
SMALL = 10
LARGE = 50_000
#: Bins of those datasets: one segment per bin, records round-robin from bin 0.
BINS = 4


# ---------------------------------------------------------------------- helpers


def new_prefix() -> str:
    """A fresh ``bucket/prefix`` (no scheme) that no other test uses."""
    return f"{S3_BUCKET}/t-{uuid.uuid4().hex}"


def tagged(tag: str, count: int) -> list[bytes]:
    """``count`` distinct small records, recognisable by ``tag``."""
    return [f"{tag}-{i:04d}".encode() * (1 + i % 3) for i in range(count)]


def large_record(index: int) -> bytes:
    return b"r%06d" % index


def big_records(seed: int) -> list[bytes]:
    """11 MiB of random records of 1 MiB: more than two multipart parts in one segment."""
    rng = random.Random(seed)
    return [rng.randbytes(1 << 20) for _ in range(11)]


def proxied(proxy: FaultProxy) -> dict[str, Any]:
    """Storage options for a fresh client whose every request goes through ``proxy``."""
    return {
        "session": _SESSION,
        "endpoint_url": proxy.endpoint,
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "skip_instance_cache": True,
    }


def direct(s3_server: S3Server) -> dict[str, Any]:
    """Storage options for a fresh client that talks to moto itself (not counted)."""
    return {**s3_server.storage_options(), "session": _SESSION, "skip_instance_cache": True}


def direct_fs(s3_server: S3Server) -> s3fs.S3FileSystem:
    """The tests' own client of moto, for listings and snapshots."""
    options = {**s3_server.storage_options(), "session": _TEST_SESSION}
    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def snapshot(s3_server: S3Server, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes."""
    fs = direct_fs(s3_server)
    return {path: fs.cat_file(path) for path in fs.find(prefix)}


def data_and_index_keys(s3_server: S3Server, dataset: str) -> set[str]:
    """``bucket/key`` of every object in the dataset's ``data/`` and ``index/`` folders."""
    fs = direct_fs(s3_server)
    return {path for folder in ("data", "index") for path in fs.find(f"{dataset}/{folder}")}


def unfinished_uploads(s3_server: S3Server, prefix: str) -> list[dict[str, Any]]:
    """The multipart uploads started and neither completed nor aborted under ``prefix``."""
    key_prefix = prefix.split("/", 1)[1] + "/"
    listing = direct_fs(s3_server).call_s3(
        "list_multipart_uploads", Bucket=S3_BUCKET, Prefix=key_prefix
    )
    uploads: list[dict[str, Any]] = listing.get("Uploads", [])
    return uploads


def object_key(request: ProxiedRequest) -> str:
    """``bucket/key`` of a path-style request."""
    return request.path.lstrip("/")


def range_length(request: ProxiedRequest) -> int:
    """The number of bytes a ``Range: bytes=a-b`` request asks for."""
    first, last = request.headers["range"].removeprefix("bytes=").split("-")
    return int(last) - int(first) + 1


def commit_at_once(writers: list[SplitWriter]) -> list[BaseException | None]:
    """Commit every writer at the same moment, each on a thread; what each raised."""
    barrier = threading.Barrier(len(writers))
    outcomes: list[BaseException | None] = [None] * len(writers)

    def commit(k: int) -> None:
        barrier.wait()
        try:
            writers[k].commit()
        except BaseException as err:  # the test inspects what each writer raised
            outcomes[k] = err

    threads = [threading.Thread(target=commit, args=(k,)) for k in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A counting proxy in front of the session's moto server, shared by this module."""
    with FaultProxy.for_endpoint(s3_server.endpoint) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_counts(request: pytest.FixtureRequest) -> None:
    if "proxy" in request.fixturenames:
        proxy: FaultProxy = request.getfixturevalue("proxy")
        proxy.clear_faults()
        proxy.reset_counts()


@pytest.fixture(scope="module")
def datasets(s3_server: S3Server) -> dict[int, str]:
    """URLs of a 10-record and a 50,000-record dataset of tiny records, written once."""
    prefix = new_prefix()
    urls = {}
    for count in (SMALL, LARGE):
        url = f"s3://{prefix}/ds-{count}"
        records = (large_record(i) for i in range(count))
        write_split_data(url, records, BINS, storage_options=direct(s3_server))
        urls[count] = url
    return urls


# ---------------------------------------------------------------------- request counts


@pytest.mark.parametrize("records", [SMALL, LARGE])
def test_opening_reads_the_manifest_only(
    proxy: FaultProxy, datasets: dict[int, str], records: int
) -> None:
    """One GET of manifest.json, however many records: no index, listing or HEAD."""
    url = datasets[records]
    loader = SplitDataLoader(url, storage_options=proxied(proxy))
    assert len(loader) == records
    manifest = "/" + url.removeprefix("s3://") + "/manifest.json"
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", manifest)]


def test_getitem_costs_few_ranged_gets_and_reuses_the_index_page(
    proxy: FaultProxy, datasets: dict[int, str]
) -> None:
    loader = SplitDataLoader(datasets[LARGE], storage_options=proxied(proxy))
    proxy.reset_counts()
    # Records 40000 and 40004 are both in bin 0 (round robin over 4 bins from bin 0), at
    # neighbouring index entries: one index page holds both.
    assert loader[40_000] == large_record(40_000)
    first = proxy.requests
    assert 1 <= len(first) <= 3, [(r.method, r.target) for r in first]
    assert all(r.method == "GET" and "range" in r.headers for r in first)
    segment_gets = [r for r in first if r.path.endswith(".seg")]
    assert len(segment_gets) == 1
    assert all(r.path.endswith((".seg", ".idx")) for r in first)
    # The record itself, not its ~270 KB segment.
    assert range_length(segment_gets[0]) <= 4096
    proxy.reset_counts()
    assert loader[40_004] == large_record(40_004)
    second = proxy.requests
    assert [(r.method, r.path.endswith(".seg")) for r in second] == [("GET", True)]
    assert "range" in second[0].headers


def test_get_many_coalesces_ranges_per_segment(proxy: FaultProxy, datasets: dict[int, str]) -> None:
    loader = SplitDataLoader(datasets[LARGE], storage_options=proxied(proxy))
    assert loader.manifest is not None
    segments = len(loader.manifest.commits[0].segments)
    proxy.reset_counts()
    wanted = [*random.Random(7).sample(range(LARGE), 500), 12, 12, LARGE - 1]
    assert loader.get_many(wanted) == [large_record(i) for i in wanted]
    assert all(r.method == "GET" and "range" in r.headers for r in proxy.requests)
    assert 1 <= proxy.count("GET", ".seg") <= segments
    assert proxy.count() < len(wanted)


# ---------------------------------------------------------------------- concurrent commits


def race_conditional_puts(fs: s3fs.S3FileSystem, key: str, etag: str, senders: int) -> list[str]:
    """Send ``senders`` PUTs with ``If-Match: etag`` at once; what each one got."""
    start = threading.Barrier(senders)
    outcomes: list[str] = []

    def send(sender: int) -> None:
        body = b"sender %d " % sender + b"." * 50_000
        start.wait()
        try:
            fs.call_s3("put_object", Bucket=S3_BUCKET, Key=key, Body=body, IfMatch=etag)
            outcomes.append("won")
        except OSError as err:
            outcomes.append(type(err).__name__)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_the_server_lets_exactly_one_of_many_conditional_puts_win(s3_server: S3Server) -> None:
    """What the concurrent-writer tests rely on: of PUTs sent together with the same
    ``If-Match``, one succeeds and the others fail, as on AWS S3."""
    fs = direct_fs(s3_server)
    key = f"{new_prefix()}/contended".split("/", 1)[1]
    for trial in range(8):
        etag = fs.call_s3("put_object", Bucket=S3_BUCKET, Key=key, Body=b"base %d" % trial)["ETag"]
        outcomes = race_conditional_puts(fs, key, etag, senders=6)
        assert len(outcomes) == 6
        assert outcomes.count("won") == 1, outcomes


@pytest.mark.parametrize("existing", [True, False], ids=["append", "create"])
def test_concurrent_commits_are_decided_by_the_conditional_put(
    proxy: FaultProxy, s3_server: S3Server, existing: bool
) -> None:
    """Two writers that read the same manifest commit at once: exactly one wins.

    Both send their manifest PUT (``If-Match`` the ETag they read, or ``If-None-Match: *``
    when neither found a manifest) and neither reads the manifest again while committing:
    the store, not a read-compare-write, picks the winner. The loser's segments and index
    part are deleted, and a new writer appends after the winner.
    """
    prefix = new_prefix()
    dataset = f"{prefix}/ds"
    url = f"s3://{dataset}"
    manifest = f"{dataset}/manifest.json"
    original = tagged("original", 6) if existing else []
    base_etag = None
    if existing:
        write_split_data(url, original, 2, storage_options=direct(s3_server))
        base_etag = direct_fs(s3_server).info(manifest)["ETag"]
    before = data_and_index_keys(s3_server, dataset)

    batches = [tagged("first", 5), tagged("second", 7)]
    writers = [SplitWriter(url, bins=2, storage_options=proxied(proxy)) for _ in batches]
    for writer, batch in zip(writers, batches):
        writer.write_many(batch)
    proxy.reset_counts()
    outcomes = commit_at_once(writers)
    requests = proxy.requests

    assert sum(outcome is None for outcome in outcomes) == 1, outcomes
    losers = [k for k, outcome in enumerate(outcomes) if isinstance(outcome, CommitConflictError)]
    assert len(losers) == 1, outcomes
    loser = losers[0]
    winner = 1 - loser
    writers[loser].abort()
    writers[winner].close()

    on_manifest = [r for r in requests if object_key(r) == manifest]
    assert [r.method for r in on_manifest] == ["PUT", "PUT"]
    for put in on_manifest:
        if existing:
            assert put.headers.get("if-match") == base_etag
        else:
            assert put.headers.get("if-none-match") == "*"

    loader = SplitDataLoader(url, storage_options=direct(s3_server))
    assert list(loader) == original + batches[winner]
    assert loader.manifest is not None
    won = loader.manifest.commits[-1]
    winner_files = {
        f"{dataset}/{name}" for name in (won.index.name, *(s.name for s in won.segments))
    }
    after = data_and_index_keys(s3_server, dataset)
    assert after == before | winner_files
    assert {f"{dataset}/{name}" for name in loader.manifest.files()} == after
    uploaded = {
        object_key(r) for r in requests if r.method == "PUT" and r.path.endswith((".seg", ".idx"))
    }
    loser_files = uploaded - winner_files
    assert loser_files, "the loser never uploaded its files"
    deleted = {object_key(r) for r in requests if r.method == "DELETE"}
    assert loser_files <= deleted
    assert loser_files.isdisjoint(after)

    third = tagged("third", 3)
    write_split_data(url, third, storage_options=proxied(proxy))
    reread = SplitDataLoader(url, storage_options=direct(s3_server))
    assert list(reread) == original + batches[winner] + third


# ---------------------------------------------------------------------- multipart uploads


def test_large_segment_is_a_multipart_upload(proxy: FaultProxy, s3_server: S3Server) -> None:
    prefix = new_prefix()
    url = f"s3://{prefix}/ds"
    records = big_records(1)
    assert sum(map(len, records)) > 2 * DEFAULT_PART_SIZE
    write_split_data(url, records, 1, storage_options=proxied(proxy))
    requests = proxy.requests
    started = [r for r in requests if r.method == "POST" and r.target.endswith("?uploads")]
    parts = [r for r in requests if r.method == "PUT" and "partNumber=" in r.target]
    completed = [r for r in requests if r.method == "POST" and "uploadId=" in r.target]
    assert len(started) == 1
    segment_path = started[0].path
    assert segment_path.endswith(".seg")
    assert len(parts) >= 2
    assert {r.path for r in parts} == {segment_path}
    assert [r.path for r in completed] == [segment_path]

    loader = SplitDataLoader(url, storage_options=direct(s3_server))
    assert loader.manifest is not None
    (segment,) = loader.manifest.commits[0].segments
    assert segment.size > 2 * DEFAULT_PART_SIZE
    assert direct_fs(s3_server).size(f"{prefix}/ds/{segment.name}") == segment.size
    assert list(loader.iterate_binwise()) == records
    assert [loader[3], loader[-1]] == [records[3], records[-1]]
    assert loader.get_many([10, 0, 5]) == [records[10], records[0], records[5]]
    assert unfinished_uploads(s3_server, prefix) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new", "append"])
def test_aborted_writer_leaves_no_object_nor_upload(
    proxy: FaultProxy, s3_server: S3Server, existing: bool
) -> None:
    prefix = new_prefix()
    url = f"s3://{prefix}/ds"
    original = tagged("original", 4)
    if existing:
        write_split_data(url, original, 1, storage_options=direct(s3_server))
    before = snapshot(s3_server, prefix)

    seen: dict[str, Any] = {}

    def fail_midway() -> None:
        with SplitWriter(url, bins=1, storage_options=proxied(proxy)) as writer:
            writer.write_many(big_records(2))
            seen["parts"] = proxy.count("PUT", "partNumber=")
            seen["uploads"] = unfinished_uploads(s3_server, prefix)
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fail_midway()
    # Parts were uploaded before the failure, and S3 held an unfinished upload then.
    assert seen["parts"] >= 2
    assert len(seen["uploads"]) == 1
    assert unfinished_uploads(s3_server, prefix) == []
    assert snapshot(s3_server, prefix) == before
    if existing:
        assert list(SplitDataLoader(url, storage_options=direct(s3_server))) == original
    else:
        with pytest.raises(DatasetNotFoundError):
            SplitDataLoader(url, storage_options=direct(s3_server))


# ---------------------------------------------------------------------- appending


def test_appending_works_like_local_disk(s3_server: S3Server, tmp_path: Path) -> None:
    """The same commits on S3 and on local disk give the same dataset, read every way."""
    urls = {"s3": f"s3://{new_prefix()}/ds", "local": str(tmp_path / "ds")}
    options: dict[str, dict[str, Any] | None] = {"s3": direct(s3_server), "local": None}
    batches = [tagged("a", 7), tagged("b", 5), tagged("c", 9), tagged("d", 1)]
    for where, url in urls.items():
        write_split_data(url, batches[0], 3, storage_options=options[where])
        write_split_data(url, batches[1], storage_options=options[where])
        with SplitWriter(url, storage_options=options[where]) as writer:
            writer.write_many(batches[2])
            assert writer.commit() == 21
            writer.write_many(batches[3])
    expected = [record for batch in batches for record in batch]
    s3 = SplitDataLoader(urls["s3"], storage_options=options["s3"])
    local = SplitDataLoader(urls["local"])
    assert len(s3) == len(expected)
    assert s3.manifest is not None
    assert local.manifest is not None
    assert len(s3.manifest.commits) == len(local.manifest.commits) == 4
    assert list(s3) == expected
    assert [s3[i] for i in range(len(expected))] == expected
    backwards = list(range(len(expected) - 1, -1, -1))
    assert s3.get_many(backwards) == [expected[i] for i in backwards]
    binwise = list(s3.iterate_binwise())
    assert sorted(binwise) == sorted(expected)
    assert binwise == list(local.iterate_binwise())
    shuffled = list(s3.iterate_binwise(shuffle=True, seed=5))
    assert shuffled == list(local.iterate_binwise(shuffle=True, seed=5))


# ---------------------------------------------------------------------- local caches

CACHES = ["simplecache", "filecache"]
CACHE_RECORDS = tagged("cached", 60)


@pytest.fixture(scope="module")
def cache_source(s3_server: S3Server) -> str:
    """``bucket/prefix`` of a small 3-bin dataset (at ``/ds``) that cache tests only read."""
    prefix = new_prefix()
    write_split_data(f"s3://{prefix}/ds", CACHE_RECORDS, 3, storage_options=direct(s3_server))
    return prefix


def cache_options(proxy: FaultProxy, protocol: str, cache_dir: Path) -> dict[str, Any]:
    """Options per protocol for ``protocol::s3://…``: the s3 part goes through the proxy.

    The library passes a chained URL's options on without copying them, so its s3fs client
    uses the session it is given: not ``_SESSION``, which must stay unused.
    """
    s3 = {**proxied(proxy), "session": _TEST_SESSION}
    return {"s3": s3, protocol: {"cache_storage": str(cache_dir)}}


@pytest.mark.parametrize("protocol", CACHES)
def test_cache_url_reads_the_dataset(
    proxy: FaultProxy, s3_server: S3Server, cache_source: str, protocol: str, tmp_path: Path
) -> None:
    before = snapshot(s3_server, cache_source)
    reference = SplitDataLoader(f"s3://{cache_source}/ds", storage_options=direct(s3_server))
    options = cache_options(proxy, protocol, tmp_path / "cache")
    loader = SplitDataLoader(f"{protocol}::s3://{cache_source}/ds", storage_options=options)
    assert len(loader) == len(CACHE_RECORDS)
    assert [loader[5], loader[-1]] == [CACHE_RECORDS[5], CACHE_RECORDS[-1]]
    wanted = [50, 1, 3, 3, 59]
    assert loader.get_many(wanted) == [CACHE_RECORDS[i] for i in wanted]
    assert list(loader.iterate_binwise()) == list(reference.iterate_binwise())
    shuffled = list(loader.iterate_binwise(shuffle=True, seed=3))
    assert shuffled == list(reference.iterate_binwise(shuffle=True, seed=3))
    assert snapshot(s3_server, cache_source) == before


@pytest.mark.parametrize("protocol", CACHES)
def test_cache_url_serves_a_second_loader_and_survives_deleting_the_cache(
    proxy: FaultProxy, s3_server: S3Server, cache_source: str, protocol: str, tmp_path: Path
) -> None:
    before = snapshot(s3_server, cache_source)
    cache_dir = tmp_path / "cache"
    options = cache_options(proxy, protocol, cache_dir)
    url = f"{protocol}::s3://{cache_source}/ds"
    everything = range(len(CACHE_RECORDS))

    first = SplitDataLoader(url, storage_options=options)
    assert first.get_many(everything) == CACHE_RECORDS
    assert proxy.count("GET", ".seg") > 0
    proxy.reset_counts()
    second = SplitDataLoader(url, storage_options=options)
    assert [second[0], second[17], second[-1]] == [CACHE_RECORDS[k] for k in (0, 17, -1)]
    assert second.get_many(everything) == CACHE_RECORDS
    assert proxy.count("GET", ".seg") == 0

    shutil.rmtree(cache_dir)
    third = SplitDataLoader(url, storage_options=options)
    assert third[17] == CACHE_RECORDS[17]
    assert third.get_many(everything) == CACHE_RECORDS
    assert proxy.count("GET", ".seg") > 0
    assert snapshot(s3_server, cache_source) == before


@pytest.mark.parametrize("protocol", CACHES)
def test_cache_url_is_read_only(
    proxy: FaultProxy, s3_server: S3Server, cache_source: str, protocol: str, tmp_path: Path
) -> None:
    before = snapshot(s3_server, cache_source)
    options = cache_options(proxy, protocol, tmp_path / "cache")
    url = f"{protocol}::s3://{cache_source}/ds"
    with pytest.raises(ReadOnlyDatasetError):
        SplitWriter(url, storage_options=options)
    with pytest.raises(ReadOnlyDatasetError):
        write_split_data(url, [b"never written"], storage_options=options)
    assert [r for r in proxy.requests if r.method in ("PUT", "POST", "DELETE")] == []
    assert snapshot(s3_server, cache_source) == before
    assert list(SplitDataLoader(url, storage_options=options)) == CACHE_RECORDS


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_simplecache_iterates_segments_read_ahead_in_parts(
    proxy: FaultProxy,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    verify: bool,
) -> None:
    """Read-ahead fetches a segment larger than a part as several concurrent range reads;
    through a whole-file cache they must still give the segment's bytes. Parts of 64 KiB
    stand in for the default 8 MiB, so the segments stay small."""
    monkeypatch.setattr(splitdataloader.readahead, "PART_BYTES", 64 << 10)
    rng = random.Random(3)
    records = [rng.randbytes(100_000) for _ in range(20)]
    url = f"s3://{new_prefix()}/ds"
    write_split_data(url, records, 2, storage_options=direct(s3_server))
    options = cache_options(proxy, "simplecache", tmp_path / "cache")
    loader = SplitDataLoader(f"simplecache::{url}", storage_options=options, verify=verify)
    expected = [records[i] for bin_id in range(2) for i in range(bin_id, len(records), 2)]
    got = list(loader.iterate_binwise())
    assert len(got) == len(expected)
    wrong = [k for k, (mine, theirs) in enumerate(zip(got, expected)) if mine != theirs]
    assert wrong == [], f"records {wrong} of the iteration came back with other bytes"


# ---------------------------------------------------------------------- credentials


#: The access keys each source of credentials gives (moto accepts any): the proxy sees
#: which one signed every request.
PROFILE = "splitdata-test"
SOURCES = [
    "environment",
    "storage-options",
    "profile-endpoint-in-config",
    "profile-endpoint-in-environment",
    "client-kwargs",
]


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, endpoint or profile from the environment, the user's files or EC2."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def credentials_from(
    source: str, endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[dict[str, Any] | None, str]:
    """Set up ``source`` for ``endpoint``; the storage options to pass and the access key."""
    isolate_aws_environment(monkeypatch, tmp_path)
    key = f"{source}-key"
    secret = f"{source}-secret"
    if source == "environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        return None, key
    if source == "storage-options":
        return {"key": key, "secret": secret, "endpoint_url": endpoint}, key
    if source == "client-kwargs":
        return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}, key
    config = tmp_path / "config"
    credentials = tmp_path / "credentials"
    lines = [f"[profile {PROFILE}]", "region = us-east-1"]
    if source == "profile-endpoint-in-config":
        lines.append(f"endpoint_url = {endpoint}")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    config.write_text("\n".join(lines) + "\n")
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    return {"profile": PROFILE}, key


@pytest.mark.parametrize("source", SOURCES)
def test_credentials_and_endpoint_from_the_usual_places(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    options, key = credentials_from(source, proxy.endpoint, monkeypatch, tmp_path)
    url = f"s3://{new_prefix()}/ds"
    records = tagged(source, 5)
    write_split_data(url, records, 2, storage_options=options)
    assert list(SplitDataLoader(url, storage_options=options)) == records
    signers = {
        r.headers.get("authorization", "").partition("Credential=")[2].split("/")[0]
        for r in proxy.requests
    }
    # Every request reached the endpoint configured there, signed with the key from there.
    assert proxy.count("PUT", "manifest.json") == 1
    assert signers == {key}


def test_a_used_botocore_session_in_storage_options(s3_server: S3Server) -> None:
    """s3fs takes ``session=`` to share one botocore session between clients; a session
    that already served a client (the usual case when sharing) must work too."""
    session = AioSession()
    url = f"s3://{new_prefix()}/ds"
    own = s3fs.S3FileSystem(
        session=session, skip_instance_cache=True, **s3_server.storage_options()
    )
    # The session's own client looks first: a 404, like any check for a new dataset.
    assert not own.exists(f"{url}/manifest.json")
    options = {**s3_server.storage_options(), "session": session}
    records = tagged("session", 5)
    write_split_data(url, records, 2, storage_options=options)
    assert list(SplitDataLoader(url, storage_options=options)) == records


def test_secret_stays_out_of_reprs_and_errors(proxy: FaultProxy) -> None:
    secret = f"very-secret-{uuid.uuid4().hex}"
    options = {"key": "leak-test-key", "secret": secret, "endpoint_url": proxy.endpoint}
    url = f"s3://{new_prefix()}/ds"
    records = tagged("leak", 4)
    write_split_data(url, records, 2, storage_options=options)
    loader = SplitDataLoader(url, storage_options=options)
    assert secret not in repr(loader)
    assert secret not in loader.url
    with pytest.raises(DatasetNotFoundError) as missing:
        SplitDataLoader(f"{url}-missing", storage_options=options)
    assert secret not in str(missing.value)
    assert secret not in "".join(traceback.format_exception(missing.value))
    # Worker processes rebuild the loader from its pickle: it must read the same records.
    clone = pickle.loads(pickle.dumps(loader))
    assert list(clone) == records
