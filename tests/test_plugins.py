"""The plugin manager: discovery, lazy loading, duplicates, missing dependencies, env vars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from plugin_factory import PluginFactory, backend_source, codec_source

from splitdataloader import plugins
from splitdataloader.codecs import Codec, RecordContext
from splitdataloader.errors import MissingPluginError, PluginConflictError, PluginError
from splitdataloader.hookspecs import RegisterCodec, hookimpl
from splitdataloader.storage import Storage, url_scheme


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginFactory]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset_plugins()
    yield PluginFactory(tmp_path)
    plugins.reset_plugins()


def test_entry_points_register_codecs_backends_and_key_providers(factory: PluginFactory) -> None:
    factory.add(codec_source("tcodec-a"), dist="dist-a", name="ep_a")
    factory.add(backend_source("tscheme"), dist="dist-a", name="ep_a_backend")
    factory.add(
        """
        from splitdataloader.codecs import KeyProvider
        from splitdataloader.hookspecs import hookimpl

        class Fixed(KeyProvider):
            provider_id = "tfixed"

            def get_key(self, key_id):
                return b"k" * 32

        @hookimpl
        def splitdataloader_register_key_providers(register):
            register(Fixed)
        """,
        dist="dist-a",
        name="ep_a_keys",
    )
    registration = plugins.registered_codecs()["tcodec-a"]
    assert registration.plugin == "'ep_a' (dist-a 1.0)"
    assert registration.available
    assert plugins.codec_class("tcodec-a").codec_id == "tcodec-a"
    assert plugins.key_provider_class("tfixed")().get_key("x") == b"k" * 32
    backend = plugins.backend_factory("tscheme")
    assert backend is not None
    assert backend("tscheme://a/b", {})[1] == "/tscheme/a/b"
    assert plugins.backend_factory("no-such-scheme") is None


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("codec", lambda: codec_source("tdup")),
        ("backend scheme", lambda: backend_source("tdup")),
    ],
)
def test_two_plugins_claiming_one_name_are_both_named(
    factory: PluginFactory, kind: str, make: object
) -> None:
    assert callable(make)
    factory.add(make(), dist="first-dist", name="first_ep")
    factory.add(make(), dist="second-dist", name="second_ep")
    with pytest.raises(PluginConflictError) as caught:
        plugins.get_plugin_manager()
    message = str(caught.value)
    assert f"the {kind} 'tdup' is registered by two plugins" in message
    assert "'first_ep' (first-dist 1.0)" in message
    assert "'second_ep' (second-dist 1.0)" in message


def test_one_entry_point_name_in_two_distributions_is_a_conflict(factory: PluginFactory) -> None:
    factory.add(codec_source("tone"), dist="left-dist", name="same_name")
    factory.add(codec_source("ttwo"), dist="right-dist", name="same_name")
    with pytest.raises(PluginConflictError, match=r"left-dist 1\.0.*right-dist 1\.0"):
        plugins.get_plugin_manager()


def test_missing_dependency_registers_the_name_and_hints_the_extra(
    factory: PluginFactory,
) -> None:
    factory.add(
        codec_source("tneeds", requires='("sdl_module_that_is_not_there",)', extra='"fast"'),
        dist="needy-dist",
    )
    registration = plugins.registered_codecs()["tneeds"]
    assert not registration.available
    assert registration.missing == ("sdl_module_that_is_not_there",)
    with pytest.raises(MissingPluginError) as caught:
        plugins.codec_class("tneeds")
    assert isinstance(caught.value, ImportError)
    assert str(caught.value).endswith('is not installed: pip install "needy-dist[fast]"')


def test_missing_dependency_without_extra_hints_the_module(factory: PluginFactory) -> None:
    factory.add(backend_source("tneedy", requires='("sdl_absent_mod.sub",)'))
    with pytest.raises(MissingPluginError, match=r"not installed: pip install sdl_absent_mod\Z"):
        plugins.backend_factory("tneedy")
    with pytest.raises(MissingPluginError, match="pip install sdl_absent_mod"):
        Storage("tneedy://x")


class _NeedsZstd(Codec):
    codec_id = "tfirstparty"
    kind = "compression"

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return bytes(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        return data


class _ProgrammaticPlugin:
    @hookimpl
    def splitdataloader_register_codecs(self, register: RegisterCodec) -> None:
        register(_NeedsZstd, requires=("sdl_not_installed_zstd",), extra="zstd")


def test_register_plugin_and_the_first_party_hint(factory: PluginFactory) -> None:
    plugin = _ProgrammaticPlugin()
    plugins.register_plugin(plugin, "programmatic")
    try:
        assert (
            plugins.registered_codecs()["tfirstparty"].plugin == "'programmatic' (splitdataloader)"
        )
        with pytest.raises(MissingPluginError) as caught:
            plugins.codec_class("tfirstparty")
        assert str(caught.value).endswith('pip install "splitdataloader[zstd]"')
        with pytest.raises(PluginConflictError):
            plugins.register_plugin(plugin, "programmatic")
    finally:
        plugins.unregister_plugin("programmatic")
    with pytest.raises(MissingPluginError, match="no plugin provides the codec 'tfirstparty'"):
        plugins.codec_class("tfirstparty")


def test_unknown_names_raise_missing_plugin(factory: PluginFactory) -> None:
    with pytest.raises(MissingPluginError, match="no plugin provides the codec 'tnothing'"):
        plugins.codec_class("tnothing")
    with pytest.raises(MissingPluginError, match="key provider 'tnothing'"):
        plugins.key_provider_class("tnothing")


def test_allow_list_loads_only_the_named_plugins(
    factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.add(codec_source("tallowed"), dist="allowed-dist", name="allowed_ep")
    factory.add(codec_source("tother"), dist="other-dist", name="other_ep")
    monkeypatch.setenv(plugins.PLUGINS_ENV, " allowed_ep ,")
    plugins.reset_plugins()
    assert set(plugins.registered_codecs()) == {"tallowed"}
    assert plugins.registered_backends() == {}
    with pytest.raises(MissingPluginError, match=r"skipped because of.*other_ep"):
        plugins.codec_class("tother")
    # Distribution names work too, with pip's normalisation.
    monkeypatch.setenv(plugins.PLUGINS_ENV, "Other_Dist")
    plugins.reset_plugins()
    assert set(plugins.registered_codecs()) == {"tother"}


def test_block_list_skips_the_named_plugins(
    factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.add(codec_source("tkept"), dist="kept-dist", name="kept_ep")
    factory.add(codec_source("tblocked"), dist="blocked-dist", name="blocked_ep")
    assert {"tkept", "tblocked"} <= set(plugins.registered_codecs())
    monkeypatch.setenv(plugins.DISABLE_ENV, "blocked_ep,retry")
    plugins.reset_plugins()
    registered = plugins.registered_codecs()
    assert "tkept" in registered
    assert "tblocked" not in registered
    assert "retry" not in plugins.registered_backends()


def test_block_list_resolves_a_conflict(
    factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.add(codec_source("tclash"), dist="one-dist", name="one_ep")
    factory.add(codec_source("tclash"), dist="two-dist", name="two_ep")
    with pytest.raises(PluginConflictError, match="SPLITDATALOADER_DISABLE_PLUGINS"):
        plugins.registered_codecs()
    monkeypatch.setenv(plugins.DISABLE_ENV, "two-dist")
    plugins.reset_plugins()
    assert plugins.registered_codecs()["tclash"].plugin == "'one_ep' (one-dist 1.0)"


def test_check_pending_catches_a_misspelled_hook(factory: PluginFactory) -> None:
    factory.add(
        """
        from splitdataloader.hookspecs import hookimpl

        @hookimpl
        def splitdataloader_register_codec(register):
            pass
        """,
        dist="typo-dist",
        name="typo_ep",
    )
    with pytest.raises(PluginError) as caught:
        plugins.get_plugin_manager()
    message = str(caught.value)
    assert "'typo_ep' (typo-dist 1.0)" in message
    assert "splitdataloader_register_codec" in message
    assert "splitdataloader_register_codecs" in message  # the list of real hooks


def test_a_plugin_that_fails_to_import_is_named_with_the_way_out(
    factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.add("raise RuntimeError('broken on purpose')\n", dist="broken-dist", name="broken_ep")
    with pytest.raises(
        PluginError, match=r"broken_ep.*broken on purpose.*DISABLE_PLUGINS=broken_ep"
    ):
        plugins.get_plugin_manager()
    monkeypatch.setenv(plugins.DISABLE_ENV, "broken_ep")
    plugins.reset_plugins()
    plugins.get_plugin_manager()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("register(object)", "not a Codec subclass"),
        ("register(Marker, requires='zstandard')", "requires= must be a tuple"),
        ("register(Marker, extra='')", "extra= must be"),
    ],
)
def test_invalid_registrations_are_plugin_errors(
    factory: PluginFactory, call: str, error: str
) -> None:
    source = codec_source("tinvalid").replace("register(Marker)", call)
    factory.add(source)
    with pytest.raises(PluginError, match=error):
        plugins.get_plugin_manager()


def test_invalid_scheme_is_a_plugin_error(factory: PluginFactory) -> None:
    factory.add(backend_source("Bad_Scheme"))
    with pytest.raises(PluginError, match="scheme must be lowercase"):
        plugins.get_plugin_manager()


def test_plus_schemes_fall_back_to_their_first_part(factory: PluginFactory) -> None:
    factory.add(backend_source("tplus"))
    general = plugins.backend_factory("tplus")
    assert general is not None
    assert plugins.backend_factory("tplus+s3") is general
    assert plugins.backend_factory("TPLUS+memory") is general
    factory.add(backend_source("tplus+exact"))
    exact = plugins.backend_factory("tplus+exact")
    assert exact is not None
    assert exact is not plugins.backend_factory("tplus")


def test_storage_asks_the_backend_plugin_first(factory: PluginFactory) -> None:
    factory.add(backend_source("tstore"))
    storage = Storage("tstore://bucket/ds")
    assert isinstance(storage.fs, MemoryFileSystem)
    assert storage.root == "/tstore/bucket/ds"
    # Chained URLs are looked up by their first protocol.
    chained = Storage("tstore::memory://elsewhere")
    assert chained.root == "/tstore/elsewhere"
    plain = Storage("memory://plain")
    assert plain.root == "/plain"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("s3://bucket/key", "s3"),
        ("RETRY+S3://bucket", "retry+s3"),
        ("simplecache::s3://bucket/key", "simplecache"),
        ("retry+simplecache::s3://b", "retry+simplecache"),
        ("/tmp/data", None),
        ("relative/path", None),
        ("C:\\data\\train", None),
    ],
)
def test_url_scheme(url: str, scheme: str | None) -> None:
    assert url_scheme(url) == scheme


def test_manager_is_cached_and_reset_rebuilds_it(factory: PluginFactory) -> None:
    first = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is first
    factory.add(codec_source("tlate"))  # resets the cache
    second = plugins.get_plugin_manager()
    assert second is not first
    assert "tlate" in plugins.registered_codecs()


def test_nothing_loads_at_import() -> None:
    script = """
import json, sys
import splitdataloader
from splitdataloader import plugins
before = {
    "state": plugins._state is not None,
    "modules": sorted(m for m in sys.modules if m.startswith("splitdataloader_backends")),
}
splitdataloader.SplitDataLoader  # attribute access must not load plugins either
after_import = plugins._state is not None
plugins.registered_codecs()
print(json.dumps({
    "before": before,
    "after_import": after_import,
    "after_use": "splitdataloader_backends.retry" in sys.modules,
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITDATALOADER_")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    report = json.loads(result.stdout)
    assert report["before"] == {"state": False, "modules": []}
    assert report["after_import"] is False
    assert report["after_use"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_builds_its_own_manager(factory: PluginFactory) -> None:
    parent = plugins.get_plugin_manager()
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork in a multi-threaded process; the child below only
        # builds the plugin manager and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child = plugins.get_plugin_manager()
            answer = {"new": child is not parent, "again": plugins.get_plugin_manager() is child}
            answer["retry"] = "retry" in plugins.registered_backends()
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert answer == {"new": True, "again": True, "retry": True}
    assert plugins.get_plugin_manager() is parent


def test_example_plugin_is_not_found_unless_its_folder_is_on_the_path(
    factory: PluginFactory,
) -> None:
    assert "bz2" not in plugins.registered_codecs()
    assert plugins.backend_factory("fakemem") is None
