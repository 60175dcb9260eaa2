"""Writing a Dask collection as one dataset: every partition a part, written in parallel.

Owns the Dask side of parallel writing: each partition of a collection is written by a
:class:`~splitdataloader.parts.PartWriter` inside the task that computes it (records
stream from the partition into the writer: a bag's partitions are never held whole),
and the client joins the parts, in partition order, with one commit. It needs the
``dask`` extra and imports Dask only when called; the part protocol itself lives in
:mod:`splitdataloader.parts` and :mod:`splitdataloader.join`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checksums import DEFAULT_CHECKSUM
from .errors import CodecConfigError
from .join import discard_parts, join_parts, list_parts
from .parts import PartWriter
from .writer import DEFAULT_MAX_SEGMENT_BYTES

logger = logging.getLogger(__name__)

__all__ = ["write_dask"]

_INSTALL_HINT = (
    "writing Dask collections needs the `dask` extra: pip install 'splitdataloader[dask]'"
)


@dataclass(frozen=True)
class _PartSpec:
    """What a task needs to write its part: picklable, rebuilt into a writer in the task."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    bins: int | None = None
    shuffle: bool = False
    seed: int | None = None
    checksum: str = DEFAULT_CHECKSUM
    durable: bool = False
    max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES
    codecs: tuple[Any, ...] | None = None

    def writer(self, part_id: str) -> PartWriter:
        return PartWriter(
            self.url,
            part_id,
            self.bins,
            self.shuffle,
            storage_options=self.storage_options,
            seed=self.seed,
            checksum=self.checksum,
            durable=self.durable,
            max_segment_bytes=self.max_segment_bytes,
            codecs=self.codecs,
        )


def _write_partition(records: Iterable[Any], spec: _PartSpec, run: str) -> list[tuple[str, int]]:
    """Run in a task: write one partition as a part; returns ``[(part id, records)]``.

    The join takes the parts in the order of the results, so the id need not say which
    partition it is; a random one per attempt means that a task Dask runs again (its
    worker died) writes a part of its own instead of colliding with the first attempt's.
    """
    part_id = f"{run}-{secrets.token_hex(6)}"
    with spec.writer(part_id) as writer:
        writer.write_many(records)
    return [(part_id, writer.records)]


def _import_dask() -> Any:
    try:
        import dask  # noqa: PLC0415 - optional dependency, imported on first use
        import dask.bag  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return dask


def _partition_tasks(dask: Any, collection: Any, spec: _PartSpec, run: str) -> tuple[Any, int]:
    """A lazy collection of ``(part id, records)`` in partition order, and its size."""
    import dask.bag  # noqa: PLC0415

    if isinstance(collection, dask.bag.Bag):
        # With the partition as its only input, the writing task fuses with the tasks
        # that make the partition: records stream into the writer, never gathered into a
        # list, and a partition that is a generator never has to travel between workers.
        return collection.map_partitions(_write_partition, spec, run), collection.npartitions
    if hasattr(collection, "columns"):
        raise TypeError(
            "a Dask DataFrame's partitions iterate over column names: pass the column of "
            "bytes records (a Series) instead"
        )
    if dask.is_dask_collection(collection) and hasattr(collection, "to_delayed"):
        blocks = collection.to_delayed()
        shape = getattr(blocks, "shape", None)
        if shape is not None:  # an array: blocks along the first axis only
            if any(size != 1 for size in shape[1:]):
                raise ValueError(
                    f"a Dask array written as records must have one chunk along every axis "
                    f"but the first (its blocks are {shape}): rechunk it"
                )
            blocks = list(blocks.ravel())
        partitions = list(blocks)
    elif isinstance(collection, Sequence) and all(
        dask.is_dask_collection(item) for item in collection
    ):
        partitions = list(collection)
    else:
        raise TypeError(
            f"write_dask takes a Dask bag, a Dask collection with to_delayed(), or a "
            f"sequence of Delayed partitions, not {type(collection).__name__}"
        )
    if not partitions:
        raise ValueError("the collection has no partitions: there is nothing to write")
    task = dask.delayed(_write_partition, pure=False)
    return [task(partition, spec, run) for partition in partitions], len(partitions)


def _check_spec(spec: _PartSpec, run: str, partitions: int) -> None:
    """Fail in the client, before any task runs, on what every part would fail on."""
    probe = spec.writer(f"{run}-probe")
    try:
        if probe.trains_codecs and partitions > 1:
            raise CodecConfigError(
                f"{spec.url}: the codec chain trains on the first records, so each of the "
                f"{partitions} partitions would train its own and the parts could not be "
                f"joined: write a first commit with SplitWriter to train it, then write "
                f"the collection",
                path=spec.url,
            )
    finally:
        probe.abort()


def _discard_run(spec: _PartSpec, run: str) -> None:
    """Delete the parts this run recorded (best effort: the run failed already)."""
    with contextlib.suppress(Exception):
        mine = [
            part_id
            for part_id in list_parts(spec.url, storage_options=spec.storage_options)
            if part_id.startswith(f"{run}-")
        ]
        discard_parts(spec.url, mine, storage_options=spec.storage_options)


def write_dask(
    collection: Any,
    target_dir: str | os.PathLike[str],
    bins: int | None = None,
    shuffle: bool = False,
    *,
    storage_options: dict[str, Any] | None = None,
    seed: int | None = None,
    checksum: str = DEFAULT_CHECKSUM,
    durable: bool = False,
    max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
    codecs: Sequence[Any] | None = None,
    compute_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """Write a Dask collection of bytes records to a dataset, partitions in parallel.

    Each partition is written as a part by the task that computes it, on whichever worker
    runs it (:class:`~splitdataloader.parts.PartWriter`); then one commit joins the parts
    in partition order (:func:`~splitdataloader.join.join_parts`), without copying data.
    The records keep the collection's order, appended after the dataset's existing ones
    if there are any, and readers see all of them or none. Runs on the current Dask
    scheduler: a ``distributed.Client``'s cluster when one is active. Workers must reach
    ``target_dir`` (a shared folder or an object store) and rebuild the filesystem from
    ``storage_options``.

    Parameters
    ----------
    collection
        A ``dask.bag.Bag`` of bytes-like records, a Dask collection whose partitions
        iterate over records (a Series of bytes; an array, one record per row, chunked
        along the first axis only), or a sequence of ``Delayed`` partitions.
    target_dir
        A local path or any fsspec URL.
    bins, shuffle, seed, checksum, durable, max_segment_bytes, codecs, storage_options
        As for :class:`~splitdataloader.parts.PartWriter`.
    compute_kwargs
        Keyword arguments for ``dask.compute`` (e.g. ``{"scheduler": "processes"}``).

    Returns
    -------
    int
        The number of records written.

    Raises
    ------
    CodecConfigError
        For an encrypting codec, or a codec that trains on the first records when there
        is more than one partition (each partition would train its own).
    PartMismatchError
        If the dataset was replaced while the collection was being written.
    ReadOnlyDatasetError
        If the target is a splitdataloader 0.0.1 dataset or a local-cache URL.
    ImportError
        If Dask is not installed.

    Notes
    -----
    When a task fails, the error is raised here and the parts written so far are deleted;
    a task still running elsewhere at that moment may leave its part behind, which
    :func:`~splitdataloader.join.list_parts` shows and
    :func:`~splitdataloader.join.discard_parts` deletes.
    """
    dask = _import_dask()
    spec = _PartSpec(
        url=os.fspath(target_dir),
        storage_options=dict(storage_options or {}),
        bins=bins,
        shuffle=shuffle,
        seed=seed,
        checksum=checksum,
        durable=durable,
        max_segment_bytes=max_segment_bytes,
        codecs=tuple(codecs) if codecs is not None else None,
    )
    run = secrets.token_hex(6)
    tasks, partitions = _partition_tasks(dask, collection, spec, run)
    _check_spec(spec, run, partitions)
    try:
        (computed,) = dask.compute(tasks, **dict(compute_kwargs or {}))
        written = list(_flatten(computed))
        join_parts(
            spec.url,
            [part_id for part_id, _ in written],
            storage_options=spec.storage_options,
            durable=durable,
        )
    except BaseException:
        _discard_run(spec, run)
        raise
    # Parts of task attempts that Dask abandoned (a worker died after the part was
    # written) were not joined: they go now.
    _discard_run(spec, run)
    return sum(records for _, records in written)


def _flatten(computed: Iterable[Any]) -> Iterable[tuple[str, int]]:
    """``(part id, records)`` pairs from a computed bag (flat) or list of task results."""
    for item in computed:
        if isinstance(item, tuple):
            yield item
        else:
            yield from item
