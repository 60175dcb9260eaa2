"""Shared fixtures: the storage backends every storage test runs on, and global-state resets.

``BACKENDS`` is the one list of storage locations; a test that asks for ``dataset_url``
runs once per entry. ``s3`` is a real S3 protocol server (moto, in a subprocess on
127.0.0.1) that the session starts the first time a test needs it; the environment
variables ``AWS_ENDPOINT_URL`` and the throwaway credentials point every S3 client of
the run (worker processes included) at it, so tests pass no storage options.

Hypothesis profiles: ``ci`` (the default) keeps the run short; ``dev`` explores more.
Choose one with the environment variable ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem
from hypothesis import HealthCheck, settings
from s3_server import S3Server, start_moto

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    # When a property test fails, hypothesis's pytest plugin imports libcst to suggest an
    # @example patch; libcst 1.0 subclasses the deprecated mypy_extensions.TypedDict, and
    # with filterwarnings=error that warning turned every hypothesis failure into an
    # INTERNALERROR that stopped the whole run.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning",
    )


#: Every storage backend the suite runs on, in the order tests are parametrized.
BACKENDS = ["local", "memory", "s3"]

#: The bucket every S3 test writes under, each test below a prefix of its own.
S3_BUCKET = "splitdata-tests"
#: Examples per property test on the S3 server, where every example costs tens of
#: requests of a few milliseconds each; local disk and memory keep the profile's count.
S3_MAX_EXAMPLES = 6


def _all_filesystem_classes() -> Iterator[type[AbstractFileSystem]]:
    pending: list[type[AbstractFileSystem]] = [AbstractFileSystem]
    seen: set[type[AbstractFileSystem]] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        pending.extend(cls.__subclasses__())


def clear_fsspec_state() -> None:
    """Empty fsspec's in-memory filesystem and every cached filesystem instance."""
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs.clear()
    MemoryFileSystem.pseudo_dirs.append("")
    for cls in _all_filesystem_classes():
        if "_cache" in vars(cls):
            cls.clear_instance_cache()


@pytest.fixture(autouse=True)
def _reset_fsspec() -> Iterator[None]:
    clear_fsspec_state()
    yield
    clear_fsspec_state()


@pytest.fixture(scope="session", autouse=True)
def s3_server() -> Iterator[S3Server]:
    """The session's S3 protocol server, with the environment pointing at it.

    Started first thing in the session: worker processes started by a forkserver take
    the environment the forkserver had when it started, so the variables must be in
    place before any test starts one.
    """
    server = start_moto()
    saved = {name: os.environ.get(name) for name in server.environment()}
    os.environ.update(server.environment())
    try:
        server.create_bucket(S3_BUCKET)
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(autouse=True)
def _fewer_examples_on_s3(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run property tests with :data:`S3_MAX_EXAMPLES` examples on the S3 backend.

    Hypothesis keeps a test's settings on the test function, which every backend's
    variant shares; they are swapped for the duration of an S3 variant only.
    """
    test = getattr(request.node, "obj", None)
    current = getattr(test, "_hypothesis_internal_use_settings", None)
    on_s3 = "backend" in request.fixturenames and request.getfixturevalue("backend") == "s3"
    if current is None or not on_s3:
        yield
        return
    test._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
        current, max_examples=min(current.max_examples, S3_MAX_EXAMPLES)
    )
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = current  # type: ignore[union-attr]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the storage backend this test runs on."""
    name: str = request.param
    if name == "s3":
        request.getfixturevalue("s3_server")
    return name


@pytest.fixture
def dataset_root(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty location on the current backend, unique to this test."""
    if backend == "local":
        return str(tmp_path_factory.mktemp("dataset"))
    if backend == "memory":
        return f"memory://t-{uuid.uuid4().hex}"
    if backend == "s3":
        return f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex}"
    raise ValueError(f"unknown storage backend {backend!r}")


@pytest.fixture
def dataset_url(dataset_root: str) -> str:
    """The URL of a dataset that does not exist yet, on the current backend."""
    return f"{dataset_root}/ds"


@pytest.fixture
def fresh_url(dataset_root: str) -> Callable[[], str]:
    """A factory of URLs of distinct, not yet existing datasets on the current backend.

    Property-based tests call it once per example, so that every example starts empty
    while the fixture itself is set up once per test.
    """

    def make() -> str:
        return f"{dataset_root}/ds-{uuid.uuid4().hex}"

    return make


@pytest.fixture
def filesystem(dataset_root: str) -> AbstractFileSystem:
    """The fsspec filesystem holding ``dataset_root``, for tests that tamper with files."""
    fs, _ = fsspec.core.url_to_fs(dataset_root)
    return fs
