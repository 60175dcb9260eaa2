"""Converting splitdataloader 0.0.1 datasets to format version 2.

Owns :func:`convert_legacy`; it reads through :class:`SplitDataLoader` and writes through
:class:`SplitWriter`, so it needs no format knowledge of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from .errors import DatasetFormatError
from .loader import SplitDataLoader
from .writer import SplitWriter


def convert_legacy(
    source_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    dest_storage_options: dict[str, Any] | None = None,
    bins: int | None = None,
    start_clean: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> int:
    """Copy a splitdataloader 0.0.1 dataset into a new version-2 dataset.

    Records keep their indices (``dest[i] == source[i]``). They are laid out round-robin
    over ``bins`` bins (by default as many as the source has), which reproduces the
    source's bin-wise order for any dataset 0.0.1 wrote in one unshuffled call.

    Parameters
    ----------
    source_dir
        The 0.0.1 dataset (a local path or any fsspec URL).
    dest_dir
        Where to write the version-2 dataset; it may be the same location as the source
        only with ``start_clean=True``, which replaces the 0.0.1 files after the commit.
    storage_options, dest_storage_options
        fsspec options for the source and the destination (the destination defaults to
        the source's).
    bins
        Bin count of the new dataset.
    start_clean
        Replace whatever is at ``dest_dir``.
    progress
        Called as ``progress(records, nbytes)`` with the records converted since its
        previous call.

    Returns
    -------
    int
        The number of records converted.

    Raises
    ------
    DatasetFormatError
        If the source is not a 0.0.1 dataset.
    """
    source = SplitDataLoader(source_dir, storage_options=storage_options)
    if not source.is_legacy:
        raise DatasetFormatError(
            f"{source.url} is already a version-2 dataset; nothing to convert", path=source.url
        )

    def stream() -> Iterator[bytes]:
        # The 0.0.1 files stay untouched until the new commit lands, so reading them
        # while writing is safe even in place.
        pending = pending_bytes = 0
        for index in range(len(source)):
            record = source[index]
            if progress is not None:
                pending += 1
                pending_bytes += len(record)
                if pending >= 1024:
                    progress(pending, pending_bytes)
                    pending = pending_bytes = 0
            yield record
        if progress is not None and pending:
            progress(pending, pending_bytes)

    with SplitWriter(
        dest_dir,
        bins=bins or max(1, source.num_bins),
        start_clean=start_clean,
        storage_options=dest_storage_options
        if dest_storage_options is not None
        else storage_options,
    ) as writer:
        count = writer.write_many(stream())
    source.close()
    return count
