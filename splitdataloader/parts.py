"""Parallel writing, the writer side: one part of a dataset, written on its own.

Owns the part writer of the part protocol (``docs/format.md``, section 7a). A
:class:`PartWriter` writes its segments and index part under fresh names, as any writer
does, then records them in a *part manifest*, ``parts/<part id>.json``, with a create-only
write: two writers given one part id conflict, and neither overwrites the other. Part
writers may run in any processes or on any machines that reach the dataset's storage;
:mod:`splitdataloader.join` adds their parts to the dataset.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from . import plugins
from .checksums import DEFAULT_CHECKSUM
from .errors import (
    CodecConfigError,
    PartConflictError,
    ReadOnlyDatasetError,
    SplitDataError,
)
from .format import (
    DATA_DIR,
    INDEX_DIR,
    PARTS_DIR,
    Manifest,
    PartManifest,
    check_part_id,
    dump_part,
    part_manifest_name,
)
from .storage import ManifestVersion, Storage, open_storage
from .writer import DEFAULT_MAX_SEGMENT_BYTES, SplitWriter

__all__ = ["PartWriter", "storage_for_writing"]


def _encrypting_codec(specs: Iterable[Any]) -> str | None:
    """The id of the first encrypting codec among codec specs or configs, if any.

    Specs whose codec is unknown are skipped: the writer reports them, with the install
    command.
    """
    from .codecs import ENCRYPTION, Codec  # noqa: PLC0415 - the codec layer loads on first use

    for spec in specs:
        if isinstance(spec, Codec):
            codec_class: type[Codec] = type(spec)
        else:
            codec_id = spec.get("id") if isinstance(spec, Mapping) else spec
            if not isinstance(codec_id, str):
                continue
            try:
                codec_class = plugins.codec_class(codec_id)
            except SplitDataError:
                continue
        if codec_class.kind == ENCRYPTION:
            return codec_class.codec_id
    return None


def _refuse_encryption(specs: Iterable[Any], url: str) -> None:
    codec_id = _encrypting_codec(specs)
    if codec_id is not None:
        raise CodecConfigError(
            f"{url}: the codec {codec_id!r} encrypts each record bound to its final "
            f"position in the dataset, which a part only learns when it is joined; write "
            f"encrypted datasets with SplitWriter",
            path=url,
        )


def storage_for_writing(url: str, options: dict[str, Any] | None) -> Storage:
    """The storage of ``url``, refusing a local-cache URL (a cache never alters its source)."""
    storage = open_storage(url, options)
    if storage.is_cache:
        raise ReadOnlyDatasetError(
            f"{storage.spec.url} reads through a local cache, which never writes to its "
            f"source: write to the source URL instead",
            path=storage.spec.url,
        )
    return storage


class _PartEngine(SplitWriter):
    """A :class:`SplitWriter` whose one commit becomes a part manifest."""

    def __init__(
        self,
        target_dir: str,
        part_id: str,
        bins: int | None,
        shuffle: bool,
        *,
        storage_options: dict[str, Any] | None,
        seed: int | None,
        checksum: str,
        durable: bool,
        max_segment_bytes: int,
        codecs: Sequence[Any] | None,
    ) -> None:
        self._part_id = part_id
        _refuse_encryption(codecs or (), target_dir)
        super().__init__(
            target_dir,
            bins,
            shuffle,
            False,
            storage_options=storage_options,
            seed=seed,
            checksum=checksum,
            durable=durable,
            max_segment_bytes=max_segment_bytes,
            codecs=codecs,
        )
        # Round-robin starts at a bin derived from the part id, as if this many records
        # came before: many small parts then still spread over every bin.
        self._session_records = zlib.crc32(part_id.encode()) % self._bins
        self._reset_commit_state()

    def _read_base(self) -> tuple[ManifestVersion, Manifest | None]:
        version, base = super()._read_base()
        where = self._storage.display(part_manifest_name(self._part_id))
        if base is not None:
            _refuse_encryption(base.codecs, self._storage.spec.url)
            for commit in base.commits:
                if commit.part == self._part_id:
                    raise PartConflictError(
                        f"part {self._part_id!r} was already joined into {self.url} "
                        f"(generation {commit.generation}): give every part a new id",
                        path=where,
                    )
        if self._storage.exists(part_manifest_name(self._part_id)):
            raise PartConflictError(
                f"part {self._part_id!r} was already written to {self.url} and waits to "
                f"be joined ({where}): give every part a new id",
                path=where,
            )
        return version, base

    def trains_codecs(self) -> bool:
        """Whether the codec chain is still to be trained on this part's first records."""
        return self._codecs.sample is not None

    def position(self) -> int:
        """Records written to the part so far (those held back for codec training too)."""
        return self._staged.records + self._held_back()

    def publish(self) -> PartManifest:
        """Close the files, record the part manifest, and close the writer."""
        self._check_open()
        try:
            if self._codecs.sample is not None:
                first = (self._base.records if self._base else 0) + self._staged.records
                self._write_batch(self._codecs.finish_sample(first))
            return self._publish()
        except BaseException:
            self._discard_uncommitted()
            raise
        finally:
            self._closed = True

    def _publish(self) -> PartManifest:
        storage = self._storage
        commit = None
        if self._staged.records:
            # The join sets the generation that adds the commit.
            commit = dataclasses.replace(self._finish_files(), generation=0, part=self._part_id)
        part = PartManifest(
            part=self._part_id,
            dataset_id=self._base.dataset_id if self._base is not None else None,
            checksum=self._checksum_name,
            bins=self._bins,
            codecs=self._codecs.configs(),
            resources=tuple(self._codecs.created),
            commit=commit,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        if commit is not None:
            storage.sync_directories(DATA_DIR, INDEX_DIR)
        storage.makedirs(PARTS_DIR)
        name = part_manifest_name(self._part_id)
        try:
            storage.create_file(name, dump_part(part), self._durable)
        except FileExistsError as err:
            raise PartConflictError(
                f"another writer wrote part {self._part_id!r} of {self.url} first; this "
                f"writer's {part.records} records were discarded and the other part kept",
                path=storage.display(name),
            ) from err
        self._staged.close_scratch()
        self._reset_commit_state()
        return part


class PartWriter:
    """Write one part of a dataset, to be added to it later by :func:`.join_parts`.

    Any number of part writers, in any processes or on any machines, write parts of one
    dataset at once; each writes files of its own only, and nothing is visible to readers
    until a join. Leaving the ``with`` block normally (or :meth:`close`) records the part;
    an exception inside it aborts and deletes what the writer wrote. Records go round-robin
    to the bins as with :class:`~splitdataloader.SplitWriter`, starting at a bin derived
    from the part id, so that many small parts still spread over every bin. Memory stays
    bounded as for :class:`~splitdataloader.SplitWriter`.

    Parameters
    ----------
    target_dir
        A local path or any fsspec URL of the dataset (which need not exist yet).
    part_id
        The part's name: 1 to 128 characters out of ``A-Z a-z 0-9 _ . -``, not starting
        with ``.`` or ``-``. It must be new to the dataset: an id that another writer took
        (pending or joined) is refused, so a part retried after it was joined cannot add
        its records twice.
    bins
        Number of bins. ``None`` keeps the existing dataset's, or 256 for a new one. All
        parts of a join need the same.
    shuffle, seed, checksum, durable, max_segment_bytes, storage_options
        As for :class:`~splitdataloader.SplitWriter`.
    codecs
        Codec chain for a new dataset, as for :class:`~splitdataloader.SplitWriter`; an
        existing dataset keeps its own. All parts of a join need the same chain (a
        dictionary trained by each part differs from part to part: train it with a first
        commit through :class:`~splitdataloader.SplitWriter`, then write parts). Encrypting
        codecs are refused: they bind each record to its final position in the dataset,
        which a part learns only when it is joined.

    Raises
    ------
    PartConflictError
        If a part with this id was already written to the dataset or joined into it; also
        from :meth:`close` when another writer recorded the same id first (this writer's
        files are then deleted, the other part stays as it was).
    CodecConfigError
        For an encrypting codec or an invalid codec option.
    ReadOnlyDatasetError
        If the target is a splitdataloader 0.0.1 dataset or a local-cache URL.
    """

    def __init__(
        self,
        target_dir: str | os.PathLike[str],
        part_id: str,
        bins: int | None = None,
        shuffle: bool = False,
        *,
        storage_options: dict[str, Any] | None = None,
        seed: int | None = None,
        checksum: str = DEFAULT_CHECKSUM,
        durable: bool = False,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        codecs: Sequence[Any] | None = None,
    ) -> None:
        self._part_id = check_part_id(part_id)
        self._engine = _PartEngine(
            os.fspath(target_dir),
            part_id,
            bins,
            shuffle,
            storage_options=storage_options,
            seed=seed,
            checksum=checksum,
            durable=durable,
            max_segment_bytes=max_segment_bytes,
            codecs=codecs,
        )
        self._part: PartManifest | None = None

    @property
    def url(self) -> str:
        """The URL of the dataset this part belongs to."""
        return self._engine.url

    @property
    def part_id(self) -> str:
        """The part's id."""
        return self._part_id

    @property
    def bins(self) -> int:
        """The number of bins records are spread over."""
        return self._engine.bins

    @property
    def trains_codecs(self) -> bool:
        """Whether the codec chain trains on this part's first records (e.g. a zstd
        dictionary): such a part's chain differs from every other part's, so it can only
        be joined alone."""
        return self._engine.trains_codecs()

    @property
    def records(self) -> int:
        """Records written to this part so far (all of them once it is recorded)."""
        if self._part is not None:
            return self._part.records
        return self._engine.position()

    def write(self, record: Any) -> int:
        """Add one record; returns its position in the part (0 for the part's first).

        Raises
        ------
        RecordTypeError
            If ``record`` is not a contiguous bytes-like object.
        WriterClosedError
            If the part was recorded or aborted.
        """
        position = self._engine.position()
        self._engine.write(record)
        return position

    def write_many(self, records: Iterable[Any]) -> int:
        """Add every record of ``records``; returns how many were added."""
        return self._engine.write_many(records)

    def close(self) -> None:
        """Close the part's files and record the part, ready to be joined.

        A part without records is recorded too; joining it adds nothing.

        Raises
        ------
        PartConflictError
            If another writer recorded a part with the same id first.
        """
        if self._part is None and not self._engine._closed:
            self._part = self._engine.publish()

    def abort(self) -> None:
        """Drop everything this writer wrote and close it."""
        self._engine.abort()

    def __enter__(self) -> PartWriter:
        self._engine.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._engine.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"PartWriter({self.url!r}, part_id={self._part_id!r})"
