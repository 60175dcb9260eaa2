"""The first-party ``retry+`` backend: the kit, and fault injection.

``FlakyMemoryFileSystem`` (protocol ``flakymem``) shares fsspec's memory store but fails a
planned number of read calls first, so ``retry+flakymem://x`` reads what ``memory://x``
wrote, through faults.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from splitdataloader_backends.retry import RetryFileSystem, RetryPolicy, is_transient

from splitdataloader import SplitDataLoader, plugins, write_split_data
from splitdataloader.errors import StorageError
from splitdataloader.storage import open_storage
from splitdataloader.testing import BackendTests

NO_WAIT = {"retry": {"attempts": 5, "backoff": 0}}


class FlakyMemoryFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """The memory filesystem, failing the next ``failures`` read calls with ``error``."""

    protocol = "flakymem"
    failures: ClassVar[int] = 0
    error: ClassVar[type[BaseException]] = ConnectionResetError
    calls: ClassVar[list[str]] = []
    only_path: ClassVar[str | None] = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        # MemoryFileSystem only strips its own "memory://" prefix.
        if path.startswith("flakymem://"):
            path = "memory://" + path[len("flakymem://") :]
        stripped: str = super()._strip_protocol(path)
        return stripped

    @classmethod
    def plan(cls, failures: int, error: type[BaseException] = ConnectionResetError) -> None:
        cls.failures, cls.error, cls.calls, cls.only_path = failures, error, [], None

    def _maybe_fail(self, what: str, path: str) -> None:
        cls = FlakyMemoryFileSystem
        cls.calls.append(f"{what} {path}")
        if cls.failures > 0 and (cls.only_path is None or path.endswith(cls.only_path)):
            cls.failures -= 1
            raise cls.error(f"injected fault in {what}")

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        self._maybe_fail("cat_file", path)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        self._maybe_fail("info", path)
        return super().info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        self._maybe_fail("ls", path)
        return super().ls(path, detail=detail, **kwargs)

    def pipe_file(self, path: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("pipe_file", path)
        return super().pipe_file(path, value, *args, **kwargs)


@pytest.fixture(autouse=True)
def flaky() -> Iterator[type[FlakyMemoryFileSystem]]:
    # A protocol name no one else uses; registering it for the rest of the run is harmless.
    fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
    FlakyMemoryFileSystem.plan(0)
    plugins.reset_plugins()
    yield FlakyMemoryFileSystem
    FlakyMemoryFileSystem.plan(0)


class TestRetryOverMemory(BackendTests):
    @pytest.fixture
    def backend_url(self) -> str:
        return f"retry+memory://retry-{uuid.uuid4().hex}"

    @pytest.fixture
    def storage_options(self) -> dict[str, Any]:
        return {"retry": {"attempts": 3, "backoff": 0.001}}


class TestRetryOverLocalDisk(BackendTests):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"retry+file://{tmp_path.as_posix()}/ds"


class TestRetryOverFlakyMemory(BackendTests):
    """The whole kit while every other read call fails once."""

    @pytest.fixture
    def backend_url(self) -> str:
        return f"retry+flakymem://flaky-{uuid.uuid4().hex}"

    @pytest.fixture
    def storage_options(self) -> dict[str, Any]:
        return NO_WAIT

    @pytest.fixture(autouse=True)
    def _fail_often(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = FlakyMemoryFileSystem._maybe_fail
        counter = iter(range(10**9))

        def every_other(self: FlakyMemoryFileSystem, what: str, path: str) -> None:
            if what != "pipe_file" and next(counter) % 2 == 0:
                FlakyMemoryFileSystem.failures = 1
            original(self, what, path)

        monkeypatch.setattr(FlakyMemoryFileSystem, "_maybe_fail", every_other)


def _write(url: str, count: int = 40) -> list[bytes]:
    records = [b"record %d " % i * (i + 1) for i in range(count)]
    write_split_data(url, records, splits=4)
    return records


def test_reads_succeed_through_transient_faults(flaky: type[FlakyMemoryFileSystem]) -> None:
    records = _write("memory://through-faults")
    flaky.plan(4)
    with SplitDataLoader("retry+flakymem://through-faults", storage_options=NO_WAIT) as loader:
        assert list(loader) == records
        assert loader.get_many([5, 1]) == [records[5], records[1]]
    assert flaky.failures == 0
    assert len(flaky.calls) > 4


def test_too_many_faults_raise_the_last_error(flaky: type[FlakyMemoryFileSystem]) -> None:
    _write("memory://too-many")
    flaky.plan(5, TimeoutError)
    options = {"retry": {"attempts": 5, "backoff": 0}}
    with pytest.raises(StorageError, match="injected fault") as raised:
        SplitDataLoader("retry+flakymem://too-many", storage_options=options)
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert raised.value.path == "retry+flakymem://too-many/manifest.json"
    assert flaky.failures == 0
    flaky.plan(4, TimeoutError)
    with SplitDataLoader("retry+flakymem://too-many", storage_options=options) as loader:
        assert len(loader) == 40


def test_without_the_wrapper_the_fault_reaches_the_caller(
    flaky: type[FlakyMemoryFileSystem],
) -> None:
    _write("memory://unwrapped")
    flaky.plan(1)
    with pytest.raises(OSError, match="injected fault"):
        SplitDataLoader("flakymem://unwrapped")


@pytest.mark.parametrize(
    "error", [FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError]
)
def test_permanent_errors_are_not_retried(
    flaky: type[FlakyMemoryFileSystem], error: type[OSError]
) -> None:
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=5, backoff=0)
    flaky.plan(3, error)
    with pytest.raises(error):
        fs.cat_file("/anything")
    assert flaky.calls == ["cat_file /anything"]


def test_missing_file_is_not_retried_at_all() -> None:
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=5, backoff=0)
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/no/such/file")
    assert not fs.exists("/no/such/file")
    assert FlakyMemoryFileSystem.calls == ["cat_file /no/such/file", "info /no/such/file"]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (asyncio.TimeoutError(), True),
        (OSError(5, "I/O error"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (ValueError(), False),
        (KeyError(), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_exists_does_not_turn_a_timeout_into_missing(flaky: type[FlakyMemoryFileSystem]) -> None:
    MemoryFileSystem().pipe_file("/present", b"x")
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=2, backoff=0)
    flaky.plan(1, TimeoutError)
    assert fs.exists("/present")
    flaky.plan(2, TimeoutError)
    with pytest.raises(TimeoutError):
        fs.exists("/present")
    flaky.plan(2, TimeoutError)
    assert not FlakyMemoryFileSystem().exists("/present")  # what fsspec alone would say


def test_cat_ranges_retries_only_the_failed_ranges(flaky: type[FlakyMemoryFileSystem]) -> None:
    MemoryFileSystem().pipe_file("/a", b"0123456789")
    MemoryFileSystem().pipe_file("/b", b"abcdefghij")
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=3, backoff=0)
    flaky.plan(2)
    flaky.only_path = "/b"
    result = fs.cat_ranges(["/a", "/b", "/a"], [0, 2, 5], [3, 4, 10])
    assert result == [b"012", b"cd", b"56789"]
    assert flaky.calls.count("cat_file /b") == 3
    assert flaky.calls.count("cat_file /a") == 2
    flaky.plan(3)
    flaky.only_path = "/b"
    returned = fs.cat_ranges(["/a", "/b"], [0, 0], [1, 1])
    assert returned[0] == b"0"
    assert isinstance(returned[1], ConnectionResetError)
    flaky.plan(3)
    flaky.only_path = "/b"
    with pytest.raises(ConnectionResetError):
        fs.cat_ranges(["/a", "/b"], [0, 0], [1, 1], on_error="raise")


def test_writes_are_not_retried(flaky: type[FlakyMemoryFileSystem]) -> None:
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=5, backoff=0)
    flaky.plan(1)
    with pytest.raises(ConnectionResetError):
        fs.pipe_file("/w", b"data")
    fs.pipe_file("/w", b"data")
    assert fs.cat_file("/w") == b"data"


def test_backoff_doubles_with_jitter_and_is_capped(
    monkeypatch: pytest.MonkeyPatch,
    flaky: type[FlakyMemoryFileSystem],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("splitdataloader_backends.retry.time.sleep", sleeps.append)
    MemoryFileSystem().pipe_file("/slow", b"x")
    fs = RetryFileSystem(FlakyMemoryFileSystem(), attempts=6, backoff=0.5, max_backoff=3.0)
    flaky.plan(5)
    with caplog.at_level(logging.WARNING, logger="splitdataloader_backends.retry"):
        assert fs.cat_file("/slow") == b"x"
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(sleeps) == 5
    for pause, ceiling in zip(sleeps, ceilings):
        assert ceiling / 2 <= pause <= ceiling
    assert len(caplog.records) == 5
    assert "retry 5 of 5" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "at least 1"),
        ({"attempts": "3"}, TypeError, "integer"),
        ({"attempts": True}, TypeError, "integer"),
        ({"backoff": -1}, ValueError, ">= 0"),
        ({"backoff": float("inf")}, ValueError, "finite"),
        ({"tries": 3}, ValueError, r"unknown .*\['tries'\]"),
        ([3], TypeError, "must be a dict"),
    ],
)
def test_invalid_retry_options(options: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        open_storage("retry+memory://x", {"retry": options})


def test_retry_url_must_wrap_an_inner_url() -> None:
    factory = plugins.backend_factory("retry")
    assert factory is not None
    with pytest.raises(ValueError, match="retry\\+<fsspec url>"):
        factory("retry+", {})


def test_policy_defaults_and_inner_options_pass_through() -> None:
    assert RetryPolicy.from_options(None) == RetryPolicy(attempts=5, backoff=0.1, max_backoff=10.0)
    storage = open_storage(
        "retry+memory://opts", {"retry": {"attempts": 2}, "skip_instance_cache": True}
    )
    assert isinstance(storage.fs, RetryFileSystem)
    assert storage.fs.policy.attempts == 2
    assert isinstance(storage.fs.fs, MemoryFileSystem)
    assert pickle.loads(pickle.dumps(storage)).fs.policy.attempts == 2
