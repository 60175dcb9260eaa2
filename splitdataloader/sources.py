"""The inputs ``splitdata pack`` reads, as a stream of named records.

Owns how each kind of source becomes records: a folder, one record per regular file; JSON
Lines or text, one record per line (compressed with gzip, bzip2 or xz when the name says
so); tar files and WebDataset shards, one sample record per group of members sharing a key
(:mod:`splitdataloader.samples`); a splitdataloader 0.0.1 folder, its records in index
order. Remote files are opened through :mod:`splitdataloader.storage`. It writes nothing.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from .errors import SourceFormatError
from .loader import SplitDataLoader
from .samples import encode_sample
from .storage import open_input, url_scheme

if TYPE_CHECKING:
    from .keys import KeyProvider

__all__ = ["KINDS", "Item", "detect_kind", "find_files", "iter_items", "source_bytes"]

#: The kinds of source there are.
KINDS = ("folder", "jsonl", "text", "tar", "legacy")

_COMPRESSION: dict[str, Any] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".tar": "tar",
    ".tgz": "tar",
    ".txt": "text",
    ".text": "text",
    ".csv": "text",
    ".tsv": "text",
    ".log": "text",
}
#: Records read at once from a 0.0.1 dataset.
_BATCH_RECORDS = 512


class Item(NamedTuple):
    """One record to store: its name (a relative path, a sample key, ``file:line``), the
    record, and the bytes of input it stands for (a named tuple: one is made per line)."""

    name: str
    record: bytes
    size: int


def find_files(root: Path, *, limit: int | None = None, skip: Iterable[Path] = ()) -> list[Path]:
    """List the regular files under ``root`` in a stable order.

    Symbolic links (to files or folders), ``__pycache__`` folders, the folders in ``skip``
    and anything that is not a regular file (sockets, FIFOs, devices) are left out.

    Parameters
    ----------
    root
        The folder to walk.
    limit
        Stop after this many files.
    skip
        Folders not to enter.

    Returns
    -------
    list of Path
        Files of each folder (sorted by name) before its subfolders (sorted by name).
    """
    skipped = set(skip)
    found: list[Path] = []
    # os.walk lists symlinked folders but does not enter them (followlinks=False).
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            name for name in dirnames if name != "__pycache__" and here / name not in skipped
        )
        for name in sorted(filenames):
            path = here / name
            try:
                mode = path.lstat().st_mode
            except OSError:  # vanished since the folder was listed
                continue
            if stat.S_ISREG(mode):
                found.append(path)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def detect_kind(source: str) -> str:
    """The kind of source ``source`` is, from what it is and its name.

    A local folder holding ``index.dat`` and no ``manifest.json`` is a splitdataloader
    0.0.1 dataset (``"legacy"``), another local folder a ``"folder"``; a file is known by
    its suffix, after a compression suffix (``.gz``, ``.bz2``, ``.xz``): ``.jsonl`` and
    ``.ndjson`` are JSON Lines, ``.tar`` and ``.tgz`` tar files, ``.txt``, ``.csv``, ``.tsv``
    and ``.log`` text.

    Raises
    ------
    SourceFormatError
        If the kind cannot be told: name it explicitly.
    """
    if url_scheme(source) is None and os.path.isdir(source):
        folder = Path(source)
        if (folder / "index.dat").is_file() and not (folder / "manifest.json").exists():
            return "legacy"
        return "folder"
    name = PurePosixPath(source.rstrip("/")).name.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    kind = _SUFFIXES.get(PurePosixPath(name).suffix)
    if kind is None:
        raise SourceFormatError(
            f"cannot tell what kind of source {source} is from its name; say which "
            f"({', '.join(KINDS)})",
            path=source,
        )
    return kind


def _decompressed(stream: IO[bytes], name: str) -> IO[bytes]:
    for suffix, opener in _COMPRESSION.items():
        if name.lower().endswith(suffix):
            opened: IO[bytes] = opener(stream, "rb")
            return opened
    return stream


def _folder_items(root: str, paths: bool) -> Iterator[Item]:
    if url_scheme(root) is not None or not os.path.isdir(root):
        raise SourceFormatError(f"{root} is not a local folder", path=root)
    base = Path(root)
    for path in find_files(base):
        name = path.relative_to(base).as_posix()
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SourceFormatError(
                f"cannot read {path}: {err.strerror or err}", path=str(path)
            ) from err
        record = encode_sample(name, [("", data)]) if paths else data
        yield Item(name, record, len(data))


def _line_items(source: str, json_lines: bool, options: dict[str, Any] | None) -> Iterator[Item]:
    label = PurePosixPath(source).name
    parse = json.JSONDecoder().raw_decode
    with open_input(source, options) as raw, _decompressed(raw, source) as stream:
        number = 0
        try:
            for number, line in enumerate(stream, 1):
                record = line[:-1] if line[-1:] == b"\n" else line
                if record[-1:] == b"\r":
                    record = record[:-1]
                if json_lines:
                    try:
                        text = record.decode("utf-8")
                        if not text or text.isspace():
                            continue  # blank lines carry no record in JSON Lines
                        start = len(text) - len(text.lstrip()) if text[0].isspace() else 0
                        _, end = parse(text, start)
                        if end != len(text) and not text[end:].isspace():
                            raise ValueError(f"extra data after the value at column {end + 1}")
                    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError too
                        raise SourceFormatError(
                            f"{source} line {number} is not JSON: {err}", path=source
                        ) from None
                yield Item(f"{label}:{number}", record, len(line))
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise SourceFormatError(
                f"{source} cannot be read after line {number}: {err}", path=source
            ) from err


def _split_member(name: str) -> tuple[str, str]:
    """A tar member's WebDataset key and field: ``dir/s01.seg.png`` -> (``dir/s01``,
    ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, field_name = base.partition(".")
    if not stem:  # ".hidden": no key before the dot
        stem, field_name = base, ""
    elif not dot:
        field_name = ""
    return (f"{folder}/{stem}" if folder else stem), field_name


def _tar_items(source: str, options: dict[str, Any] | None) -> Iterator[Item]:
    with open_input(source, options) as stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
        except tarfile.TarError as err:
            raise SourceFormatError(f"{source} is not a tar file: {err}", path=source) from err
        with archive:
            key: str | None = None
            fields: list[tuple[str, bytes]] = []
            size = 0
            try:
                for member in archive:
                    if not member.isfile():
                        continue
                    member_key, field_name = _split_member(member.name.removeprefix("./"))
                    if member_key != key and key is not None:
                        yield Item(key, encode_sample(key, fields), size)
                        fields, size = [], 0
                    key = member_key
                    if any(existing == field_name for existing, _ in fields):
                        raise SourceFormatError(
                            f"{source}: sample {key!r} has the field {field_name!r} twice "
                            f"(member {member.name})",
                            path=source,
                        )
                    extracted = archive.extractfile(member)
                    data = extracted.read() if extracted is not None else b""
                    fields.append((field_name, data))
                    size += len(data)
            except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as err:
                raise SourceFormatError(f"{source} is damaged: {err}", path=source) from err
            if key is not None:
                yield Item(key, encode_sample(key, fields), size)


def _dataset_items(
    source: str,
    options: dict[str, Any] | None,
    keys: Mapping[str, bytes] | None,
    key_providers: Sequence[KeyProvider] | None,
) -> Iterator[Item]:
    with SplitDataLoader(
        source, storage_options=options, keys=keys, key_providers=key_providers
    ) as loader:
        if not loader.is_legacy:
            raise SourceFormatError(
                f"{source} is a version-2 dataset already: copy it with `splitdata cp` "
                f"(or splitdataloader.cp.copy_dataset)",
                path=source,
            )
        for lo in range(0, len(loader), _BATCH_RECORDS):
            indices = range(lo, min(lo + _BATCH_RECORDS, len(loader)))
            for index, record in zip(indices, loader.get_many(indices)):
                yield Item(str(index), record, len(record))


def iter_source(
    source: str,
    kind: str,
    *,
    paths: bool = False,
    options: dict[str, Any] | None = None,
    keys: Mapping[str, bytes] | None = None,
    key_providers: Sequence[KeyProvider] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(name, record)`` for every record ``source`` holds, as :func:`pack` stores them.

    Parameters
    ----------
    source
        A local folder, or a file (local path or any fsspec URL).
    kind
        One of :data:`KINDS`, or ``"auto"`` (see :func:`detect_kind`).
    paths
        For folders: store each file as a sample record keyed by its relative path.
    options
        fsspec options for a remote source file.
    keys, key_providers
        For reading a 0.0.1 source (never encrypted; accepted for symmetry).

    Raises
    ------
    SourceFormatError
        If the source is not of its kind (names the file and line or member).
    """
    for item in iter_items(source, kind, paths, options, keys, key_providers):
        yield item.name, item.record


def iter_items(  # noqa: PLR0917 - mirrors iter_source
    source: str,
    kind: str,
    paths: bool,
    options: dict[str, Any] | None,
    keys: Mapping[str, bytes] | None,
    key_providers: Sequence[KeyProvider] | None,
) -> Iterator[Item]:
    if kind == "auto":
        kind = detect_kind(source)
    if kind == "folder":
        return _folder_items(source, paths)
    if kind in ("jsonl", "text"):
        return _line_items(source, kind == "jsonl", options)
    if kind == "tar":
        return _tar_items(source, options)
    if kind == "legacy":
        return _dataset_items(source, options, keys, key_providers)
    raise ValueError(f"unknown source kind {kind!r}; known: auto, {', '.join(KINDS)}")


def source_bytes(sources: Sequence[str], kind: str) -> int | None:
    """The bytes :func:`pack` will read from ``sources``, when that is known beforehand
    (folders and uncompressed local files), for a progress bar; else ``None``."""
    total = 0
    for source in sources:
        this = detect_kind(source) if kind == "auto" else kind
        if this == "folder" and os.path.isdir(source):
            total += sum(path.stat().st_size for path in find_files(Path(source)))
        elif this in ("jsonl", "text") and url_scheme(source) is None:
            if any(source.lower().endswith(suffix) for suffix in _COMPRESSION):
                return None
            total += os.path.getsize(source)
        else:
            return None
    return total
