"""Reading from S3 through faults: throttling, server errors, resets, short and slow responses.

A small dataset is written straight to the session's moto server once; each test reads it
with a client of its own through a :class:`~s3_proxy.FaultProxy` that injects faults into
the GETs of segment objects (``.seg``). The client's retry layers are cut down so the
tests stay fast: botocore makes 2 attempts (``total_max_attempts``) and s3fs retries 2
times (``S3FileSystem.retries``), on top of aiohttp's own single retry of a reset
keep-alive connection. A fault that hits fewer requests than the retries absorb must be invisible
(right bytes, and the proxy saw the extra attempt); a permanent one must end, in bounded
time, in a :class:`~splitdataloader.errors.StorageError` that names the object. Damaged
bytes must never come back: a flipped bit raises ``ChecksumMismatchError`` naming the file.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import s3fs
from aiobotocore.session import AioSession
from conftest import S3_BUCKET
from s3_proxy import Fault, FaultKind, FaultProxy
from s3_server import S3Server

from splitdataloader import SplitDataLoader, write_split_data
from splitdataloader.errors import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    SplitDataError,
    StorageError,
)

pytestmark = [pytest.mark.s3, pytest.mark.timeout(60)]

#: Records of the test dataset: distinct, so a damaged record cannot equal another one.
RECORDS = [f"record {i:03d} ".encode() + bytes([i]) * (20 + 3 * i) for i in range(40)]
BINS = 4
#: The record that random-access tests read (in bin 3) and the batch ``get_many`` reads.
ONE_RECORD = 7
MANY_RECORDS = [7, 3, 12, 30, 7]

#: The timeouts the client uses, in seconds. The slow-response tests use shorter read
#: timeouts: a permanently slow object is retried 8 times (botocore 2 x s3fs 2 x s3fs 2:
#: ``_cat_file`` wraps ``_call_s3``'s retry loop in a second one), 16 s at 2 s each.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 2.0
ONE_SLOW_READ_TIMEOUT = 1.0
ALL_SLOW_READ_TIMEOUT = 0.5
#: How long a delayed response is held back: well past both read timeouts.
DELAY = 3.0

#: Faults that fail a request in a way the client retries, with the number of hits in a
#: row that the retry layers still absorb (a reset needs two: aiohttp retries one itself).
TRANSIENT = {
    FaultKind.SLOW_DOWN: 1,
    FaultKind.INTERNAL_ERROR: 1,
    FaultKind.RESET: 2,
    FaultKind.RESET_MIDWAY: 1,
    FaultKind.TRUNCATE: 1,
    FaultKind.DELAY: 1,
}
#: Upper bound on the time a permanent fault may take to surface as an error.
GIVE_UP_WITHIN = {FaultKind.DELAY: 20.0}
GIVE_UP_DEFAULT = 10.0


# ---------------------------------------------------------------------- access paths


def read_one(loader: SplitDataLoader) -> list[bytes]:
    return [loader[ONE_RECORD]]


def read_many(loader: SplitDataLoader) -> list[bytes]:
    return loader.get_many(MANY_RECORDS)


def read_binwise(loader: SplitDataLoader) -> Iterator[bytes]:
    return loader.iterate_binwise()  # lazily: a test may keep what came before an error


ACCESS: dict[str, Callable[[SplitDataLoader], Iterable[bytes]]] = {
    "getitem": read_one,
    "get_many": read_many,
    "iterate_binwise": read_binwise,
}


def expected(access: str) -> list[bytes]:
    """What ``ACCESS[access]`` returns on the intact dataset."""
    if access == "getitem":
        return [RECORDS[ONE_RECORD]]
    if access == "get_many":
        return [RECORDS[i] for i in MANY_RECORDS]
    # Round robin without shuffling: bin b holds records b, b + BINS, ... in that order.
    return [RECORDS[i] for b in range(BINS) for i in range(b, len(RECORDS), BINS)]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server, shared by this module."""
    with FaultProxy.for_endpoint(s3_server.endpoint) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_proxy(request: pytest.FixtureRequest) -> Iterator[None]:
    if "proxy" not in request.fixturenames:
        yield
        return
    proxy: FaultProxy = request.getfixturevalue("proxy")
    proxy.clear_faults()
    proxy.reset_counts()
    yield
    proxy.clear_faults()


@pytest.fixture(autouse=True)
def _few_s3fs_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # s3fs's own retry loop (5 by default, and nested in _cat_file) would make a permanent
    # fault take minutes.
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 2)


#: One botocore session for every client: each new session loads botocore's service
#: models again (~0.2 s), which would be most of this module's run time.
_SESSION = AioSession()


def client_options(
    endpoint: str, read_timeout: float = READ_TIMEOUT, **config: Any
) -> dict[str, Any]:
    """Storage options for a fresh s3fs client of ``endpoint`` with few, fast retries."""
    return {
        "session": _SESSION,
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "skip_instance_cache": True,
        "config_kwargs": {
            "retries": {"total_max_attempts": 2},
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": read_timeout,
            **config,
        },
    }


@pytest.fixture(scope="module")
def dataset(s3_server: S3Server) -> str:
    """The URL of ``RECORDS`` written straight to moto (not via the proxy), once: no test
    here writes to it, and each test reads it through a client of its own."""
    url = f"s3://{S3_BUCKET}/faults-{uuid.uuid4().hex}/ds"
    direct = {**s3_server.storage_options(), "skip_instance_cache": True}
    write_split_data(url, RECORDS, BINS, storage_options=direct)
    return url


@pytest.fixture
def open_loader(proxy: FaultProxy, dataset: str) -> Iterator[Callable[..., SplitDataLoader]]:
    """Opens loaders of ``dataset`` through the proxy; closes them after the test."""
    opened: list[SplitDataLoader] = []

    def make(read_timeout: float = READ_TIMEOUT, **config: Any) -> SplitDataLoader:
        options = client_options(proxy.endpoint, read_timeout, **config)
        loader = SplitDataLoader(dataset, storage_options=options)
        opened.append(loader)
        return loader

    yield make
    for loader in opened:
        loader.close()


def segment_gets(proxy: FaultProxy) -> int:
    return proxy.count("GET", ".seg")


def faulted_urls(proxy: FaultProxy) -> set[str]:
    """``s3://`` URLs of the objects whose requests a fault hit (path-style addressing)."""
    return {f"s3:/{request.path}" for request in proxy.requests if request.fault is not None}


def baseline_segment_gets(proxy: FaultProxy, loader: SplitDataLoader, access: str) -> int:
    """Segment GETs that ``access`` makes when nothing fails (segments are never cached,
    so the same reads on the same loader make as many again)."""
    proxy.reset_counts()
    assert list(ACCESS[access](loader)) == expected(access)
    gets = segment_gets(proxy)
    proxy.reset_counts()
    assert gets > 0, "the reads did not go through the proxy"
    return gets


# ---------------------------------------------------------------------- the proxy itself


def test_reads_and_writes_pass_through_the_proxy(
    proxy: FaultProxy, s3_server: S3Server, dataset: str
) -> None:
    """Signed requests survive the proxy both ways: PUTs (with their bodies) and GETs."""
    via_proxy = client_options(proxy.endpoint)
    url = f"s3://{S3_BUCKET}/faults-{uuid.uuid4().hex}/written-via-proxy"
    write_split_data(url, RECORDS[:10], 2, storage_options=via_proxy)
    assert proxy.count("PUT") > 0
    direct = {**s3_server.storage_options(), "skip_instance_cache": True}
    with SplitDataLoader(url, storage_options=direct) as loader:
        assert list(loader) == RECORDS[:10]
    with SplitDataLoader(dataset, storage_options=via_proxy) as loader:
        assert len(loader) == len(RECORDS)
        assert loader.get_many(range(len(RECORDS))) == RECORDS
        assert list(read_binwise(loader)) == expected("iterate_binwise")
    assert segment_gets(proxy) > 0
    assert all(request.fault is None for request in proxy.requests)


def proxy_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("s3-fault-proxy")}


def test_proxy_stops_its_thread_and_port(s3_server: S3Server) -> None:
    before = proxy_threads()
    proxy = FaultProxy.for_endpoint(s3_server.endpoint, latency=0.01)
    endpoint = proxy.start()
    assert len(proxy_threads() - before) == 1
    missing = f"s3://{S3_BUCKET}/faults-{uuid.uuid4().hex}/nothing-here"
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader(missing, storage_options=client_options(endpoint))
    assert proxy.count("GET") > 0
    proxy.stop()
    assert proxy_threads() == before
    port = int(endpoint.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    proxy.stop()  # a second stop is harmless


# ---------------------------------------------------------------------- transient faults


#: Every kind of fault on ``loader[i]``; on the batched and bulk paths, one retried by
#: botocore (503) and one by s3fs's retry of the body read (a short body).
RETRIED_CASES = [
    *((kind, "getitem") for kind in TRANSIENT if kind is not FaultKind.DELAY),
    (FaultKind.SLOW_DOWN, "get_many"),
    (FaultKind.TRUNCATE, "iterate_binwise"),
]
#: Every kind of permanent fault on ``loader[i]`` (a reset midway fails like a truncated
#: body); on the other paths, resets and a server error.
PERMANENT_CASES = [
    *(
        (kind, "getitem")
        for kind in TRANSIENT
        if kind not in (FaultKind.DELAY, FaultKind.RESET_MIDWAY)
    ),
    (FaultKind.RESET, "get_many"),
    (FaultKind.INTERNAL_ERROR, "iterate_binwise"),
]


@pytest.mark.parametrize(("kind", "access"), RETRIED_CASES)
def test_transient_fault_is_retried(
    proxy: FaultProxy,
    open_loader: Callable[..., SplitDataLoader],
    kind: FaultKind,
    access: str,
) -> None:
    """Fewer failures than the retries absorb: the right bytes, after visible retries."""
    loader = open_loader()
    baseline = baseline_segment_gets(proxy, loader, access)
    hits = TRANSIENT[kind]
    fault = proxy.add_fault(Fault(kind, count=hits, method="GET", path=".seg"))
    assert list(ACCESS[access](loader)) == expected(access)
    assert fault.applied == hits
    assert segment_gets(proxy) == baseline + hits


def test_one_slow_response_is_retried(
    proxy: FaultProxy, open_loader: Callable[..., SplitDataLoader]
) -> None:
    """A response slower than the read timeout is abandoned and asked again."""
    loader = open_loader(read_timeout=ONE_SLOW_READ_TIMEOUT)
    baseline = baseline_segment_gets(proxy, loader, "getitem")
    fault = proxy.add_fault(
        Fault(FaultKind.DELAY, count=1, method="GET", path=".seg", seconds=DELAY)
    )
    assert read_one(loader) == expected("getitem")
    assert fault.applied == 1
    # Had the client waited for the slow response, it would not have asked again.
    assert segment_gets(proxy) == baseline + 1


# ---------------------------------------------------------------------- permanent faults


def check_storage_error(error: StorageError, proxy: FaultProxy, dataset: str) -> None:
    """``error`` names the object the faults hit, by its URL under the dataset's."""
    urls = faulted_urls(proxy)
    assert len(urls) >= 1
    assert error.path in urls, (error.path, urls)
    assert error.path.startswith(dataset + "/")
    assert error.path in str(error)
    assert isinstance(error, SplitDataError)
    assert isinstance(error, OSError)
    assert error.__cause__ is not None


@pytest.mark.parametrize(("kind", "access"), PERMANENT_CASES)
def test_permanent_fault_raises_storage_error(
    proxy: FaultProxy,
    open_loader: Callable[..., SplitDataLoader],
    dataset: str,
    kind: FaultKind,
    access: str,
) -> None:
    """More failures than all retry layers together: a StorageError naming the object."""
    loader = open_loader()
    fault = proxy.add_fault(Fault(kind, count=None, method="GET", path=".seg"))
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        list(ACCESS[access](loader))
    assert time.monotonic() - started < GIVE_UP_WITHIN.get(kind, GIVE_UP_DEFAULT)
    check_storage_error(caught.value, proxy, dataset)
    assert fault.applied >= 2, "the client did not retry"


def test_permanently_slow_object_raises_storage_error(
    proxy: FaultProxy, open_loader: Callable[..., SplitDataLoader], dataset: str
) -> None:
    loader = open_loader(read_timeout=ALL_SLOW_READ_TIMEOUT)
    fault = proxy.add_fault(
        Fault(FaultKind.DELAY, count=None, method="GET", path=".seg", seconds=DELAY)
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        read_one(loader)
    assert time.monotonic() - started < GIVE_UP_WITHIN[FaultKind.DELAY]
    check_storage_error(caught.value, proxy, dataset)
    assert fault.applied >= 2, "the client did not retry"


def test_manifest_that_cannot_be_read_is_not_a_missing_dataset(
    proxy: FaultProxy, dataset: str
) -> None:
    """A dataset whose manifest keeps failing is unreachable, not absent."""
    fault = proxy.add_fault(Fault(FaultKind.RESET, count=None, path="manifest.json"))
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        SplitDataLoader(dataset, storage_options=client_options(proxy.endpoint))
    assert time.monotonic() - started < GIVE_UP_DEFAULT
    assert fault.applied >= 2, "the client did not retry"
    assert not isinstance(caught.value, FileNotFoundError)
    assert caught.value.path == f"{dataset}/manifest.json"
    assert caught.value.path in str(caught.value)


# ---------------------------------------------------------------------- damaged bytes


@pytest.mark.parametrize(
    ("validation", "access"),
    [
        # Only the library's own per-record checksums stand between the bytes and the user.
        *(("when_required", access) for access in ACCESS),
        # botocore's default: it also checks the CRC32 that moto sends with the response
        # when a GET covers the whole object, as iterate_binwise's do.
        ("when_supported", "iterate_binwise"),
    ],
)
def test_corrupted_segment_bytes_are_never_returned(
    proxy: FaultProxy,
    open_loader: Callable[..., SplitDataLoader],
    validation: str,
    access: str,
) -> None:
    """A flipped bit in a segment's response raises ChecksumMismatchError naming the file."""
    loader = open_loader(response_checksum_validation=validation)
    proxy.add_fault(Fault(FaultKind.CORRUPT, count=None, method="GET", path=".seg"))
    returned: list[bytes] = []
    with pytest.raises(ChecksumMismatchError) as caught:
        returned.extend(ACCESS[access](loader))  # keeps what came before the error
    assert set(returned) <= set(RECORDS), "a damaged record was returned"
    error = caught.value
    assert error.path in faulted_urls(proxy)
    assert error.path.endswith(".seg")
    assert error.path in str(error)
