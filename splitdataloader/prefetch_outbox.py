"""A prefetch worker's outgoing messages: a bounded queue and the thread that writes it out.

The generator's thread encodes each item and :meth:`Outbox.put` s the message; a sender thread
writes the queued messages to the pipe, so that the generator runs on while the consumer is
busy. The sender takes every message queued when it wakes and writes the small ones as one
frame (:func:`splitdataloader.prefetch_messages.join`), while the generator fills the queue
again: the two threads then meet once per frame rather than once per item, which for small
items costs far more than the items themselves (each meeting hands the GIL over). The queue
holds ``limit`` messages, or more while they add up to at most
:data:`~splitdataloader.prefetch_messages.FRAME_BYTES` (as a pipe's buffer holds many small
messages); the frame being written is one message, or small ones within that size. The
generator's thread never writes to the pipe itself, even when the sender is idle: the consumer
that a write wakes tends to run on the writer's processor, and should take that time from the
sender, not from the generator. This module knows nothing of what the messages hold, nor of
the consumer beyond the pipe.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from splitdataloader.prefetch_messages import FRAME_BYTES, join

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["Outbox"]


class Outbox:
    """Messages on their way to the pipe ``conn``: ``limit`` of them, or one frame's worth.

    Parameters
    ----------
    conn
        The write end of the pipe to the consumer; the sender thread writes to it.
    limit
        How many messages may be queued (besides the frame being written) whatever their
        size, at least 1; more may be while they add up to at most ``FRAME_BYTES``.
    """

    def __init__(self, conn: Connection, limit: int) -> None:
        self._conn = conn
        self._limit = limit
        lock = threading.Lock()
        self._lock = lock
        self._queued = threading.Condition(lock)  # the sender waits here for messages
        self._room = threading.Condition(lock)  # put() waits here while the outbox is full
        self._queue: list[bytes | memoryview] = []
        self._queued_bytes = 0
        self._sender_idle = False
        self._closed = False
        self._broken = False  # the sender found the pipe closed: nobody reads any more
        self._thread = threading.Thread(target=self._send_all, name="MpQItr-sender", daemon=True)

    def start(self) -> None:
        """Start the sender thread."""
        self._thread.start()

    @property
    def sending(self) -> bool:
        """Whether the pipe is open and the sender thread running (it stops at the end)."""
        return not self._broken and self._thread.is_alive()

    def put(self, message: bytes | memoryview, timeout: float) -> bool:
        """Queue ``message`` unless the outbox stays full for ``timeout`` seconds, or the pipe
        is closed (see :attr:`sending`); whether it was queued."""
        if self._broken:
            return False
        size = len(message)
        with self._lock:
            queue = self._queue
            if len(queue) >= self._limit and self._queued_bytes + size > FRAME_BYTES:
                self._room.wait(timeout)
                if len(queue) >= self._limit and self._queued_bytes + size > FRAME_BYTES:
                    return False
            queue.append(message)
            self._queued_bytes += size
            if self._sender_idle:
                self._sender_idle = False
                self._queued.notify()
        return True

    def close(self) -> None:
        """No more messages: the sender writes what is queued, then ends."""
        with self._lock:
            self._closed = True
            self._queued.notify()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the sender to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take(self) -> list[bytes | memoryview]:
        """Wait for messages and take the next frame's worth; ``[]`` once closed and empty."""
        with self._lock:
            queue = self._queue
            while not queue:
                if self._closed:
                    return []
                self._sender_idle = True
                self._queued.wait()
            if self._queued_bytes <= FRAME_BYTES:
                taken = queue[:]
                queue.clear()
                self._queued_bytes = 0
            else:
                size = len(queue[0])
                count = 1
                while count < len(queue) and size + len(queue[count]) <= FRAME_BYTES:
                    size += len(queue[count])
                    count += 1
                taken = queue[:count]
                del queue[:count]
                self._queued_bytes -= size
            self._room.notify()
            return taken

    def _send_all(self) -> None:
        """Run in the sender thread: write frames until the outbox is closed and empty."""
        conn = self._conn
        while taken := self._take():
            try:
                conn.send_bytes(taken[0] if len(taken) == 1 else join(taken))
            except OSError:  # the consumer closed its end
                self._broken = True
                return
