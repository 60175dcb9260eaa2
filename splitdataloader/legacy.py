"""Reading splitdataloader 0.0.1 datasets, read-only, with 0.0.1's record order.

A 0.0.1 dataset is a folder with ``index.dat`` (little-endian u32 triplets: bin, position,
length) and ``bin%08d.dat`` files of u32 size-prefixed packets, and no manifest. This
module owns that layout; it never writes one.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .batch import read_coalesced
from .errors import CorruptDataError, MissingDataFileError, TruncatedDataError
from .readahead import DEFAULT_CONCURRENCY, ReadAhead

if TYPE_CHECKING:
    from .storage import Storage

LEGACY_INDEX_NAME = "index.dat"
_TRIPLET = struct.Struct("<III")
_SIZE = struct.Struct("<I")
_BIN_NAME = re.compile(r"bin\d{8}\.dat")


def legacy_bin_name(bin_id: int) -> str:
    return f"bin{bin_id:08d}.dat"


def legacy_bin_names(storage: Storage) -> list[str]:
    """The bin files of a 0.0.1 dataset, sorted as 0.0.1 iterates them."""
    if storage.is_local:
        import os  # noqa: PLC0415 - local listing only

        try:
            names = os.listdir(storage.root)
        except FileNotFoundError:
            return []
    else:
        prefix = storage.root.rstrip("/") + "/"
        names = [p[len(prefix) :] for p in storage.fs.ls(storage.root, detail=False)]
    return sorted(name for name in names if _BIN_NAME.fullmatch(name))


class LegacyDataset:
    """Random access and bin-wise iteration over a 0.0.1 dataset."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._index_size = storage.size(LEGACY_INDEX_NAME)
        self.records = self._index_size // _TRIPLET.size
        self._index_map: mmap.mmap | None = None
        if storage.is_local and self._index_size:
            self._index_map = storage.map_file(LEGACY_INDEX_NAME, self._index_size)
        self.bin_names = legacy_bin_names(storage)
        self._by_bin: (
            tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]] | None
        ) = None

    @property
    def bins(self) -> int:
        return len(self.bin_names)

    def close(self) -> None:
        if self._index_map is not None:
            self._index_map.close()
            self._index_map = None

    def _triplet(self, index: int) -> tuple[int, int, int]:
        start = index * _TRIPLET.size
        if self._index_map is not None:
            values: tuple[int, int, int] = _TRIPLET.unpack_from(self._index_map, start)
            return values
        data = self._storage.read_range(LEGACY_INDEX_NAME, start, start + _TRIPLET.size)
        return _TRIPLET.unpack(data)

    def get(self, index: int) -> bytes:
        """Record ``index`` (already range-checked), exactly as 0.0.1 returns it."""
        bin_id, position, length = self._triplet(index)
        name = legacy_bin_name(bin_id)
        data = self._storage.read_range(name, position, position + _SIZE.size + length)
        return self._packet(index, name, position, length, data)

    def get_many(self, indices: list[int], concurrency: int = DEFAULT_CONCURRENCY) -> list[bytes]:
        """Records at ``indices`` (already range-checked); remote reads run concurrently."""
        if self._storage.is_local or not indices:
            return [self.get(index) for index in indices]
        size = _TRIPLET.size
        # Neighbouring triplets and packets come in one request each: index entries of
        # nearby records are adjacent, and so are packets of one bin.
        triplets = read_coalesced(
            self._storage,
            [LEGACY_INDEX_NAME] * len(indices),
            [index * size for index in indices],
            [index * size + size for index in indices],
            concurrency=concurrency,
        )
        where = self._storage.display(LEGACY_INDEX_NAME)
        if any(len(triplet) != size for triplet in triplets):
            raise TruncatedDataError(f"{where} is shorter than its records", path=where)
        located = [_TRIPLET.unpack(triplet) for triplet in triplets]
        names = [legacy_bin_name(bin_id) for bin_id, _, _ in located]
        packets = read_coalesced(
            self._storage,
            names,
            [position for _, position, _ in located],
            [position + _SIZE.size + length for _, position, length in located],
            concurrency=concurrency,
        )
        return [
            self._packet(index, name, position, length, data)
            for index, name, (_, position, length), data in zip(indices, names, located, packets)
        ]

    def _packet(self, index: int, name: str, position: int, length: int, data: bytes) -> bytes:
        where = self._storage.display(name)
        if len(data) < _SIZE.size or _SIZE.unpack_from(data)[0] != length:
            raise CorruptDataError(
                f"record {index}: {where} has no packet of {length} bytes at offset {position}",
                path=where,
                record=index,
                offset=position,
            )
        if len(data) != _SIZE.size + length:
            raise TruncatedDataError(
                f"record {index}: {where} ends inside the packet at offset {position}",
                path=where,
                record=index,
                offset=position,
            )
        return data[_SIZE.size :]

    def read_bin(
        self, name: str, read_ahead: ReadAhead | None = None, size: int = 0
    ) -> list[bytes]:
        """All packets of one bin file, in file order (``size``: for a read-ahead)."""
        try:
            if read_ahead is not None:
                data = read_ahead.read(name, 0, size)
            else:
                data = self._storage.read_file(name)
        except FileNotFoundError as err:
            raise MissingDataFileError(
                f"{self._storage.display(name)} disappeared", path=self._storage.display(name)
            ) from err
        positions, lengths = self._bin_entries(name)
        if not len(positions):
            return []
        where = self._storage.display(name)
        ends = positions + _SIZE.size + lengths
        # A bin holds its indexed packets back to back from offset 0: anything else means
        # the file or index.dat is damaged, and walking the length prefixes would go astray.
        gaps = np.flatnonzero(positions[1:] != ends[:-1])
        if positions[0] != 0 or gaps.size:
            offset = 0 if positions[0] != 0 else int(ends[gaps[0]])
            raise CorruptDataError(
                f"{where}: the records that {LEGACY_INDEX_NAME} lists do not lie back to "
                f"back from offset 0 (at offset {offset})",
                path=where,
                offset=offset,
            )
        if int(ends[-1]) > len(data):
            raise TruncatedDataError(
                f"{where} is {len(data)} bytes; its records in {LEGACY_INDEX_NAME} end at "
                f"{int(ends[-1])}",
                path=where,
                offset=len(data),
            )
        raw = np.frombuffer(data, dtype=np.uint8, count=int(ends[-1]))
        prefixes = raw[positions[:, None] + np.arange(_SIZE.size)].copy().view("<u4").ravel()
        bad = np.flatnonzero(prefixes != lengths)
        if bad.size:
            offset = int(positions[bad[0]])
            raise CorruptDataError(
                f"{where}: the packet at offset {offset} is not {int(lengths[bad[0]])} bytes "
                f"long as {LEGACY_INDEX_NAME} says",
                path=where,
                offset=offset,
            )
        # Bytes after the last indexed packet (an interrupted 0.0.1 write) are not records.
        starts = (positions + _SIZE.size).tolist()
        return [data[a:b] for a, b in zip(starts, ends.tolist())]

    def _bin_entries(self, name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Positions and lengths of the packets ``index.dat`` lists in bin file ``name``,
        by position (read from ``index.dat`` once, on the first call)."""
        if self._by_bin is None:
            self._by_bin = self._index_by_bin()
        bin_ids, firsts, positions, lengths = self._by_bin
        k = int(np.searchsorted(bin_ids, int(name[3:11])))
        if k == len(bin_ids) or bin_ids[k] != int(name[3:11]):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return positions[firsts[k] : firsts[k + 1]], lengths[firsts[k] : firsts[k + 1]]

    def _index_by_bin(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(bin ids, where each starts, positions, lengths) of every entry, sorted by bin
        and position; ``firsts`` has one more element, the number of entries."""
        size = self.records * _TRIPLET.size
        if self._index_map is not None:
            data: bytes | mmap.mmap = self._index_map
        else:
            data = self._storage.read_range(LEGACY_INDEX_NAME, 0, size) if size else b""
            if len(data) != size:
                where = self._storage.display(LEGACY_INDEX_NAME)
                raise TruncatedDataError(f"{where} is shorter than its records", path=where)
        table = np.frombuffer(data, dtype="<u4", count=self.records * 3).reshape(-1, 3)
        table = table.astype(np.int64)
        table = table[np.lexsort((table[:, 1], table[:, 0]))]
        bin_ids, firsts = np.unique(table[:, 0], return_index=True)
        firsts = np.append(firsts, len(table))
        return bin_ids, firsts, table[:, 1].copy(), table[:, 2].copy()

    def missing_bins(self) -> list[str]:
        """Bin files that ``index.dat`` lists records in but that do not exist."""
        if self._by_bin is None:
            self._by_bin = self._index_by_bin()
        present = set(self.bin_names)
        return [n for n in map(legacy_bin_name, self._by_bin[0].tolist()) if n not in present]

    def _truncated(self, name: str, offset: int) -> TruncatedDataError:
        where = self._storage.display(name)
        return TruncatedDataError(
            f"{where} ends inside the packet at offset {offset}", path=where, offset=offset
        )

    def iterate_binwise(
        self,
        shuffle: bool,
        seed: int | None,
        read_ahead_bytes: int = 0,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Iterator[bytes]:
        """Every record bin by bin, as 0.0.1 orders them; remote bins are read ahead."""
        missing = self.missing_bins()
        if missing:
            raise self._storage.missing(missing[0])
        names = list(self.bin_names)
        rng = np.random.default_rng(seed) if shuffle else None
        if rng is not None:
            names = [names[k] for k in rng.permutation(len(names))]
        read_ahead: ReadAhead | None = None
        sizes: dict[str, int] = {}
        if not self._storage.is_local and read_ahead_bytes > 0:
            sizes = self._storage.file_sizes("")
            read_ahead = ReadAhead(
                self._storage,
                [(name, 0, sizes.get(name, 0)) for name in names],
                max_bytes=read_ahead_bytes,
                concurrency=concurrency,
            )
        try:
            for name in names:
                packets = self.read_bin(name, read_ahead, sizes.get(name, 0))
                if rng is not None:
                    for k in rng.permutation(len(packets)).tolist():
                        yield packets[k]
                else:
                    yield from packets
        finally:
            if read_ahead is not None:
                read_ahead.close()
