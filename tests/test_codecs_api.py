"""The codec API: chain order rules, config (de)serialisation, key secrecy, error mapping."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from splitdataloader import plugins
from splitdataloader.codecs import (
    Codec,
    CodecEnvironment,
    CodecPipeline,
    KeyProvider,
    KeyRing,
    RecordContext,
    resolve_codecs,
)
from splitdataloader.errors import (
    CodecConfigError,
    DecodeError,
    KeyUnavailableError,
    MissingPluginError,
)
from splitdataloader.hookspecs import RegisterCodec, RegisterKeyProvider, hookimpl

SECRET = bytes(range(32))
CONTEXT = RecordContext("ds", 3)


class Suffix(Codec):
    """Appends its tag: the order of the tags shows the order the codecs ran in."""

    codec_id: ClassVar[str] = "tsuffix"
    kind: ClassVar[str] = "compression"

    def __init__(self, tag: str = "c") -> None:
        if not isinstance(tag, str) or not tag:
            raise CodecConfigError("tag must be a non-empty string")
        self.tag = tag

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "tag": self.tag}

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        return bytes(data) + self.tag.encode()

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        if not data.endswith(self.tag.encode()):
            raise DecodeError(f"missing tag {self.tag!r}")
        return data[: -len(self.tag)]


class Seal(Suffix):
    codec_id: ClassVar[str] = "tseal"
    kind: ClassVar[str] = "encryption"

    def __init__(self, tag: str = "E", key_id: str = "k1") -> None:
        super().__init__(tag)
        self.key_id = key_id

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "tag": self.tag, "key_id": self.key_id}


class Exploding(Suffix):
    codec_id: ClassVar[str] = "texploding"

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        raise ValueError(f"cannot decode {data!r}")


class Picky(Suffix):
    codec_id: ClassVar[str] = "tpicky"

    def __init__(self, level: int = 1) -> None:
        super().__init__("p")
        if level > 9:
            raise ValueError("level too high")
        self.level = level

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "level": self.level}


class Counting(KeyProvider):
    provider_id: ClassVar[str] = "tcounting"
    calls: ClassVar[list[str]] = []

    def get_key(self, key_id: str) -> bytes:
        Counting.calls.append(key_id)
        if key_id != "k1":
            raise KeyUnavailableError(f"tcounting has no {key_id!r}")
        return SECRET


class Other(KeyProvider):
    provider_id: ClassVar[str] = "tother"

    def __init__(self, token: str = "") -> None:
        self.token = token

    def get_key(self, key_id: str) -> bytes:
        return b"o" * 32


class _TestCodecs:
    @hookimpl
    def splitdataloader_register_codecs(self, register: RegisterCodec) -> None:
        for codec in (Suffix, Seal, Exploding, Picky):
            register(codec)

    @hookimpl
    def splitdataloader_register_key_providers(self, register: RegisterKeyProvider) -> None:
        register(Counting)
        register(Other)


@pytest.fixture(autouse=True)
def test_codecs() -> Iterator[None]:
    plugins.register_plugin(_TestCodecs(), "test-codecs")
    yield
    plugins.unregister_plugin("test-codecs")


# -- chain order


def test_compression_before_encryption_is_accepted() -> None:
    pipeline = CodecPipeline([Suffix("a"), Suffix("b"), Seal("E"), Seal("F")])
    assert pipeline.encode(b"x", CONTEXT) == b"xabEF"
    assert pipeline.decode(b"xabEF", CONTEXT) == b"x"


@pytest.mark.parametrize(
    "chain",
    [[Seal(), Suffix()], [Suffix(), Seal(), Suffix("z")], [Seal(), Seal("F"), Suffix()]],
)
def test_compression_after_encryption_is_refused(chain: list[Codec]) -> None:
    with pytest.raises(CodecConfigError, match="'tsuffix' comes after encryption codec 'tseal'"):
        CodecPipeline(chain)
    with pytest.raises(CodecConfigError):
        resolve_codecs(chain)


def test_chain_items_must_be_codecs_of_a_known_kind() -> None:
    with pytest.raises(CodecConfigError, match="not str"):
        CodecPipeline(["tsuffix"])  # type: ignore[list-item]

    class Odd(Suffix):
        kind: ClassVar[str] = "filter"

    with pytest.raises(CodecConfigError, match="kind 'filter'"):
        CodecPipeline([Odd()])


def test_identity_pipeline() -> None:
    pipeline = CodecPipeline([])
    assert pipeline.identity
    assert len(pipeline) == 0
    encoded = pipeline.encode(memoryview(b"abc"), CONTEXT)
    assert type(encoded) is bytes
    assert encoded == b"abc"
    assert pipeline.decode(b"abc", CONTEXT) == b"abc"
    assert pipeline.configs() == []
    assert not CodecPipeline([Suffix()]).identity


def test_pipeline_pickles_and_compares() -> None:
    pipeline = CodecPipeline([Suffix("a"), Seal()])
    clone = pickle.loads(pickle.dumps(pipeline))
    assert clone == pipeline
    assert clone.decode(pipeline.encode(b"r", CONTEXT), CONTEXT) == b"r"
    assert clone != CodecPipeline([Suffix("b"), Seal()])


# -- configs


def test_configs_round_trip_through_the_registry() -> None:
    pipeline = CodecPipeline([Suffix("a"), Seal("E", key_id="main")])
    configs = pipeline.configs()
    assert configs == [
        {"id": "tsuffix", "tag": "a"},
        {"id": "tseal", "tag": "E", "key_id": "main"},
    ]
    rebuilt = CodecPipeline.from_configs(configs, CodecEnvironment("ds"))
    assert rebuilt == pipeline


@pytest.mark.parametrize(
    ("configs", "error", "match"),
    [
        ([{"tag": "a"}], CodecConfigError, "has no string 'id'"),
        (["tsuffix"], CodecConfigError, "is not an object"),
        ({"id": "tsuffix"}, CodecConfigError, "must be a list"),
        ([{"id": "tsuffix", "tag": 5}], CodecConfigError, "tag must be"),
        ([{"id": "tsuffix", "colour": "red"}], CodecConfigError, "colour"),
        ([{"id": "tnot-installed"}], MissingPluginError, "codec 'tnot-installed'"),
        ([{"id": "tseal"}, {"id": "tsuffix"}], CodecConfigError, "comes after"),
    ],
)
def test_from_configs_errors(configs: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CodecPipeline.from_configs(configs, CodecEnvironment("ds"))


def test_configs_must_be_json_with_their_id() -> None:
    class NotJson(Suffix):
        def get_config(self) -> dict[str, Any]:
            return {"id": self.codec_id, "tag": b"bytes"}

    class WrongId(Suffix):
        def get_config(self) -> dict[str, Any]:
            return {"id": "something-else"}

    with pytest.raises(CodecConfigError, match="not JSON"):
        CodecPipeline([NotJson()]).configs()
    with pytest.raises(CodecConfigError, match="'id' is the codec id"):
        CodecPipeline([WrongId()]).configs()


def test_default_from_config_checks_the_id_and_the_options() -> None:
    env = CodecEnvironment("ds")
    assert Suffix.from_config({"id": "tsuffix", "tag": "q"}, env) == Suffix("q")
    with pytest.raises(CodecConfigError, match="id 'tseal' was given to codec 'tsuffix'"):
        Suffix.from_config({"id": "tseal"}, env)
    with pytest.raises(CodecConfigError, match="invalid options for codec 'tsuffix'"):
        Suffix.from_config({"id": "tsuffix", "nope": 1}, env)


def test_codec_repr_and_equality() -> None:
    assert repr(Seal("E", key_id="main")) == "Seal(tag='E', key_id='main')"
    assert Suffix("a") == Suffix("a")
    assert Suffix("a") != Suffix("b")
    assert Suffix("a") != Seal("a")
    assert hash(Suffix("a")) == hash(Suffix("a"))


# -- resolve_codecs


def test_resolve_codecs_accepts_ids_configs_and_objects() -> None:
    seal = Seal("S")
    codecs = resolve_codecs(["tsuffix", {"id": "tsuffix", "tag": "z"}, seal])
    assert codecs == [Suffix("c"), Suffix("z"), seal]
    assert codecs[2] is seal
    assert resolve_codecs("tsuffix") == [Suffix()]
    assert resolve_codecs([]) == []


@pytest.mark.parametrize(
    ("specs", "error", "match"),
    [
        ([{"id": "tpicky", "level": 99}], CodecConfigError, "ValueError: level too high"),
        ([{"id": "tpicky", "levle": 3}], CodecConfigError, "levle"),
        ([{"level": 3}], CodecConfigError, r"keys \['level'\] has no string 'id'"),
        ([3], CodecConfigError, "not int"),
        (7, CodecConfigError, "not int"),
        (["tmissing"], MissingPluginError, "codec 'tmissing'"),
        (["tseal", "tsuffix"], CodecConfigError, "comes after"),
    ],
)
def test_resolve_codecs_errors(specs: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_codecs(specs)


# -- decode error mapping


def test_foreign_decode_errors_become_decode_errors_without_their_message() -> None:
    pipeline = CodecPipeline([Exploding()])
    with pytest.raises(DecodeError) as caught:
        pipeline.decode(b"private record bytes", RecordContext("ds", 41))
    err = caught.value
    assert err.record == 41
    assert "'texploding'" in str(err)
    assert "record 41" in str(err)
    assert "private record bytes" not in str(err)
    assert isinstance(err.__cause__, ValueError)


def test_decode_errors_get_the_record_number() -> None:
    with pytest.raises(DecodeError) as caught:
        CodecPipeline([Suffix()]).decode(b"untagged", RecordContext("ds", 12))
    assert caught.value.record == 12


# -- environment


def test_in_memory_environment_stores_resources_under_meta() -> None:
    store: dict[str, bytes] = {}
    env = CodecEnvironment.in_memory("ds", resources=store)
    assert env.write_resource is not None
    name = env.write_resource("dict.zstd", b"one")
    assert name == "meta/dict.zstd"
    assert env.write_resource("dict.zstd", b"one") == name
    assert env.write_resource("dict.zstd", b"two") == "meta/dict.zstd-1"
    assert env.read_resource(name) == b"one"
    assert store == {"meta/dict.zstd": b"one", "meta/dict.zstd-1": b"two"}
    with pytest.raises(FileNotFoundError):
        env.read_resource("meta/absent")
    with pytest.raises(FileNotFoundError):
        CodecEnvironment("ds").read_resource("meta/anything")
    assert CodecEnvironment("ds").write_resource is None


# -- keys


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), repr(secret), secret.decode("latin-1")]


def test_key_ring_given_keys_win_and_are_never_shown() -> None:
    ring = KeyRing({"k1": SECRET}, providers=[Other()])
    assert ring.get("k1") == SECRET
    assert ring.get("k1", provider="tother") == SECRET
    assert ring.key_ids() == ["k1"]
    shown = repr(ring)
    assert shown == "KeyRing(key_ids=['k1'], providers=['tother'])"
    for form in _forms(SECRET):
        assert form not in shown


def test_key_ring_asks_providers_in_order_and_caches() -> None:
    Counting.calls.clear()
    ring = KeyRing(providers=[Counting(), Other()])
    assert ring.get("k1") == SECRET
    assert ring.get("k1") == SECRET
    assert Counting.calls == ["k1"]
    assert ring.get("k2") == b"o" * 32
    assert ring.get("k2", provider="tother") == b"o" * 32


def test_key_ring_makes_a_default_provider_named_by_the_dataset() -> None:
    Counting.calls.clear()
    ring = KeyRing()
    assert ring.get("k1", provider="tcounting") == SECRET
    assert Counting.calls == ["k1"]
    with pytest.raises(MissingPluginError, match="key provider 'tkms'"):
        ring.get("k1", provider="tkms")


def test_key_unavailable_names_the_key_id_and_the_providers_only() -> None:
    ring = KeyRing({"other": SECRET}, providers=[Counting()])
    with pytest.raises(KeyUnavailableError) as caught:
        ring.get("k9")
    message = str(caught.value)
    assert "'k9'" in message
    assert "tcounting" in message
    for form in _forms(SECRET):
        assert form not in message
    assert isinstance(caught.value, PermissionError)
    with pytest.raises(KeyUnavailableError, match="no key provider is configured"):
        KeyRing().get("k1")


def test_key_ring_rejects_bad_keys_without_showing_them() -> None:
    with pytest.raises(KeyUnavailableError, match="must be bytes, not str") as caught:
        KeyRing({"k1": "not-bytes-secret"})  # type: ignore[dict-item]
    assert "not-bytes-secret" not in str(caught.value)
    with pytest.raises(KeyUnavailableError, match="KeyProvider instances"):
        KeyRing(providers=["env"])  # type: ignore[list-item]

    class Bad(KeyProvider):
        provider_id: ClassVar[str] = "tbad"

        def get_key(self, key_id: str) -> bytes:
            return "text-key"  # type: ignore[return-value]

    with pytest.raises(KeyUnavailableError, match="returned str"):
        KeyRing(providers=[Bad()]).get("k")


def test_key_provider_repr_hides_options_and_base_takes_none() -> None:
    assert repr(Other(token="hunter2-token")) == "Other()"
    with pytest.raises(CodecConfigError, match="takes no options"):
        Counting(path="/x")
