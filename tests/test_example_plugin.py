"""The kit run against a third-party-style plugin that is discovered but never installed.

``tests/fake_plugin`` holds the package ``sdl_example`` and its ``sdl_example-1.0.dist-info``
(with ``entry_points.txt``), laid out as pip would install them. A fixture puts the folder
on ``sys.path`` and forgets the cached plugin manager, so ``importlib.metadata`` finds the
distribution and its entry points exactly as it finds installed ones.
``fake_plugin/kit_tests.py`` is the plugin's own test module, shown in CONTRIBUTING.md.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_plugin.kit_tests import TestBz2Codec, TestFakememBackend

from splitdataloader import SplitDataLoader, plugins, write_split_data
from splitdataloader.codecs import CodecPipeline, RecordContext, resolve_codecs
from splitdataloader.errors import CodecConfigError, DatasetNotFoundError

FAKE_PLUGIN = Path(__file__).parent / "fake_plugin"

__all__ = ["TestBz2Codec", "TestFakememBackend"]


@pytest.fixture(autouse=True)
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the example plugin discoverable, as if it were installed."""
    monkeypatch.syspath_prepend(str(FAKE_PLUGIN))
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    monkeypatch.delenv("FAKEMEM_ROOT", raising=False)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def test_found_through_its_dist_info() -> None:
    dist = importlib.metadata.distribution("sdl-example")
    assert Path(str(dist.locate_file(""))) == FAKE_PLUGIN
    codecs = plugins.registered_codecs()
    assert codecs["bz2"].plugin == "'example_bz2' (sdl-example 1.0)"
    assert plugins.registered_backends()["fakemem"].plugin == "'example_fakemem' (sdl-example 1.0)"


def test_invalid_option_fails_before_anything_is_written() -> None:
    with pytest.raises(CodecConfigError, match="from 1 to 9, not 99"):
        resolve_codecs([{"id": "bz2", "level": 99}])
    with pytest.raises(CodecConfigError, match="levle"):
        resolve_codecs([{"id": "bz2", "levle": 3}])


def test_manifest_configs_rebuild_the_chain() -> None:
    codecs = resolve_codecs(["bz2"])
    configs = CodecPipeline(codecs).configs()
    assert configs == [{"id": "bz2", "level": 9}]
    from splitdataloader.codecs import CodecEnvironment  # noqa: PLC0415 - local to this test

    pipeline = CodecPipeline.from_configs(configs, CodecEnvironment("d"))
    context = RecordContext("d", 4)
    record = b"to be or not to be " * 50
    stored = codecs[0].encode(record, context)
    assert len(stored) < len(record)
    assert pipeline.decode(stored, context) == record


def test_fakemem_takes_its_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKEMEM_ROOT", "/elsewhere")
    write_split_data("fakemem://b/ds", [b"a", b"b", b"c"], splits=2)
    with SplitDataLoader("memory:///elsewhere/b/ds") as loader:
        assert list(loader) == [b"a", b"b", b"c"]
    with pytest.raises(DatasetNotFoundError):
        SplitDataLoader("fakemem://b/ds", storage_options={"root": "/other"})
