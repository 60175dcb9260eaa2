"""Datasets written through codec chains: every read path decodes, keys stay secret."""

from __future__ import annotations

import json
import os
import random

import pytest

from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader.errors import (
    ChecksumMismatchError,
    CodecConfigError,
    CorruptDataError,
    KeyUnavailableError,
    MissingPluginError,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def corpus(count: int = 300, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"import", b"return", b"self"]
    records = []
    for _ in range(count):
        line = b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 40)))
        records.append(line + os.urandom(rng.randrange(0, 8)))
    records.append(b"")
    records.append(os.urandom(300_000))  # one large record takes the large-record paths
    return records


def read_everything(loader: SplitDataLoader) -> list[bytes]:
    return [loader[i] for i in range(len(loader))]


CHAINS = [
    ["zlib"],
    ["zstd"],
    [{"id": "zstd", "level": 5, "dictionary": True}],
    ["lz4"],
    [{"id": "aesgcm", "key_id": "k1"}],
    ["zstd", {"id": "aesgcm", "key_id": "k1"}],
]


@pytest.mark.parametrize("chain", CHAINS, ids=json.dumps)
def test_every_read_path_decodes(dataset_url: str, chain: list[object]) -> None:
    records = corpus()
    write_split_data(dataset_url, records, splits=5, codecs=chain, keys={"k1": KEY})
    with SplitDataLoader(dataset_url, keys={"k1": KEY}) as loader:
        assert read_everything(loader) == records
        picks = [7, 0, len(records) - 1, 7, 3]
        assert loader.get_many(picks) == [records[i] for i in picks]
        in_order = [records[k] for b in range(5) for k in range(b, len(records), 5)]
        assert list(loader.iterate_binwise()) == in_order
        assert sorted(loader.iterate_binwise(shuffle=True, seed=3)) == sorted(records)


def test_append_keeps_the_chain_and_rejects_another(dataset_url: str) -> None:
    first, second = corpus(50, 1), corpus(60, 2)
    write_split_data(dataset_url, first, splits=3, codecs=["zstd"])
    write_split_data(dataset_url, second)  # codecs=None: the dataset's own chain
    with SplitDataLoader(dataset_url) as loader:
        assert read_everything(loader) == first + second
    with pytest.raises(CodecConfigError, match="zstd"):
        write_split_data(dataset_url, [b"x"], codecs=["lz4"])
    with SplitDataLoader(dataset_url) as loader:
        assert len(loader) == len(first) + len(second)


def test_invalid_option_fails_before_anything_is_written(dataset_url: str) -> None:
    with pytest.raises(CodecConfigError):
        SplitWriter(dataset_url, bins=2, codecs=[{"id": "zstd", "level": 99}])
    with pytest.raises(CodecConfigError):
        SplitWriter(dataset_url, bins=2, codecs=[{"id": "aesgcm", "key_id": "k"}, "zstd"])
    with pytest.raises(FileNotFoundError):
        SplitDataLoader(dataset_url)


def test_unknown_codec_in_a_manifest_names_it(dataset_root: str, dataset_url: str) -> None:
    write_split_data(dataset_url, [b"a", b"b"], splits=2, codecs=["zlib"])
    import fsspec  # noqa: PLC0415 - only this test edits a manifest

    fs, root = fsspec.core.url_to_fs(dataset_url)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    manifest["codecs"] = [{"id": "brotli-nonexistent"}]
    del manifest["manifest_checksum"]  # edited by hand: as if written without one
    fs.pipe_file(f"{root}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(MissingPluginError, match="brotli-nonexistent"):
        SplitDataLoader(dataset_url)


def test_wrong_or_missing_key_is_refused_and_never_shown(
    dataset_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = corpus(40)
    write_split_data(
        dataset_url, records, splits=2, codecs=[{"id": "aesgcm", "key_id": "k1"}], keys={"k1": KEY}
    )
    for name in list(os.environ):
        if name.startswith("SPLITDATALOADER_KEY"):
            monkeypatch.delenv(name)
    with pytest.raises(KeyUnavailableError) as missing:
        SplitDataLoader(dataset_url)[0]
    assert "k1" in str(missing.value)
    with pytest.raises(CorruptDataError) as wrong:
        SplitDataLoader(dataset_url, keys={"k1": OTHER_KEY})[0]
    assert "k1" in str(wrong.value)
    for error in (missing.value, wrong.value):
        assert KEY.hex() not in str(error)
        assert OTHER_KEY.hex() not in str(error)
    manifest_text = json.dumps(SplitDataLoader(dataset_url, keys={"k1": KEY}).manifest.codecs)
    assert KEY.hex() not in manifest_text
    assert "k1" in manifest_text


def test_flipped_ciphertext_names_the_record(dataset_root: str, dataset_url: str) -> None:
    records = [b"secret record %d" % i for i in range(20)]
    write_split_data(
        dataset_url, records, splits=1, codecs=[{"id": "aesgcm", "key_id": "k1"}], keys={"k1": KEY}
    )
    import fsspec  # noqa: PLC0415

    fs, root = fsspec.core.url_to_fs(dataset_url)
    (segment,) = fs.ls(f"{root}/data", detail=False)
    data = bytearray(fs.cat_file(segment))
    data[-3] ^= 0x10  # inside the last record's ciphertext
    fs.pipe_file(segment, bytes(data))
    loader = SplitDataLoader(dataset_url, keys={"k1": KEY})
    with pytest.raises(ChecksumMismatchError) as caught:
        loader[19]
    assert caught.value.record == 19
    unverified = SplitDataLoader(dataset_url, keys={"k1": KEY}, verify=False)
    with pytest.raises(CorruptDataError) as decrypt:
        unverified[19]
    assert "19" in str(decrypt.value)
    assert unverified[18] == records[18]


def test_random_access_with_codecs_is_one_ranged_read_per_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from splitdataloader.storage import Storage  # noqa: PLC0415 - only this test counts reads

    url = "memory://codec-ranged-reads"
    records = corpus(200)
    write_split_data(
        url, records, splits=4, codecs=["zstd", {"id": "aesgcm", "key_id": "k1"}], keys={"k1": KEY}
    )
    loader = SplitDataLoader(url, keys={"k1": KEY})
    assert loader[0] == records[0]  # reads the index header and its first page once
    calls: list[tuple[str, int, int]] = []
    original = Storage.read_range

    def counting(self: Storage, name: str, start: int, end: int) -> bytes:
        calls.append((name, start, end))
        return original(self, name, start, end)

    monkeypatch.setattr(Storage, "read_range", counting)
    picks = [150, 3, 77, 201, 9]
    assert [loader[i] for i in picks] == [records[i] for i in picks]
    assert len(calls) == len(picks)
    assert all(name.startswith("data/") for name, _, _ in calls)


def test_records_after_a_dictionary_trained_mid_call_are_encoded(dataset_url: str) -> None:
    # The sample fills up inside one write_many: what follows must go through the chain.
    records = [b"record %05d " % k + b"common text " * 16 for k in range(400)]
    write_split_data(
        dataset_url,
        records,
        splits=3,
        codecs=[{"id": "zstd", "dictionary": True, "sample_size": 50}],
    )
    with SplitDataLoader(dataset_url) as loader:
        assert read_everything(loader) == records
    import fsspec  # noqa: PLC0415 - only these tests look at raw files

    fs, root = fsspec.core.url_to_fs(dataset_url)
    stored = b"".join(fs.cat_file(path) for path in fs.find(f"{root}/data"))
    assert b"common text common text" not in stored
