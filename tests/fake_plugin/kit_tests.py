"""Conformance tests of the sdl-example plugin, run by splitdataloader's kit."""

from __future__ import annotations

import uuid

import pytest

from splitdataloader.codecs import Codec, resolve_codecs
from splitdataloader.testing import BackendTests, CodecTests


class TestBz2Codec(CodecTests):
    @pytest.fixture
    def codec(self) -> Codec:
        # Built through the registry, as a writer builds it: this also proves the entry point.
        [codec] = resolve_codecs([{"id": "bz2", "level": 5}])
        return codec


class TestFakememBackend(BackendTests):
    @pytest.fixture
    def backend_url(self) -> str:
        return f"fakemem://bucket/{uuid.uuid4().hex}"
