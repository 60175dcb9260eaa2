"""Shared parts of the reliability suite: reference datasets, what reading them must give,
and the judge that sorts every read into correct bytes, a specific error, or a failure.

The reliability trials (corruption, crashes, concurrency, hostile input, load) all check
the same property: a read returns exactly the bytes that were written, or raises a
:class:`~splitdataloader.errors.SplitDataError` that names a file of the dataset. Every
record is unique (a tag with its dataset and number), so a wrong record can never pass for
a right one. What a dataset must contain comes from the records as they were generated and
from the documented round-robin rule (:mod:`reference_model`), never from reading it back;
only the order of a *shuffled* bin-wise pass, which is seeded but not documented, is taken
from the undamaged dataset.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from reference_model import CommitModel, DatasetModel, to_fs

from splitdataloader import SplitDataLoader, SplitWriter
from splitdataloader.errors import SplitDataError

#: The seed of the shuffled bin-wise pass every read-out makes.
SHUFFLE_SEED = 11
#: Key of the encrypted reference dataset (test material, not a secret).
KEY = bytes(range(100, 132))


def tagged(name: str, number: int, size: int, rng: random.Random) -> bytes:
    """A unique record: ``name`` and ``number`` in clear, then ``size`` random bytes."""
    return b"%s:%06d:" % (name.encode(), number) + rng.randbytes(size)


def record_sizes(count: int, rng: random.Random, large_every: int = 0) -> list[int]:
    """Mostly small sizes (0..300 bytes); every ``large_every``-th one is about 70 KiB,
    which takes the large-record paths of the readers."""
    sizes = []
    for k in range(count):
        if large_every and k % large_every == large_every - 1:
            sizes.append(70_000 + rng.randrange(2_000))
        else:
            sizes.append(rng.randrange(300))
    return sizes


@dataclass
class Reference:
    """A dataset written for the trials, and everything reading it must give."""

    name: str
    url: str
    records: list[bytes]
    binwise: list[bytes]
    options: dict[str, Any] = field(default_factory=dict)
    legacy: bool = False
    #: The shuffled bin-wise order for :data:`SHUFFLE_SEED` (taken from the intact dataset).
    shuffled: list[bytes] = field(default_factory=list)

    def open(self, url: str | None = None, **extra: Any) -> SplitDataLoader:
        return SplitDataLoader(url or self.url, **{**self.options, **extra})


# ---------------------------------------------------------------- reference datasets


def write_v2(url: str, name: str, seed: int = 0) -> Reference:
    """Three commits of one writer (40, 42 and 12 records, the last with ~70 KiB records
    every third one) in 4 bins, with segments of at most 4 KiB: every bin has several
    segments, the first commit's bins hold equal counts and the third starts at bin 2."""
    rng = random.Random(seed)
    commits = []
    number = 0
    with SplitWriter(url, bins=4, max_segment_bytes=4096) as writer:
        for count, large in ((40, 0), (42, 0), (12, 3)):
            start = number % 4
            batch = [
                tagged(name, number + k, size, rng)
                for k, size in enumerate(record_sizes(count, rng, large))
            ]
            writer.write_many(batch)
            writer.commit()
            commits.append(CommitModel(tuple(batch), 4, start))
            number += count
    model = DatasetModel(commits)
    return _finish(Reference(name, url, model.records, model.binwise(4)))


def write_codec(url: str, name: str, codecs: list[Any], seed: int = 0, **options: Any) -> Reference:
    """One commit of 120 records in 3 bins through ``codecs``."""
    rng = random.Random(seed)
    records = [tagged(name, k, size, rng) for k, size in enumerate(record_sizes(120, rng))]
    with SplitWriter(url, bins=3, codecs=codecs, keys=options.get("keys")) as writer:
        writer.write_many(records)
    model = DatasetModel([CommitModel(tuple(records), 3)])
    return _finish(Reference(name, url, records, model.binwise(3), options=options))


def write_shuffled_crc32(url: str, name: str, seed: int = 0) -> Reference:
    """One commit of 30 records over a seeded permutation of 5 bins, with CRC-32 checksums.

    The bin-wise order is taken as a structure (each bin one slot's records in order), so
    the expected unshuffled order comes from the manifest's permutation, checked against
    the records' round-robin slots."""
    rng = random.Random(seed)
    records = [tagged(name, k, size, rng) for k, size in enumerate(record_sizes(30, rng))]
    with SplitWriter(url, bins=5, shuffle=True, seed=seed + 3, checksum="crc32") as writer:
        writer.write_many(records)
    with SplitDataLoader(url) as loader:
        assert loader.manifest is not None
        order = loader.manifest.commits[0].layout.order
    assert order is not None
    assert sorted(order) == list(range(5))
    per_bin: list[list[bytes]] = [[] for _ in range(5)]
    for j, record in enumerate(records):
        per_bin[order[j % 5]].append(record)
    binwise = [record for bin_records in per_bin for record in bin_records]
    return _finish(Reference(name, url, records, binwise))


def write_legacy(url: str, name: str, seed: int = 0, splits: int = 3) -> Reference:
    """A splitdataloader 0.0.1 dataset built from its documented layout (docs/format.md §8):
    u32 (bin, position, length) triplets in ``index.dat``, u32 size-prefixed packets."""
    rng = random.Random(seed)
    records = [tagged(name, k, size, rng) for k, size in enumerate(record_sizes(45, rng))]
    fs, root = to_fs(url)
    fs.makedirs(root, exist_ok=True)
    bins: dict[int, bytearray] = {b: bytearray() for b in range(splits)}
    index = bytearray()
    for k, data in enumerate(records):
        content = bins[k % splits]
        index += struct.pack("<III", k % splits, len(content), len(data))
        content += struct.pack("<I", len(data)) + data
    for bin_id, content in bins.items():
        fs.pipe_file(f"{root}/bin{bin_id:08d}.dat", bytes(content))
    fs.pipe_file(f"{root}/index.dat", bytes(index))
    binwise = [records[k] for b in range(splits) for k in range(b, len(records), splits)]
    return _finish(Reference(name, url, records, binwise, legacy=True))


def _finish(reference: Reference) -> Reference:
    with reference.open() as loader:
        assert [loader[i] for i in range(len(loader))] == reference.records
        assert list(loader.iterate_binwise()) == reference.binwise
        reference.shuffled = list(loader.iterate_binwise(shuffle=True, seed=SHUFFLE_SEED))
    assert sorted(reference.shuffled) == sorted(reference.records)
    return reference


#: The reference datasets by name: how to write each one at a URL.
WRITERS: dict[str, Callable[[str, str], Reference]] = {
    "v2": write_v2,
    "crc32-shuffled": write_shuffled_crc32,
    "zstd-dictionary": lambda url, name: write_codec(
        url, name, [{"id": "zstd", "dictionary": True, "dict_size": 4096}]
    ),
    "aesgcm": lambda url, name: write_codec(
        url, name, [{"id": "aesgcm", "key_id": "k1"}], keys={"k1": KEY}
    ),
    "legacy": write_legacy,
}


# ---------------------------------------------------------------- judging reads


@dataclass
class Tally:
    """What the reads of one or more trials gave."""

    #: Records (or whole passes) that came back exactly right.
    correct: int = 0
    #: Specific errors raised, by class name.
    caught: dict[str, int] = field(default_factory=dict)
    #: Property violations: wrong bytes, unspecific errors, errors naming no file.
    failures: list[str] = field(default_factory=list)

    def error(self, err: BaseException, context: str, dataset_url: str) -> None:
        problem = judge_error(err, dataset_url)
        if problem is None:
            name = type(err).__name__
            self.caught[name] = self.caught.get(name, 0) + 1
        else:
            self.failures.append(f"{context}: {problem}")

    def add(self, other: Tally) -> None:
        self.correct += other.correct
        for name, count in other.caught.items():
            self.caught[name] = self.caught.get(name, 0) + count
        self.failures.extend(other.failures)

    @property
    def errors(self) -> int:
        return sum(self.caught.values())


def judge_error(err: BaseException, dataset_url: str) -> str | None:
    """``None`` when ``err`` is a specific error naming a file of the dataset, else why not."""
    if not isinstance(err, SplitDataError):
        return f"unspecific {type(err).__name__}: {err}"
    if not err.path:
        return f"{type(err).__name__} names no file: {err}"
    if not err.path.startswith(dataset_url.rstrip("/")):
        return f"{type(err).__name__} names {err.path!r}, outside the dataset: {err}"
    if err.path not in str(err):
        return f"{type(err).__name__}'s message does not name {err.path!r}: {err}"
    return None


#: What a read of a record or a pass must give: the bytes, or ``None`` where only an
#: error may come (the files hold no valid record there).
Expected = list[bytes | None]


def compare_stream(
    stream: Iterator[bytes], expected: Expected, tally: Tally, context: str, url: str
) -> None:
    """Consume ``stream``: every item must be the expected one at its position; an error
    may end it early, and must end it where ``expected`` holds ``None``."""
    position = 0
    try:
        for item in stream:
            if position >= len(expected):
                tally.failures.append(f"{context}: an extra record after the end")
                return
            if item != expected[position]:
                tally.failures.append(f"{context}: wrong record at position {position}")
                return
            position += 1
    except Exception as err:
        tally.error(err, f"{context} at position {position}", url)
        return
    if position != len(expected):
        tally.failures.append(f"{context}: ended after {position} of {len(expected)} records")
        return
    tally.correct += 1


def compare_unordered(
    stream: Iterator[bytes], expected: Expected, tally: Tally, context: str, url: str
) -> None:
    """Like :func:`compare_stream` for a pass whose order is not known: every item must be
    an expected record not yet seen, and a pass that ends without an error must hold
    every expected record (so none may be ``None``)."""
    remaining: dict[bytes, int] = {}
    for record in expected:
        if record is not None:
            remaining[record] = remaining.get(record, 0) + 1
    seen = 0
    try:
        for item in stream:
            if remaining.get(item, 0) == 0:
                tally.failures.append(f"{context}: wrong record at position {seen}")
                return
            remaining[item] -= 1
            seen += 1
    except Exception as err:
        tally.error(err, f"{context} at position {seen}", url)
        return
    if seen != len(expected):
        tally.failures.append(f"{context}: ended after {seen} of {len(expected)} records")
        return
    tally.correct += 1


def read_out(
    reference: Reference,
    url: str,
    context: str,
    expected: tuple[Expected, Expected, Expected] | None = None,
    shuffled_known: bool = True,
    **loader_options: Any,
) -> Tally:
    """Open ``url`` (a copy of ``reference``, perhaps damaged) and read it every way.

    Random access record by record, a shuffled ``get_many`` of every record, index order,
    and bin-wise passes in order and shuffled: each record or pass that does not come back
    exactly right must end in a specific error naming a file. ``expected`` gives (records,
    bin-wise order, shuffled order) when they differ from the reference's; without
    ``shuffled_known``, the shuffled pass is only checked as a set (see
    :func:`compare_unordered`).
    """
    tally = Tally()
    records, binwise, shuffled = expected or (
        list[bytes | None](reference.records),
        list[bytes | None](reference.binwise),
        list[bytes | None](reference.shuffled),
    )
    try:
        loader = reference.open(url, **loader_options)
    except Exception as err:
        tally.error(err, f"{context}: open", url)
        return tally
    with loader:
        if len(loader) != len(records):
            tally.failures.append(f"{context}: len() is {len(loader)}, not {len(records)}")
            return tally
        for i, wanted in enumerate(records):
            try:
                got = loader[i]
            except Exception as err:
                tally.error(err, f"{context}: loader[{i}]", url)
                continue
            if got == wanted:
                tally.correct += 1
            else:
                tally.failures.append(f"{context}: loader[{i}] returned a wrong record")
        order = list(range(len(records)))
        random.Random(len(records)).shuffle(order)
        try:
            batch = loader.get_many(order)
        except Exception as err:
            tally.error(err, f"{context}: get_many", url)
        else:
            wrong = [i for i, got in zip(order, batch) if got != records[i]]
            if wrong or len(batch) != len(order):
                tally.failures.append(f"{context}: get_many returned wrong records {wrong[:5]}")
            else:
                tally.correct += 1
        compare_stream(iter(loader), records, tally, f"{context}: iter", url)
        compare_stream(_lazy(loader.iterate_binwise), binwise, tally, f"{context}: binwise", url)
        shuffled_pass = _lazy(lambda: loader.iterate_binwise(shuffle=True, seed=SHUFFLE_SEED))
        if not shuffled_known:
            compare_unordered(shuffled_pass, shuffled, tally, f"{context}: shuffled", url)
        else:
            compare_stream(shuffled_pass, shuffled, tally, f"{context}: shuffled", url)
    return tally


def _lazy(make: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
    """An iterator that calls ``make`` on first use, so that errors raised while setting
    up a pass are judged like errors raised during it."""
    yield from make()


# ---------------------------------------------------------------- copying datasets


def stored_names(url: str) -> list[str]:
    """Every file under ``url``, relative to it."""
    fs, root = to_fs(url)
    if not fs.exists(root):
        return []
    return sorted(path[len(root) + 1 :] for path in fs.find(root))


def copy_dataset(source: str, target: str) -> None:
    """Copy every file of the dataset at ``source`` to ``target`` (any two fsspec URLs)."""
    source_fs, source_root = to_fs(source)
    target_fs, target_root = to_fs(target)
    for name in stored_names(source):
        data = source_fs.cat_file(f"{source_root}/{name}")
        path = f"{target_root}/{name}"
        target_fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        target_fs.pipe_file(path, data)
