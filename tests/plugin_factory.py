"""Helpers that lay out throw-away plugin distributions for the plugin-system tests.

Each plugin is a module plus a ``<dist>-1.0.dist-info`` folder with ``entry_points.txt``
in a temporary folder put on ``sys.path``: ``importlib.metadata`` discovers them exactly
as it discovers installed distributions. Module names are unique per call, so no two tests
share a cached module.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

from splitdataloader import plugins


class PluginFactory:
    """Writes plugin distributions into ``folder`` (which must be on ``sys.path``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, source: str, *, dist: str | None = None, name: str | None = None) -> str:
        """Write a module with ``source`` and an entry point for it; return the module name.

        ``dist`` is the distribution name (new by default; an existing one gets one more
        entry point), ``name`` the entry-point name (the module name by default).
        """
        module = f"sdl_test_plugin_{uuid.uuid4().hex[:12]}"
        (self.folder / f"{module}.py").write_text(textwrap.dedent(source))
        dist = dist or f"fake-dist-{uuid.uuid4().hex[:8]}"
        info = self.folder / f"{dist.replace('-', '_')}-1.0.dist-info"
        if not info.exists():
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
            (info / "entry_points.txt").write_text("[splitdataloader]\n")
        with (info / "entry_points.txt").open("a") as handle:
            handle.write(f"{name or module} = {module}\n")
        plugins.reset_plugins()
        return module


def codec_source(codec_id: str, kind: str = "compression", **register: str) -> str:
    """A plugin module registering a codec that appends ``codec_id`` to records."""
    options = ", ".join(f"{key}={value}" for key, value in register.items())
    return f"""
        from splitdataloader.codecs import Codec
        from splitdataloader.errors import DecodeError
        from splitdataloader.hookspecs import hookimpl

        class Marker(Codec):
            codec_id = {codec_id!r}
            kind = {kind!r}

            def encode(self, data, context):
                return bytes(data) + {codec_id.encode()!r}

            def decode(self, data, context):
                if not data.endswith({codec_id.encode()!r}):
                    raise DecodeError("no marker")
                return data[: -{len(codec_id)}]

        @hookimpl
        def splitdataloader_register_codecs(register):
            register(Marker{", " + options if options else ""})
        """


def backend_source(scheme: str, **register: str) -> str:
    """A plugin module registering ``scheme`` as the memory filesystem under ``/<scheme>``."""
    options = ", ".join(f"{key}={value}" for key, value in register.items())
    return f"""
        from fsspec.implementations.memory import MemoryFileSystem
        from splitdataloader.hookspecs import hookimpl

        def factory(url, options):
            return MemoryFileSystem(), "/{scheme}/" + url.split("://", 1)[-1]

        @hookimpl
        def splitdataloader_register_backends(register):
            register({scheme!r}, factory{", " + options if options else ""})
        """
