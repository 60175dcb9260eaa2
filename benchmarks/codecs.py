"""Per-record codec throughput and compression, against the bare libraries, on real text.

Corpora, all made from the Python standard library's own source files (a real corpus
that nobody here wrote), in sorted path order:

* ``files``: every ``.py`` file as one record;
* ``lines``: the same files split into lines (small records, about 37 bytes);
* ``1k`` and ``1m``: the same bytes as consecutive lines grouped into records of at least
  1 KiB and 1 MiB (the record sizes the performance targets name).

For each codec and chain, built through the plugin registry exactly as a dataset builds
them, the script reports the compression ratio (raw bytes / stored bytes), the ratio of
the same bytes compressed as whole segments (8 MiB of concatenated records per call,
same library and level, no dictionary: the practical limit of per-record compression),
and write (encode) and read (decode) throughput in records/s and MB/s of raw data. In the
same run it times the bare library loop over the same records (for example ``zstandard``
one-shot decompression, ``AESGCM.decrypt`` with the nonces and associated data prepared
outside the timed loop): the limit for the framework, whose per-record overhead is the
difference. Each decode result is checked against the input before a number is reported;
every number is the best of ``--repeat`` runs with the garbage collector off, the
chain's runs alternating with the bare loop's.

Usage::

    python benchmarks/codecs.py                 # all corpora, Markdown on stdout
    python benchmarks/codecs.py --quick         # every 10th file: a quick look
    python benchmarks/codecs.py --corpus lines --out results/codecs.md
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import sys
import sysconfig
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lz4.block
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from splitdataloader.codecs import (
    Codec,
    CodecEnvironment,
    CodecPipeline,
    KeyRing,
    RecordContext,
    resolve_codecs,
)

SEGMENT_BYTES = 8 << 20
DATASET_ID = "0123456789abcdef0123456789abcdef"
KEY_ID = "bench"
KEY = os.urandom(32)
CORPORA = ("files", "lines", "1k", "1m")


# -- corpora -------------------------------------------------------------------------------


def source_files(step: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return files[::step]


def grouped(lines: Sequence[bytes], size: int) -> list[bytes]:
    records, current, length = [], [], 0
    for line in lines:
        current.append(line)
        length += len(line)
        if length >= size:
            records.append(b"".join(current))
            current, length = [], 0
    if current:
        records.append(b"".join(current))
    return records


def make_corpus(name: str, files: Sequence[Path]) -> list[bytes]:
    texts = [f.read_bytes() for f in files]
    if name == "files":
        return texts
    lines = [line for text in texts for line in text.splitlines(keepends=True)]
    if name == "lines":
        return lines
    return grouped(lines, 1024 if name == "1k" else 1 << 20)


# -- what is measured ------------------------------------------------------------------------


@dataclass
class Case:
    """A codec chain (by specs, as a writer takes them) and its bare-library loops."""

    name: str
    specs: list[Any]
    #: The compression library's name for the whole-segment ratio, or None (aesgcm only).
    segment: str | None


CASES = [
    Case("zlib (6)", [{"id": "zlib", "level": 6}], "zlib"),
    Case("zstd (3)", [{"id": "zstd", "level": 3}], "zstd"),
    Case("zstd (3) + dictionary", [{"id": "zstd", "level": 3, "dictionary": True}], "zstd"),
    Case("lz4", [{"id": "lz4"}], "lz4"),
    Case("aesgcm", [{"id": "aesgcm", "key_id": KEY_ID}], None),
    Case(
        "zstd (3) → aesgcm",
        [{"id": "zstd", "level": 3}, {"id": "aesgcm", "key_id": KEY_ID}],
        "zstd",
    ),
    Case(
        "zstd (3) + dictionary → aesgcm",
        [{"id": "zstd", "level": 3, "dictionary": True}, {"id": "aesgcm", "key_id": KEY_ID}],
        "zstd",
    ),
    Case("lz4 → aesgcm", [{"id": "lz4"}, {"id": "aesgcm", "key_id": KEY_ID}], "lz4"),
]


def build(case: Case, records: Sequence[bytes]) -> tuple[CodecPipeline, CodecEnvironment]:
    """Resolve and prepare the chain as a writer does, then rebuild it as a reader does."""
    env = CodecEnvironment.in_memory(DATASET_ID, keys=KeyRing(keys={KEY_ID: KEY}))
    codecs = resolve_codecs(case.specs, env)
    stage: list[bytes] = list(records[: max(c.sample_size for c in codecs) or 0])
    prepared: list[Codec] = []
    for codec in codecs:
        ready = codec.prepare(stage, env)
        prepared.append(ready)
        stage = [ready.encode(r, RecordContext(DATASET_ID, i)) for i, r in enumerate(stage)]
    writer = CodecPipeline(prepared)
    return CodecPipeline.from_configs(writer.configs(), env), env


def segment_ratio(library: str, records: Sequence[bytes]) -> float:
    compress = segment_compressor(library)
    raw = stored = 0
    chunk: list[bytes] = []
    size = 0
    for record in [*records, None]:
        if record is not None:
            chunk.append(record)
            size += len(record)
        if size >= SEGMENT_BYTES or (record is None and chunk):
            data = b"".join(chunk)
            raw += len(data)
            stored += len(compress(data))
            chunk, size = [], 0
    return raw / stored


def segment_compressor(library: str) -> Callable[[bytes], bytes]:
    if library == "zlib":
        return lambda data: zlib.compress(data, 6)
    if library == "zstd":
        return zstandard.ZstdCompressor(level=3).compress
    return lz4.block.compress


def associated_data(key_id: str, dataset_id: str, record: int) -> bytes:
    """The aesgcm codec's associated data, written from its documented layout."""
    key, dataset = key_id.encode(), dataset_id.encode()
    return b"".join(
        (
            b"splitdataloader/aesgcm/1",
            len(key).to_bytes(2, "little"),
            key,
            len(dataset).to_bytes(2, "little"),
            dataset,
            record.to_bytes(8, "little"),
        )
    )


def bare_loops(
    pipeline: CodecPipeline,
    env: CodecEnvironment,
    records: Sequence[bytes],
    stored: Sequence[bytes],
) -> tuple[Callable[[], list[bytes]], Callable[[], list[bytes]]]:
    """The same work as ``pipeline`` done with the libraries directly: (encode, decode).

    What does not depend on the record's bytes (library objects and parameters, each
    record's associated data, splitting the nonce off each stored record) is prepared
    outside the timed loops, so these are strict limits.
    """
    compress: Callable[[bytes], bytes] | None = None
    decompress: Callable[[bytes], bytes] | None = None
    aead = None
    for codec in pipeline.codecs:
        config = codec.get_config()
        if codec.codec_id == "zlib":
            compress = functools.partial(zlib.compress, level=config["level"])
            decompress = zlib.decompress
        elif codec.codec_id == "zstd":
            params = zstandard.ZstdCompressionParameters.from_level(
                config["level"],
                format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                write_content_size=1,
                write_checksum=0,
                write_dict_id=0,
            )
            zdict = None
            if "dictionary_name" in config:
                zdict = zstandard.ZstdCompressionDict(env.read_resource(config["dictionary_name"]))
                zdict.precompute_compress(compression_params=params)
            compress = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params).compress
            decompress = zstandard.ZstdDecompressor(
                dict_data=zdict, format=zstandard.FORMAT_ZSTD1_MAGICLESS
            ).decompress
        elif codec.codec_id == "lz4":
            compress, decompress = lz4.block.compress, lz4.block.decompress
        elif codec.codec_id == "aesgcm":
            aead = AESGCM(KEY)
        else:  # pragma: no cover - every first-party codec is above
            raise ValueError(codec.codec_id)
    if aead is None:
        if compress is None or decompress is None:  # pragma: no cover - empty chain
            raise ValueError("an empty chain has no library to compare with")
        c, d = compress, decompress
        return (lambda: [c(r) for r in records]), (lambda: [d(s) for s in stored])
    aad = [associated_data(KEY_ID, DATASET_ID, i) for i in range(len(records))]
    split = [(s[:12], s[12:]) for s in stored]
    encrypt, decrypt = aead.encrypt, aead.decrypt
    nonce = os.urandom(12)
    if compress is None or decompress is None:
        return (
            lambda: [encrypt(nonce, r, a) for r, a in zip(records, aad)],
            lambda: [decrypt(n, s, a) for (n, s), a in zip(split, aad)],
        )
    c, d = compress, decompress
    return (
        lambda: [encrypt(nonce, c(r), a) for r, a in zip(records, aad)],
        lambda: [d(decrypt(n, s, a)) for (n, s), a in zip(split, aad)],
    )


def best_time(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = function()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best, result


@dataclass
class Row:
    corpus: str
    case: str
    records: int
    raw: int
    ratio: float
    segment: float | None
    write: float
    write_bare: float
    read: float
    read_bare: float


def measure(corpus: str, records: list[bytes], case: Case, repeat: int) -> Row:
    pipeline, env = build(case, records)

    def encode() -> list[bytes]:
        return [pipeline.encode(r, RecordContext(DATASET_ID, i)) for i, r in enumerate(records)]

    stored = encode()

    def decode() -> list[bytes]:
        return [pipeline.decode(s, RecordContext(DATASET_ID, i)) for i, s in enumerate(stored)]

    encode_bare, decode_bare = bare_loops(pipeline, env, records, stored)
    # Framework and bare loop alternate, so that a busy machine slows both alike.
    times = {"write": float("inf"), "write_bare": float("inf")}
    times.update(read=float("inf"), read_bare=float("inf"))
    for _ in range(repeat):
        for name, function in (
            ("write", encode),
            ("write_bare", encode_bare),
            ("read", decode),
            ("read_bare", decode_bare),
        ):
            seconds, result = best_time(function, 1)
            times[name] = min(times[name], seconds)
            if name.startswith("read") and result != records:
                raise AssertionError(f"{case.name}: {name} decoded something else")
    raw = sum(map(len, records))
    return Row(
        corpus=corpus,
        case=case.name,
        records=len(records),
        raw=raw,
        ratio=raw / sum(map(len, stored)),
        segment=segment_ratio(case.segment, records) if case.segment else None,
        **times,
    )


# -- report ------------------------------------------------------------------------------


def rate(count: float, seconds: float) -> str:
    value = count / seconds
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def table(rows: Sequence[Row]) -> str:
    head = (
        "| corpus | codec chain | ratio | segment ratio | per-record / segment "
        "| write rec/s | write MB/s | write / bare | read rec/s | read MB/s | read / bare |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        segment = f"{row.segment:.2f}" if row.segment else "n/a"
        share = f"{row.ratio / row.segment:.0%}" if row.segment else "n/a"
        lines.append(
            f"| {row.corpus} | {row.case} | {row.ratio:.2f} | {segment} | {share} "
            f"| {rate(row.records, row.write)} | {row.raw / row.write / 1e6:.0f} "
            f"| {row.write_bare / row.write:.0%} "
            f"| {rate(row.records, row.read)} | {row.raw / row.read / 1e6:.0f} "
            f"| {row.read_bare / row.read:.0%} |"
        )
    return "\n".join(lines)


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for name in ("zstandard", "lz4", "cryptography", "splitdataloader"):
        parts.append(f"{name} {version(name)}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs; " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every 10th source file only")
    parser.add_argument("--repeat", type=int, default=3, help="runs per number (best kept)")
    parser.add_argument("--corpus", choices=CORPORA, action="append", help="default: all")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    files = source_files(10 if args.quick else 1)
    rows = []
    for corpus in args.corpus or CORPORA:
        records = make_corpus(corpus, files)
        raw = sum(map(len, records))
        print(
            f"{corpus}: {len(records)} records, {raw / 1e6:.1f} MB, "
            f"{raw / len(records):.0f} B on average",
            file=sys.stderr,
        )
        for case in CASES:
            rows.append(measure(corpus, records, case, args.repeat))
            print(f"  {case.name} done", file=sys.stderr)
    report = "\n\n".join(
        [
            "## Codecs, per record",
            f"{versions()}. Corpus: {len(files)} source files of the Python standard "
            f"library. Command: `python benchmarks/codecs.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`.",
            "*ratio*: raw / stored bytes; *segment ratio*: the same bytes compressed 8 MiB "
            "at a time by the same library and level; *write / bare*, *read / bare*: "
            "throughput through the codec chain as a share of the bare library loop's.",
            table(rows),
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
