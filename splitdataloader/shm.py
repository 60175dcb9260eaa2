"""Carry large items from a prefetch worker to its consumer through shared memory.

The worker side, :class:`Encoder`, turns each item into one pipe message: the item's pickle,
or, for a large bytes-like item, a pickle whose out-of-band buffers (numpy arrays) reach a
threshold, or a pickle that reaches it by itself, a small *descriptor* of a
:class:`~multiprocessing.shared_memory.SharedMemory` block that holds the payload. Items are
pickled by picklers kept for the worker's life. The consumer side, :class:`Reader`, turns a
message back into an item, copying the payload into a fresh object, so that no item refers to
shared memory. This module owns the blocks: their names, their reuse, and their removal. It
knows nothing of processes, of the order of items, or of what the items are.

Each worker keeps a small pool of blocks and reuses them: the reader sends a block's *slot*
back through a second pipe once it has copied the payload out, and the encoder waits for a
free slot when all of them are in flight, which bounds the shared memory in use; it takes the
free block that fits the payload, when one does. Reusing blocks matters: allocating the pages
of a fresh block and freeing them costs several times more than copying the payload. Blocks
are named ``<prefix>-<sequence number>``, the prefix (:func:`new_prefix`) being made per pass
from the consumer's pid and random bits plus the worker id: never a fixed name, so two
iterators never collide.

Removal: the reader unlinks every block it has opened when it is closed, and a block as soon
as its slot gets a new one (too small, or far too large, for a payload); :meth:`Encoder.abandon`
unlinks the pool of a worker told to stop; :func:`discard` the block of a descriptor nobody
will read; and :func:`sweep`, on Linux, every block left under a prefix (a worker killed while
it made one). Python's resource tracker is kept out: it would unlink a worker's blocks when the
worker exits, items on their way included.
"""

from __future__ import annotations

import copyreg
import io
import logging
import os
import pickle
import secrets
import sys
import time
from multiprocessing import resource_tracker
from multiprocessing.reduction import ForkingPickler
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

__all__ = [
    "SUPPORTED",
    "TAG",
    "Encoder",
    "Reader",
    "discard",
    "dumps",
    "new_prefix",
    "prepare",
    "sweep",
    "unlink",
]

logger = logging.getLogger(__name__)

#: Whether a block can outlive the worker's handle until the consumer opens it. On Windows a
#: block is destroyed with its last handle, so there items always travel through the pipe.
SUPPORTED = os.name == "posix"

#: The first byte of a descriptor message. A pickle always starts with ``0x80`` (PROTO), so
#: a descriptor is told from an item without unpickling it.
TAG = ord("S")

# Payload kinds in a descriptor: a bytes or bytearray item; the out-of-band buffers of a
# pickle that travels in the descriptor; a whole pickle.
_BYTES, _BYTEARRAY, _PICKLE, _INBAND = 0, 1, 2, 3
# Out-of-band buffers start on this boundary within a block, so arrays come back aligned.
_ALIGN = 64
# A block is reused for payloads down to a quarter of its size; smaller ones get a new one.
_SHRINK = 4
# On Linux blocks are files under /dev/shm, read and written with pread and pwrite: no page
# faults (filling a new block costs half as much), and a full /dev/shm raises ENOSPC instead
# of killing the process with SIGBUS. Elsewhere they are copied through their memory maps.
_LINUX = sys.platform.startswith("linux")
_DEV_SHM = "/dev/shm"
# os.pread returns at most about 2 GiB at once on Linux; larger payloads use the map.
_MAX_PREAD = 1 << 30
# The reducers multiprocessing adds to copyreg's: a pickler is made again when they change.
_EXTRA_REDUCERS: dict[Any, Any] = getattr(ForkingPickler, "_extra_reducers", {})


def dumps(
    obj: object, buffer_callback: Callable[[pickle.PickleBuffer], object] | None = None
) -> memoryview:
    """Pickle ``obj`` with protocol 5 and the reducers of :mod:`multiprocessing`."""
    if buffer_callback is None:
        return ForkingPickler.dumps(obj, 5)
    buffer = io.BytesIO()
    # ForkingPickler takes no buffer_callback: borrow the reducers it would use instead.
    pickler = pickle.Pickler(buffer, 5, buffer_callback=buffer_callback)
    pickler.dispatch_table = ForkingPickler(buffer, 5).dispatch_table
    pickler.dump(obj)
    return buffer.getbuffer()


def new_prefix() -> str:
    """A fresh prefix for the blocks of one pass: the consumer's pid and 32 random bits."""
    # Short, for macOS: its shared memory names have at most 31 characters.
    return f"sdl-{os.getpid()}-{secrets.token_hex(4)}"


def prepare() -> None:
    """In the consumer, before starting workers: let them share one resource tracker.

    Before Python 3.13 every opened block is registered with the resource tracker, which a
    process starts on first use; started here, forked workers inherit it instead of each
    starting one of their own.
    """
    if sys.version_info < (3, 13):
        resource_tracker.ensure_running()


class _Sink:
    """The file a reused pickler writes to: it keeps the pieces (frames, large payloads)."""

    __slots__ = ("parts", "write")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.write = self.parts.append


class _Pickling:
    """Pickle items as :func:`dumps` does, with one pickler kept for each way.

    Making a pickler per item (as :meth:`ForkingPickler.dumps` does) costs ten times more
    than pickling a small item. The picklers are made again when a reducer is registered.
    """

    def __init__(self) -> None:
        self._sink = _Sink()
        #: The out-of-band buffers of the last :meth:`dump` with ``out_of_band``.
        self.buffers: list[pickle.PickleBuffer] = []
        self._picklers: dict[bool, pickle.Pickler] = {}
        self._registered = (-1, -1)

    def dump(self, obj: object, *, out_of_band: bool = False) -> list[bytes | memoryview]:
        """The pickle of ``obj`` in pieces; with ``out_of_band``, buffers go to :attr:`buffers`.

        A piece may be a large payload of ``obj`` itself, not a copy.
        """
        registered = len(copyreg.dispatch_table), len(_EXTRA_REDUCERS)
        if registered != self._registered:
            self._picklers.clear()
            self._registered = registered
        pickler = self._picklers.get(out_of_band)
        if pickler is None:
            pickler = self._make(out_of_band)
        parts = self._sink.parts
        parts.clear()
        self.buffers.clear()  # left over if the last item failed half-way
        try:
            pickler.dump(obj)
        finally:
            pickler.clear_memo()  # no references kept to the item, nor from one item to the next
        pieces = parts[:]
        parts.clear()
        return pieces

    def _make(self, out_of_band: bool) -> pickle.Pickler:
        sink = self._sink
        # append returns None: every buffer goes out of band.
        callback = self.buffers.append if out_of_band else None
        pickler = pickle.Pickler(sink, 5, buffer_callback=callback)
        pickler.dispatch_table = ForkingPickler(sink, 5).dispatch_table
        self._picklers[out_of_band] = pickler
        return pickler


def _joined(parts: list[bytes | memoryview]) -> bytes:
    part = parts[0]
    return part if len(parts) == 1 and type(part) is bytes else b"".join(parts)


class _Block(NamedTuple):
    name: str
    memory: SharedMemory
    size: int


class Encoder:
    """The worker side: turns items into pipe messages, large payloads into pooled blocks.

    Parameters
    ----------
    prefix
        The prefix of this worker's block names; ``None`` sends everything through the pipe.
    threshold
        The payload size in bytes from which an item goes through shared memory.
    free
        The read end of the pipe on which the consumer's :class:`Reader` returns slots.
    slots
        The most blocks in flight at once.
    check
        Called every ``wait_interval`` seconds while waiting for a free slot; raises when
        the consumer is gone.
    """

    def __init__(
        self,
        prefix: str | None,
        *,
        threshold: int,
        free: Connection | None,
        slots: int,
        check: Callable[[], None],
        wait_interval: float,
    ) -> None:
        enabled = prefix is not None and free is not None and threshold > 0 and SUPPORTED
        self._prefix = prefix if enabled else None
        self._threshold = threshold
        self._free_conn = free
        self._slots = slots
        self._check = check
        self._wait_interval = wait_interval
        self._pool: list[_Block | None] = []
        self._free: list[int] = []
        self._sequence = 0
        self._making: str | None = None
        self._warned = False
        self._pickling = _Pickling()

    def encode(self, item: object) -> bytes | memoryview:
        """The message for ``item``. A memoryview arrives as bytes.

        Raises
        ------
        Exception
            Whatever pickling ``item`` raised.
        """
        kind = type(item)
        prefix = self._prefix
        if kind is bytes or kind is bytearray or kind is memoryview:
            view = memoryview(item)  # type: ignore[arg-type]  # one of the three types above
            if prefix is not None and view.nbytes >= self._threshold:
                flat = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
                code = _BYTEARRAY if kind is bytearray else _BYTES
                message = self._to_block(prefix, code, [flat])
                if message is not None:
                    return message
            return _joined(self._pickling.dump(view.tobytes() if kind is memoryview else item))
        if prefix is None:
            return _joined(self._pickling.dump(item))
        return self._encode_object(prefix, item)

    def _encode_object(self, prefix: str, item: object) -> bytes | memoryview:
        pickling = self._pickling
        parts = pickling.dump(item, out_of_band=True)
        buffers = pickling.buffers
        if buffers:
            message = self._out_of_band(prefix, parts, buffers)
            if message is not None:
                return message
            parts = pickling.dump(item)
        elif len(parts) == 1 and len(parts[0]) < self._threshold:
            return parts[0]  # a small pickle, in one piece that the pickler made
        # A large pickle of its own (many small records, say) goes through a block as well.
        flat = [memoryview(part).cast("B") for part in parts]
        if sum(part.nbytes for part in flat) >= self._threshold:
            message = self._to_block(prefix, _INBAND, flat, align=1)
            if message is not None:
                return message
        return _joined(parts)

    def _out_of_band(
        self, prefix: str, parts: list[bytes | memoryview], buffers: list[pickle.PickleBuffer]
    ) -> bytes | None:
        """The message for a pickle with out-of-band ``buffers`` that reach the threshold."""
        try:
            views = [buffer.raw() for buffer in buffers]
        except BufferError:  # a non-contiguous buffer: let pickle copy it in band
            return None
        finally:
            buffers.clear()
        if sum(view.nbytes for view in views) < self._threshold:
            return None
        return self._to_block(prefix, _PICKLE, views, _joined(parts))

    def abandon(self) -> None:
        """Unlink every block of the pool: the consumer will read none of them now."""
        for block in self._pool:
            if block is not None:
                block.memory.close()
                unlink(block.name)
        self._pool = []
        if self._making is not None:
            unlink(self._making)
            self._making = None

    def _to_block(
        self,
        prefix: str,
        kind: int,
        views: list[memoryview],
        skeleton: bytes | None = None,
        *,
        align: int = _ALIGN,
    ) -> bytes | None:
        layout: list[tuple[int, int]] = []
        size = 0  # where the last buffer ends: what the reader copies
        for view in views:
            offset = -(-size // align) * align
            layout.append((offset, view.nbytes))
            size = offset + view.nbytes
        slot = self._take_slot(size)
        try:
            block = self._fill(prefix, slot, size, views, layout)
        except OSError as err:  # /dev/shm full (64 MiB in Docker), missing, read-only, ...
            self._free.append(slot)
            if not self._warned:
                self._warned = True
                logger.warning(
                    "prefetch worker cannot use shared memory (%s); items go through the pipe",
                    err,
                )
            return None
        descriptor = (slot, block.name, kind, size, skeleton, layout)
        return bytes([TAG]) + pickle.dumps(descriptor, protocol=5)

    def _fill(
        self,
        prefix: str,
        slot: int,
        size: int,
        views: list[memoryview],
        layout: list[tuple[int, int]],
    ) -> _Block:
        old = self._pool[slot]
        if old is not None and size <= old.size <= _SHRINK * size:
            _write(old.memory, views, layout)
            return old
        name = f"{prefix}-{self._sequence}"
        self._sequence += 1
        capacity = _capacity(size)
        # Known before it exists: an exception (a stop request) from a signal can come in
        # the middle of creating it, and abandon() must still find it.
        self._making = name
        try:
            block = _Block(name, _create(name, capacity), capacity)
        except OSError:  # not made (SharedMemory cleans up), or somebody else's: leave it
            self._making = None
            raise
        try:
            _write(block.memory, views, layout)
        except BaseException:
            block.memory.close()
            unlink(name)
            raise
        if old is not None:
            # The reader unlinks it when it sees the new name in this slot.
            old.memory.close()
        self._pool[slot] = block
        self._making = None
        return block

    def _take_slot(self, size: int) -> int:
        """A free slot, best one whose block fits ``size`` bytes (so that the last, short
        chunk of a run does not replace a block that the next full one needs again)."""
        self._collect(0)
        free = self._free
        pool = self._pool
        for k in range(len(free) - 1, -1, -1):
            block = pool[free[k]]
            if block is not None and size <= block.size <= _SHRINK * size:
                return free.pop(k)
        if len(pool) < self._slots:
            pool.append(None)
            return len(pool) - 1
        while not free:
            if not self._collect(self._wait_interval):
                self._check()
        return free.pop()

    def _collect(self, timeout: float) -> bool:
        """Take the slots the reader returned, waiting up to ``timeout``; whether any came."""
        conn = self._free_conn
        if conn is None:
            time.sleep(timeout)
            return False
        came = False
        try:
            while conn.poll(timeout):
                self._free.append(int.from_bytes(conn.recv_bytes(), "little"))
                came = True
                timeout = 0
        except (EOFError, OSError):  # the consumer is gone: self._check() will say so
            self._free_conn = None
        return came


class Reader:
    """The consumer side for one worker: turns messages back into items and returns slots.

    Parameters
    ----------
    free
        The write end of the pipe to the worker's :class:`Encoder`; the reader owns it.
    """

    def __init__(self, free: Connection | None) -> None:
        self._free_conn = free
        self._blocks: dict[int, tuple[str, SharedMemory]] = {}

    def decode(self, message: bytes | memoryview) -> tuple[Any, int]:
        """The item a message carries, and how many bytes came from shared memory (0: none).

        Raises
        ------
        FileNotFoundError
            When the block of a descriptor is gone (something else removed it).
        """
        if message[0] != TAG:
            return pickle.loads(message), 0
        slot, name, kind, size, skeleton, layout = pickle.loads(memoryview(message)[1:])
        memory = self._open(slot, name)
        if kind == _BYTES:
            item: Any = _read_bytes(memory, size)
        elif kind == _INBAND:
            item = pickle.loads(_read_bytes(memory, size))
        else:
            with _buffer(memory)[:size] as view:
                data = bytearray(view)
            if kind == _BYTEARRAY:
                item = data
            else:
                whole = memoryview(data)
                buffers = [whole[offset : offset + length] for offset, length in layout]
                item = pickle.loads(skeleton, buffers=buffers)
        if self._free_conn is not None:
            try:
                self._free_conn.send_bytes(slot.to_bytes(4, "little"))
            except OSError:  # the worker is gone; the consumer learns it from the other pipe
                self._free_conn.close()
                self._free_conn = None
        return item, sum(length for _, length in layout)

    def fds(self) -> list[int]:
        """The file descriptors this reader holds open: a forked worker closes its copies."""
        return [] if self._free_conn is None else [self._free_conn.fileno()]

    def close(self) -> None:
        """Unlink and close every block this reader opened, and the pipe back to the worker."""
        for name, memory in self._blocks.values():
            memory.close()
            unlink(name)
        self._blocks.clear()
        if self._free_conn is not None:
            self._free_conn.close()
            self._free_conn = None

    def _open(self, slot: int, name: str) -> SharedMemory:
        known = self._blocks.get(slot)
        if known is not None:
            if known[0] == name:
                return known[1]
            # The worker put a new block in this slot: the old one is nobody's any more.
            del self._blocks[slot]
            known[1].close()
            unlink(known[0])
        try:
            memory = _attach(name)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the shared memory block {name!r} holding a prefetched item is gone: "
                "something removed it before the consumer read it"
            ) from None
        self._blocks[slot] = (name, memory)
        return memory


def discard(message: bytes | memoryview) -> None:
    """Unlink the block of a message that will not be decoded (nothing for a pickle)."""
    if message[:1] == bytes([TAG]):
        try:
            name = pickle.loads(memoryview(message)[1:])[1]
        except Exception:  # a message cut short by a dying worker; sweep() finds its block
            return
        unlink(name)


def unlink(name: str) -> bool:
    """Unlink the block ``name`` if it exists; whether it did. Never raises: cleanup goes on."""
    try:
        if _LINUX:
            os.unlink(os.path.join(_DEV_SHM, name))
            return True
        memory = _attach(name, tracked=True)  # its unlink() unregisters it again
        try:
            memory.unlink()
        except FileNotFoundError:  # unlinked by someone else since it was opened
            _untrack(name)
            raise
        finally:
            memory.close()
    except FileNotFoundError:
        return False
    except OSError as err:
        logger.warning("cannot unlink shared memory block %s: %s", name, err)
        return False
    return True


def sweep(prefix: str) -> list[str]:
    """Unlink every block whose name starts with ``prefix`` and return their names.

    Lists ``/dev/shm``, so it finds blocks only where they live there (Linux).
    """
    if not _LINUX:
        return []
    try:
        names = os.listdir(_DEV_SHM)
    except OSError:
        return []
    start = prefix + "-"
    return [name for name in names if name.startswith(start) and unlink(name)]


def _capacity(size: int) -> int:
    # Rounded up by at most an eighth, so that payloads that grow a little reuse the block.
    step = max(4096, 1 << max(0, size.bit_length() - 4))
    return -(-size // step) * step


def _create(name: str, size: int) -> SharedMemory:
    if sys.version_info >= (3, 13):
        return SharedMemory(name, create=True, size=size, track=False)
    memory = SharedMemory(name, create=True, size=size)
    _untrack(name)
    return memory


def _attach(name: str, *, tracked: bool = False) -> SharedMemory:
    if sys.version_info >= (3, 13):
        return SharedMemory(name, track=False)
    memory = SharedMemory(name)
    if not tracked:
        _untrack(name)
    return memory


def _untrack(name: str) -> None:
    # Before 3.13 creating or opening a block registers it with the resource tracker, which
    # would unlink it when this process exits, or warn about a "leak" already unlinked here.
    if sys.version_info < (3, 13):
        resource_tracker.unregister("/" + name, "shared_memory")


def _descriptor(memory: SharedMemory) -> int:
    # SharedMemory keeps its file descriptor open on POSIX.
    fd = getattr(memory, "_fd", -1)
    return fd if _LINUX and isinstance(fd, int) else -1


def _write(memory: SharedMemory, views: list[memoryview], layout: list[tuple[int, int]]) -> None:
    fd = _descriptor(memory)
    for view, (offset, length) in zip(views, layout):
        if fd >= 0:
            done = 0
            while done < length:
                done += os.pwrite(fd, view[done:], offset + done)
        else:
            _buffer(memory)[offset : offset + length] = view


def _read_bytes(memory: SharedMemory, size: int) -> bytes:
    fd = _descriptor(memory)
    if fd >= 0 and size <= _MAX_PREAD:
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    with _buffer(memory)[:size] as view:
        return bytes(view)


def _buffer(memory: SharedMemory) -> memoryview:
    buffer = memory.buf
    if buffer is None:
        raise ValueError(f"shared memory block {memory.name!r} is closed")
    return buffer
