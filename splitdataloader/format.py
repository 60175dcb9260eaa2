"""On-disk format version 2: the manifest and part manifests, as pure code.

Owns the file and folder names (see ``docs/format.md``), the JSON schema of the manifest
and of part manifests with the validation of everything read from storage, their
serialisation with their own checksum, and the round-robin layout arithmetic that maps a
record to its bin. The binary encodings of segments, frames and index parts live in
:mod:`splitdataloader.byte_layout`. It performs no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .byte_layout import (
    FRAME_HEADER,
    INDEX_ENTRY,  # noqa: F401 - re-exported: the test suite imports it from here
    SEGMENT_HEADER,
    check_index_header,  # noqa: F401 - re-exported: the test suite imports it from here
    index_part_size,
)
from .checksums import SUPPORTED_CHECKSUMS
from .errors import DatasetFormatError, UnsafeDatasetError, UnsupportedFormatError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "splitdataloader"
FORMAT_VERSION = 2
DATA_DIR = "data"
INDEX_DIR = "index"
META_DIR = "meta"
PARTS_DIR = "parts"
PART_FORMAT_NAME = "splitdataloader-part"

#: A manifest larger than this is rejected before parsing.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: Upper bound for any declared count or size (2**62): keeps arithmetic exact.
MAX_DECLARED = 1 << 62
#: Upper bound on bins per commit.
MAX_BINS = 1 << 20

#: Top-level manifest key holding the manifest's own checksum.
MANIFEST_CHECKSUM_KEY = "manifest_checksum"
#: The format's own top-level manifest keys; any other key is the writer's free metadata.
MANIFEST_KEYS = frozenset(
    {
        "format",
        "format_version",
        "dataset_id",
        "generation",
        "checksum",
        "codecs",
        "resources",
        "records",
        "bins",
        "commits",
        MANIFEST_CHECKSUM_KEY,
    }
)
_CHECKSUM_PREFIX = "xxh3_64:"
_CHECKSUM_PLACEHOLDER = "0" * 16
_MANIFEST_CHECKSUM = re.compile(r"xxh3_64:([0-9a-f]{16})")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
_SESSION = re.compile(r"[0-9a-f]{8,64}")
_PART_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class SegmentRef:
    """One immutable data file of a commit, holding frames of a single bin."""

    name: str
    bin: int
    size: int
    records: int


@dataclass(frozen=True)
class RoundRobinLayout:
    """Record ``j`` of a commit goes to bin ``order[(j + start) % bins]``."""

    bins: int
    start: int = 0
    order: tuple[int, ...] | None = None

    def slot_counts(self, records: int) -> NDArray[Any]:
        """Records per slot (slot ``t`` feeds bin ``order[t]``) for a commit of ``records``."""
        slots = np.arange(self.bins, dtype=np.int64)
        total = self.start + records - slots + self.bins - 1
        return total // self.bins - (slots < self.start)

    def bin_counts(self, records: int) -> NDArray[Any]:
        """Records per bin, indexed by bin id."""
        per_slot = self.slot_counts(records)
        if self.order is None:
            return per_slot
        per_bin = np.zeros(self.bins, dtype=np.int64)
        per_bin[np.asarray(self.order, dtype=np.int64)] = per_slot
        return per_bin

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "round_robin",
            "start": self.start,
            "order": None if self.order is None else list(self.order),
        }


@dataclass(frozen=True)
class IndexRef:
    """The index part of a commit: a header and one fixed-width entry per record."""

    name: str
    size: int


@dataclass(frozen=True)
class Commit:
    """One atomic write: its records, layout, index part and segments."""

    generation: int
    session: str
    records: int
    layout: RoundRobinLayout
    index: IndexRef
    segments: tuple[SegmentRef, ...]
    created: str = ""
    #: The id of the part this commit was written as (see :class:`PartManifest`), if any.
    part: str | None = None

    @property
    def bins(self) -> int:
        return self.layout.bins

    def files(self) -> list[str]:
        """The index part and the segments, by name."""
        return [self.index.name, *(segment.name for segment in self.segments)]


@dataclass(frozen=True)
class Manifest:
    """The commit point of a dataset: everything a reader may trust."""

    dataset_id: str
    generation: int
    checksum: str
    records: int
    bins: int
    commits: tuple[Commit, ...] = ()
    codecs: tuple[dict[str, Any], ...] = ()
    resources: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[str]:
        """Every file name the manifest references (resources, index parts, segments)."""
        names: list[str] = list(self.resources)
        for commit in self.commits:
            names.extend(commit.files())
        return names


@dataclass(frozen=True)
class PartManifest:
    """A part of a dataset, written on its own and waiting to be joined (``parts/<id>.json``).

    It holds what a commit of the dataset's manifest holds, plus what the join checks:
    the settings the part was written with, and the dataset it was written for.
    """

    part: str
    #: The ``dataset_id`` of the dataset the part was written into; ``None`` when there
    #: was no dataset yet.
    dataset_id: str | None
    checksum: str
    bins: int
    codecs: tuple[dict[str, Any], ...] = ()
    #: Codec files this part's writer created under ``meta/``.
    resources: tuple[str, ...] = ()
    #: The part's records as a commit; ``None`` for a part without records.
    commit: Commit | None = None
    created: str = ""

    @property
    def records(self) -> int:
        return self.commit.records if self.commit is not None else 0

    def files(self) -> list[str]:
        """Every file the part references (its resources, index part and segments)."""
        return list(self.resources) + (self.commit.files() if self.commit is not None else [])


def check_part_id(part_id: object, argument: str = "part_id") -> str:
    """``part_id`` if it is a valid part id, else :class:`ValueError` naming ``argument``.

    A part id is 1 to 128 characters out of ``A-Z a-z 0-9 _ . -``, not starting with
    ``.`` or ``-``: it is used as a file name.
    """
    if not isinstance(part_id, str) or not _PART_ID.fullmatch(part_id):
        raise ValueError(
            f"{argument} must be 1 to 128 characters out of A-Z, a-z, 0-9, '_', '.' and '-', "
            f"not starting with '.' or '-'; got {part_id!r}"
        )
    return part_id


def part_manifest_name(part_id: str) -> str:
    """The name, relative to the dataset root, of the manifest of part ``part_id``."""
    return f"{PARTS_DIR}/{part_id}.json"


# ---------------------------------------------------------------- manifest JSON


def dump_manifest(manifest: Manifest) -> bytes:
    """Serialise a manifest to UTF-8 JSON bytes."""
    document: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dataset_id": manifest.dataset_id,
        "generation": manifest.generation,
        "checksum": manifest.checksum,
        "codecs": list(manifest.codecs),
        "resources": list(manifest.resources),
        "records": manifest.records,
        "bins": manifest.bins,
        "commits": [_commit_document(commit) for commit in manifest.commits],
    }
    document.update(manifest.extra)
    return _sealed(document)


def _sealed(document: dict[str, Any]) -> bytes:
    """``document`` as JSON bytes, ending with its own checksum (``manifest_checksum``)."""
    # The checksum goes last, as a placeholder first: it covers every other byte.
    document.pop(MANIFEST_CHECKSUM_KEY, None)
    document[MANIFEST_CHECKSUM_KEY] = _CHECKSUM_PREFIX + _CHECKSUM_PLACEHOLDER
    data = json.dumps(document, indent=1, sort_keys=False).encode("utf-8")
    at = data.rindex((_CHECKSUM_PREFIX + _CHECKSUM_PLACEHOLDER).encode()) + len(_CHECKSUM_PREFIX)
    digest = _manifest_digest(data).encode()
    return data[:at] + digest + data[at + len(digest) :]


def _manifest_digest(data: bytes) -> str:
    import xxhash  # noqa: PLC0415 - imported on first use, like the record checksums

    return f"{xxhash.xxh3_64_intdigest(data):016x}"


def check_manifest_checksum(data: bytes, document: dict[str, Any], path: str) -> None:
    """Check the manifest's own checksum (docs/format.md §2), when it has one.

    The value is ``"xxh3_64:"`` and 16 lowercase hexadecimal digits: the XXH3-64 of the
    manifest's bytes with those 16 digits replaced by ``0``. It must appear once, as is,
    in the bytes. Manifests written before the checksum existed have none.
    """
    value = document.get(MANIFEST_CHECKSUM_KEY)
    if value is None:
        return
    match = _MANIFEST_CHECKSUM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise DatasetFormatError(
            f"manifest {path}: {MANIFEST_CHECKSUM_KEY} {value!r} is not "
            f"{_CHECKSUM_PREFIX!r} and 16 hexadecimal digits",
            path=path,
        )
    needle = value.encode("ascii")
    at = data.find(needle)
    if at < 0 or data.find(needle, at + 1) >= 0:
        raise DatasetFormatError(
            f"manifest {path}: {MANIFEST_CHECKSUM_KEY} must appear once, unescaped", path=path
        )
    digits = at + len(_CHECKSUM_PREFIX)
    blanked = data[:digits] + _CHECKSUM_PLACEHOLDER.encode() + data[digits + 16 :]
    if _manifest_digest(blanked) != match.group(1):
        raise DatasetFormatError(
            f"manifest {path} is damaged: its bytes do not match its checksum {value}",
            path=path,
        )


def _commit_document(commit: Commit) -> dict[str, Any]:
    document: dict[str, Any] = {
        "generation": commit.generation,
        "session": commit.session,
        "created": commit.created,
        "records": commit.records,
        "bins": commit.bins,
        "layout": commit.layout.to_json(),
        "index": {"name": commit.index.name, "size": commit.index.size},
        "segments": [
            {"name": s.name, "bin": s.bin, "size": s.size, "records": s.records}
            for s in commit.segments
        ],
    }
    if commit.part is not None:
        document["part"] = commit.part
    return document


def dump_part(part: PartManifest) -> bytes:
    """Serialise a part manifest to UTF-8 JSON bytes."""
    document: dict[str, Any] = {
        "format": PART_FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "part": part.part,
        "dataset_id": part.dataset_id,
        "created": part.created,
        "checksum": part.checksum,
        "codecs": list(part.codecs),
        "resources": list(part.resources),
        "bins": part.bins,
        "records": part.records,
        "commit": None if part.commit is None else _commit_document(part.commit),
    }
    return _sealed(document)


def parse_part(data: bytes, path: str, part_id: str) -> PartManifest:
    """Parse and validate the manifest of part ``part_id``, read from ``path``.

    The same rules as for a dataset's manifest apply to the commit it holds (names under
    ``data/`` and ``index/``, sizes, per-bin counts).

    Raises
    ------
    UnsupportedFormatError
        If the format name or version is not one this release reads.
    UnsafeDatasetError
        If a file name escapes the dataset root or a size is out of bounds.
    DatasetFormatError
        For any other inconsistency, including a part id that differs from ``part_id``.
    """
    document = _load_document(data, path, "part manifest", PART_FORMAT_NAME)
    part = _ManifestParser(path, "part manifest").part(document, part_id)
    check_manifest_checksum(data, document, path)
    return part


def _load_document(data: bytes, path: str, what: str, format_name: str) -> dict[str, Any]:
    """The JSON object of a ``what`` of format ``format_name``, size, syntax, format name
    and version checked."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UnsafeDatasetError(
            f"{what} {path} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit",
            path=path,
        )
    try:
        document = json.loads(data.decode("utf-8"))
    # ValueError: also an integer past the interpreter's digit limit (a JSON bomb).
    except (ValueError, RecursionError) as err:
        raise DatasetFormatError(f"{what} {path} is not valid JSON: {err}", path=path) from err
    if not isinstance(document, dict):
        raise DatasetFormatError(f"{what} {path} is not a JSON object", path=path)
    if document.get("format") != format_name:
        raise UnsupportedFormatError(
            f"{path} is not a splitdataloader {what} (format={document.get('format')!r})",
            path=path,
        )
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{path} has format version {version!r}; this release reads version "
            f"{FORMAT_VERSION}: upgrade splitdataloader",
            path=path,
        )
    return document


def parse_manifest(data: bytes, path: str) -> Manifest:
    """Parse and validate manifest bytes read from ``path``.

    Raises
    ------
    UnsupportedFormatError
        If the format name or version is not one this release reads.
    UnsafeDatasetError
        If a file name escapes the dataset root or a size is out of bounds.
    DatasetFormatError
        For any other inconsistency.
    """
    document = _load_document(data, path, "manifest", FORMAT_NAME)
    manifest = _ManifestParser(path).parse(document)
    # Checked after the structure, so that each malformed field is named as such.
    check_manifest_checksum(data, document, path)
    return manifest


class _ManifestParser:
    def __init__(self, path: str, what: str = "manifest") -> None:
        self.path = path
        self.what = what

    def fail(self, message: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.what} {self.path}: {message}", path=self.path)

    def integer(self, value: object, what: str, low: int = 0, high: int = MAX_DECLARED) -> int:
        if type(value) is not int:
            raise self.fail(f"{what} must be an integer, not {type(value).__name__}")
        if not low <= value <= high:
            raise UnsafeDatasetError(
                f"{self.what} {self.path}: {what}={value} is outside [{low}, {high}]",
                path=self.path,
            )
        return value

    def string(self, value: object, what: str) -> str:
        if not isinstance(value, str) or len(value) > 4096:
            raise self.fail(f"{what} must be a string")
        return value

    def name(self, value: object, what: str, directory: str) -> str:
        text = self.string(value, what)
        if not _SAFE_NAME.fullmatch(text) or ".." in text.split("/"):
            raise UnsafeDatasetError(
                f"{self.what} {self.path}: {what} {text!r} is not a plain relative file name",
                path=self.path,
            )
        if not text.startswith(directory + "/"):
            raise UnsafeDatasetError(
                f"{self.what} {self.path}: {what} {text!r} must lie under {directory}/",
                path=self.path,
            )
        return text

    def mapping(self, value: object, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be an object")
        return value

    def listing(self, value: object, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{what} must be a list")
        return value

    def checksum(self, document: dict[str, Any]) -> str:
        checksum = document.get("checksum")
        if checksum not in SUPPORTED_CHECKSUMS:
            raise UnsupportedFormatError(
                f"{self.what} {self.path}: unknown checksum algorithm {checksum!r}",
                path=self.path,
            )
        return str(checksum)

    def codecs(self, document: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        return tuple(
            self.codec(self.mapping(c, f"codecs[{k}]"), k)
            for k, c in enumerate(self.listing(document.get("codecs", []), "codecs"))
        )

    def resources(self, document: dict[str, Any]) -> tuple[str, ...]:
        return tuple(
            self.name(r, f"resources[{k}]", META_DIR)
            for k, r in enumerate(self.listing(document.get("resources", []), "resources"))
        )

    def parse(self, document: dict[str, Any]) -> Manifest:
        checksum = self.checksum(document)
        codecs = self.codecs(document)
        resources = self.resources(document)
        commits = tuple(
            self.commit(self.mapping(entry, f"commits[{k}]"), k)
            for k, entry in enumerate(self.listing(document.get("commits"), "commits"))
        )
        records = self.integer(document.get("records"), "records")
        if records != sum(commit.records for commit in commits):
            raise self.fail(f"records={records} differs from the sum over its commits")
        bins = self.integer(document.get("bins"), "bins", 1, MAX_BINS)
        if any(commit.bins > bins for commit in commits):
            raise self.fail("a commit has more bins than the dataset")
        return Manifest(
            dataset_id=self.string(document.get("dataset_id"), "dataset_id"),
            generation=self.integer(document.get("generation"), "generation"),
            checksum=checksum,
            records=records,
            bins=bins,
            commits=commits,
            codecs=codecs,
            resources=resources,
            extra={k: v for k, v in document.items() if k not in MANIFEST_KEYS},
        )

    def part(self, document: dict[str, Any], part_id: str) -> PartManifest:
        if document.get("part") != part_id:
            raise self.fail(f"names part {document.get('part')!r}, not {part_id!r}")
        dataset_id = document.get("dataset_id")
        if dataset_id is not None:
            dataset_id = self.string(dataset_id, "dataset_id")
        bins = self.integer(document.get("bins"), "bins", 1, MAX_BINS)
        entry = document.get("commit")
        commit = None if entry is None else self.commit(self.mapping(entry, "commit"), None)
        if commit is not None and (commit.bins != bins or commit.part != part_id):
            raise self.fail("its commit differs from the part in bins or part id")
        records = self.integer(document.get("records"), "records")
        if records != (commit.records if commit is not None else 0):
            raise self.fail(f"records={records} differs from its commit's")
        return PartManifest(
            part=part_id,
            dataset_id=dataset_id,
            checksum=self.checksum(document),
            bins=bins,
            codecs=self.codecs(document),
            resources=self.resources(document),
            commit=commit,
            created=self.string(document.get("created", ""), "created"),
        )

    def codec(self, entry: dict[str, Any], k: int) -> dict[str, Any]:
        codec_id = entry.get("id")
        if not isinstance(codec_id, str) or not codec_id:
            raise self.fail(f"codecs[{k}] has no string id")
        return entry

    def commit(self, entry: dict[str, Any], k: int | None) -> Commit:
        where = "commit" if k is None else f"commits[{k}]"
        records = self.integer(entry.get("records"), f"{where}.records")
        bins = self.integer(entry.get("bins"), f"{where}.bins", 1, MAX_BINS)
        layout = self.layout(self.mapping(entry.get("layout"), f"{where}.layout"), bins, where)
        index = self.mapping(entry.get("index"), f"{where}.index")
        index_ref = IndexRef(
            name=self.name(index.get("name"), f"{where}.index.name", INDEX_DIR),
            size=self.integer(index.get("size"), f"{where}.index.size"),
        )
        if index_ref.size != index_part_size(records):
            raise self.fail(f"{where}.index.size does not match {records} records")
        segments = tuple(
            self.segment(self.mapping(s, f"{where}.segments[{n}]"), bins, f"{where}.segments[{n}]")
            for n, s in enumerate(self.listing(entry.get("segments"), f"{where}.segments"))
        )
        per_bin = np.zeros(bins, dtype=np.int64)
        for segment in segments:
            per_bin[segment.bin] += segment.records
        if not np.array_equal(per_bin, layout.bin_counts(records)):
            raise self.fail(f"{where}: segment record counts do not match its layout")
        session = self.string(entry.get("session"), f"{where}.session")
        if not _SESSION.fullmatch(session):
            raise self.fail(f"{where}.session {session!r} is not a hexadecimal id")
        part = entry.get("part")
        if part is not None and (not isinstance(part, str) or not _PART_ID.fullmatch(part)):
            raise self.fail(f"{where}.part {part!r} is not a part id")
        return Commit(
            generation=self.integer(entry.get("generation"), f"{where}.generation"),
            session=session,
            records=records,
            layout=layout,
            index=index_ref,
            segments=segments,
            created=self.string(entry.get("created", ""), f"{where}.created"),
            part=part,
        )

    def layout(self, entry: dict[str, Any], bins: int, where: str) -> RoundRobinLayout:
        if entry.get("type") != "round_robin":
            raise UnsupportedFormatError(
                f"{self.what} {self.path}: {where}.layout type {entry.get('type')!r} is unknown",
                path=self.path,
            )
        start = self.integer(entry.get("start", 0), f"{where}.layout.start", 0, bins - 1)
        order = entry.get("order")
        if order is None:
            return RoundRobinLayout(bins=bins, start=start)
        values = [
            self.integer(v, f"{where}.layout.order[]", 0, bins - 1)
            for v in self.listing(order, f"{where}.layout.order")
        ]
        if sorted(values) != list(range(bins)):
            raise self.fail(f"{where}.layout.order is not a permutation of the bins")
        return RoundRobinLayout(bins=bins, start=start, order=tuple(values))

    def segment(self, entry: dict[str, Any], bins: int, where: str) -> SegmentRef:
        segment = SegmentRef(
            name=self.name(entry.get("name"), f"{where}.name", DATA_DIR),
            bin=self.integer(entry.get("bin"), f"{where}.bin", 0, bins - 1),
            size=self.integer(entry.get("size"), f"{where}.size", SEGMENT_HEADER.size),
            records=self.integer(entry.get("records"), f"{where}.records"),
        )
        minimum = SEGMENT_HEADER.size + FRAME_HEADER.size * segment.records
        if segment.size < minimum:
            raise self.fail(f"{where}.size is too small for {segment.records} records")
        return segment
