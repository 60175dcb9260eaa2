"""Which files a dataset's folder holds, and which of them something references.

Owns what :mod:`splitdataloader.verify` and :mod:`splitdataloader.repair` both need to know
about the folder as a whole: the files listed under ``data/``, ``index/`` and ``meta/``
(and temporary manifests), the files that parts waiting to be joined reference, the current
manifest's bytes, and the error raised when there is no dataset. It reads and lists; it
does not check file contents (:mod:`splitdataloader.checking`) and never writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from .errors import DatasetNotFoundError, SplitDataError, UncommittedDatasetError
from .format import (
    DATA_DIR,
    INDEX_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    META_DIR,
    PARTS_DIR,
    parse_part,
)
from .legacy import LEGACY_INDEX_NAME

if TYPE_CHECKING:
    from .storage import FileInfo, ManifestVersion, Storage

logger = logging.getLogger(__name__)

__all__ = ["TEMPORARY_MANIFEST", "dataset_files", "part_files", "raise_missing", "read_manifest"]

#: Names of manifests being written start with this.
TEMPORARY_MANIFEST = f"{MANIFEST_NAME}.tmp-"


def dataset_files(storage: Storage) -> dict[str, FileInfo]:
    """Every file under ``data/``, ``index/`` and ``meta/``, and temporary manifests."""
    found: dict[str, FileInfo] = {}
    for directory in (DATA_DIR, INDEX_DIR, META_DIR):
        found.update(storage.list_files(directory))
    for name, info in storage.list_files("").items():
        if name.startswith(TEMPORARY_MANIFEST):
            found[name] = info
    return found


def part_files(storage: Storage) -> tuple[set[str], list[str]]:
    """Files that parts waiting to be joined reference, and the part manifests that could
    not be read."""
    files: set[str] = set()
    unreadable: list[str] = []
    for name in storage.list_names(PARTS_DIR):
        if not name.endswith(".json"):
            continue
        part_id = name[len(PARTS_DIR) + 1 : -len(".json")]
        try:
            data = storage.read_file(name, MAX_MANIFEST_BYTES)
            files.update(parse_part(data, storage.display(name), part_id).files())
        except FileNotFoundError:
            continue  # joined or discarded since it was listed
        except (SplitDataError, ValueError) as err:
            logger.warning("part manifest %s cannot be read: %s", storage.display(name), err)
            unreadable.append(name)
    return files, unreadable


def read_manifest(storage: Storage) -> tuple[bytes | None, ManifestVersion]:
    """The manifest's bytes (``None`` when there is none) and its version."""
    return storage.read_manifest(MANIFEST_NAME, MAX_MANIFEST_BYTES)


def raise_missing(storage: Storage, listing: Mapping[str, FileInfo]) -> NoReturn:
    """Raise the error for a folder without a manifest, given its :func:`dataset_files`."""
    url = storage.spec.url
    if listing:
        raise UncommittedDatasetError(
            f"{url} holds data files but no {MANIFEST_NAME}: a write never committed "
            f"(repair removes the files)",
            path=url,
        )
    raise DatasetNotFoundError(
        f"no dataset at {url}: neither {MANIFEST_NAME} nor a splitdataloader 0.0.1 "
        f"{LEGACY_INDEX_NAME} exists there",
        path=url,
    )
