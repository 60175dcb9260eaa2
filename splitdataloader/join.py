"""Parallel writing, the joining side: written parts added to a dataset by one commit.

Owns the join of the part protocol (``docs/format.md``, section 7a): :func:`join_parts`
adds parts written by :class:`~splitdataloader.parts.PartWriter`, in the order given, as
commits of the dataset's manifest in one conditional write, without copying data, and
then deletes their part manifests; :func:`list_parts` and :func:`discard_parts` find and
remove parts that are not to be joined.
"""

from __future__ import annotations

import dataclasses
import os
import random
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import (
    CommitConflictError,
    DatasetFormatError,
    PartAlreadyJoinedError,
    PartMismatchError,
    PartNotFoundError,
    ReadOnlyDatasetError,
)
from .format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PARTS_DIR,
    Manifest,
    PartManifest,
    check_part_id,
    dump_manifest,
    parse_manifest,
    parse_part,
    part_manifest_name,
)
from .legacy import LEGACY_INDEX_NAME
from .parts import storage_for_writing
from .storage import ManifestChangedError, ManifestVersion, Storage, open_storage

__all__ = ["JOIN_ATTEMPTS", "discard_parts", "join_parts", "list_parts"]

#: Conditional manifest writes a join tries before it gives up to concurrent writers.
JOIN_ATTEMPTS = 10


def _check_ids(part_ids: Iterable[str], argument: str = "part_ids") -> list[str]:
    if isinstance(part_ids, str):
        raise TypeError(f"{argument} must be a sequence of part ids, not a single string")
    ids = [check_part_id(part_id, f"{argument}[{k}]") for k, part_id in enumerate(part_ids)]
    seen: set[str] = set()
    for part_id in ids:
        if part_id in seen:
            raise ValueError(f"{argument} names part {part_id!r} twice")
        seen.add(part_id)
    return ids


def _read_base(storage: Storage) -> tuple[ManifestVersion, Manifest | None]:
    raw, version = storage.read_manifest(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if raw is None:
        if storage.exists(LEGACY_INDEX_NAME):
            raise ReadOnlyDatasetError(
                f"{storage.spec.url} is a splitdataloader 0.0.1 dataset; it opens read-only. "
                f"Convert it first (splitdataloader.convert_legacy)",
                path=storage.spec.url,
            )
        return version, None
    return version, parse_manifest(raw, storage.display(MANIFEST_NAME))


def _read_parts(storage: Storage, ids: Sequence[str]) -> list[PartManifest]:
    names = [part_manifest_name(part_id) for part_id in ids]
    found = storage.read_files(names, MAX_MANIFEST_BYTES)
    missing = [part_id for part_id, name in zip(ids, names) if found[name] is None]
    if missing:
        shown = ", ".join(repr(part_id) for part_id in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PartNotFoundError(
            f"{storage.spec.url} has no written part {shown}{more}: never written, not "
            f"finished (a part is recorded when its writer closes), or discarded",
            path=storage.display(part_manifest_name(missing[0])),
        )
    parts = []
    for part_id, name in zip(ids, names):
        data = found[name]
        assert data is not None  # checked above
        parts.append(parse_part(data, storage.display(name), part_id))
    return parts


def _check_not_joined(storage: Storage, base: Manifest | None, ids: Sequence[str]) -> None:
    if base is None:
        return
    joined = {commit.part: commit.generation for commit in base.commits if commit.part}
    for part_id in ids:
        if part_id in joined:
            raise PartAlreadyJoinedError(
                f"part {part_id!r} is already in {storage.spec.url} (joined in generation "
                f"{joined[part_id]}); joining it again would add its records twice",
                path=storage.display(part_manifest_name(part_id)),
            )


def _check_alike(storage: Storage, base: Manifest | None, parts: Sequence[PartManifest]) -> str:
    """Check that the parts fit each other and the dataset; return the dataset id to use."""
    url = storage.spec.url
    first = parts[0]
    # The dataset's settings win; an empty dataset's bin count is only its default.
    settings = [
        ("bins", "bins", base.bins if base and base.commits else None),
        ("codec chain", "codecs", base.codecs if base else None),
        ("checksum", "checksum", base.checksum if base else None),
    ]
    for label, attribute, dataset_value in settings:
        expected = getattr(first, attribute) if dataset_value is None else dataset_value
        owner = f"part {first.part!r}" if dataset_value is None else f"the dataset {url}"
        for part in parts:
            value = getattr(part, attribute)
            if value != expected:
                raise PartMismatchError(
                    f"part {part.part!r} was written with {label} {value!r}, but {owner} "
                    f"has {expected!r}: every part of a join needs the same",
                    path=storage.display(part_manifest_name(part.part)),
                )
    written_for = [part for part in parts if part.dataset_id is not None]
    if base is not None:
        dataset_id = base.dataset_id
    elif written_for:
        dataset_id = str(written_for[0].dataset_id)
    else:
        dataset_id = secrets.token_hex(16)
    for part in written_for:
        if part.dataset_id != dataset_id:
            now = f"is now dataset {dataset_id}" if base else "no longer exists"
            raise PartMismatchError(
                f"part {part.part!r} was written into dataset {part.dataset_id}, but {url} "
                f"{now}: it was replaced since",
                path=storage.display(part_manifest_name(part.part)),
            )
    return dataset_id


def _joined_manifest(
    storage: Storage, base: Manifest | None, parts: Sequence[PartManifest]
) -> Manifest:
    dataset_id = _check_alike(storage, base, parts)
    generation = (base.generation if base else 0) + 1
    added = tuple(
        dataclasses.replace(part.commit, generation=generation)
        for part in parts
        if part.commit is not None
    )
    commits = (base.commits if base else ()) + added
    resources = list(base.resources if base else ())
    for part in parts:
        resources.extend(r for r in part.resources if r not in resources)
    return Manifest(
        dataset_id=dataset_id,
        generation=generation,
        checksum=base.checksum if base else parts[0].checksum,
        records=sum(commit.records for commit in commits),
        bins=max([base.bins if base else 1, *(part.bins for part in parts)]),
        commits=commits,
        codecs=base.codecs if base else parts[0].codecs,
        resources=tuple(resources),
        extra=base.extra if base else {},
    )


def join_parts(
    target_dir: str | os.PathLike[str],
    part_ids: Sequence[str],
    *,
    storage_options: dict[str, Any] | None = None,
    durable: bool = False,
) -> int:
    """Add written parts to a dataset, in the order given, in one atomic commit.

    Each part with records becomes one commit of the dataset, its records numbered after
    those of the dataset and of the parts before it; no data is copied. The dataset is
    created if it does not exist. Readers see all the parts or none. A writer committing
    to the dataset at the same time does not make the join fail: it reads the new manifest
    and tries again. The part manifests are deleted once the commit is made.

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL of the dataset.
    part_ids
        The ids of the parts to join, in the order their records are to follow each
        other.
    storage_options
        Options for the fsspec filesystem.
    durable
        ``fsync`` the manifest on local disk before returning.

    Returns
    -------
    int
        The number of records in the dataset after the join.

    Raises
    ------
    PartNotFoundError
        If a part was never written, not recorded yet, or discarded.
    PartAlreadyJoinedError
        If a part is in the dataset already.
    PartMismatchError
        If the parts differ from each other or from the dataset in bin count, codec chain
        or checksum, or a part was written for a dataset that was replaced since.
    CommitConflictError
        If other writers kept committing for all of :data:`JOIN_ATTEMPTS` tries.
    ReadOnlyDatasetError
        If the target is a splitdataloader 0.0.1 dataset or a local-cache URL.
    ValueError
        If ``part_ids`` is empty, names a part twice or holds an invalid id.
    """
    ids = _check_ids(part_ids)
    if not ids:
        raise ValueError("part_ids is empty: name at least one part to join")
    storage = storage_for_writing(os.fspath(target_dir), storage_options)
    parts: list[PartManifest] | None = None
    for attempt in range(JOIN_ATTEMPTS):
        version, base = _read_base(storage)
        _check_not_joined(storage, base, ids)
        if parts is None:  # part manifests never change: read them once
            parts = _read_parts(storage, ids)
        manifest = _joined_manifest(storage, base, parts)
        if base is not None and manifest.commits == base.commits:
            storage.remove([part_manifest_name(part_id) for part_id in ids])
            return base.records  # parts without records: nothing to commit
        data = dump_manifest(manifest)
        if len(data) > MAX_MANIFEST_BYTES:
            raise DatasetFormatError(
                f"joining these parts would make the manifest of {storage.spec.url} "
                f"{len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit: join fewer, "
                f"larger parts",
                path=storage.display(MANIFEST_NAME),
            )
        storage.makedirs("")
        try:
            storage.commit_manifest(MANIFEST_NAME, data, version, durable)
        except ManifestChangedError:
            # Another writer committed in between: back off a little, then rebuild.
            time.sleep(min(1.0, 0.01 * 2**attempt) * random.random())
            continue
        storage.remove([part_manifest_name(part_id) for part_id in ids])
        return manifest.records
    raise CommitConflictError(
        f"other writers committed to {storage.spec.url} during each of {JOIN_ATTEMPTS} "
        f"tries to join {len(ids)} parts; nothing was joined: try again",
        path=storage.display(MANIFEST_NAME),
    )


def list_parts(
    target_dir: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """The ids of the parts written to a dataset and not joined nor discarded, sorted.

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL of the dataset.
    storage_options
        Options for the fsspec filesystem.
    """
    storage = open_storage(os.fspath(target_dir), storage_options)
    ids = []
    for name in storage.list_names(PARTS_DIR):
        part_id = name[len(PARTS_DIR) + 1 :].removesuffix(".json")
        if name.endswith(".json"):
            try:
                ids.append(check_part_id(part_id))
            except ValueError:
                continue  # not a part manifest (e.g. a temporary file)
    return sorted(ids)


def discard_parts(
    target_dir: str | os.PathLike[str],
    part_ids: Iterable[str],
    *,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Delete written parts that are not to be joined, with their files.

    A part's manifest goes first, so that a crash half-way leaves only unlisted files.
    The files of a part that is in the dataset already are kept (only its leftover part
    manifest goes); ids without a written part are skipped. Do not discard parts that a
    join may be joining at the same time.

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL of the dataset.
    part_ids
        The ids of the parts to delete, e.g. from :func:`list_parts`.
    storage_options
        Options for the fsspec filesystem.

    Returns
    -------
    int
        The number of part manifests deleted.
    """
    ids = _check_ids(part_ids)
    storage = storage_for_writing(os.fspath(target_dir), storage_options)
    names = [part_manifest_name(part_id) for part_id in ids]
    found = storage.read_files(names, MAX_MANIFEST_BYTES)
    present = [(part_id, name) for part_id, name in zip(ids, names) if found[name] is not None]
    files: list[str] = []
    for part_id, name in present:
        data = found[name]
        assert data is not None  # filtered above
        files.extend(parse_part(data, storage.display(name), part_id).files())
    storage.remove([name for _, name in present])
    # Read the manifest after the part manifests are gone: a part joined meanwhile keeps
    # its files, and none can be joined from here on.
    _, base = _read_base(storage)
    keep = set(base.files()) if base is not None else set()
    storage.remove([name for name in files if name not in keep])
    return len(present)
