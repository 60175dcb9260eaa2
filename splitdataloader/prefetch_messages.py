"""What crosses the pipe from a prefetch worker to its consumer, besides the items' encoding.

A pipe carries *frames*: one message (an item encoded by :class:`splitdataloader.shm.Encoder`,
which starts with a pickle's ``PROTO`` byte or the shared memory tag), or several small ones
joined by :func:`join` behind a :data:`BATCH` header, which the consumer takes apart with
:func:`split`; joining them costs the worker one write, and the consumer one read, for many
small items. A worker's generator that raises becomes a :class:`Failure`: the exception's type
name, text and formatted traceback, plus its pickle when it survives a round trip. The
consumer turns it back into the original exception (with a
:class:`~splitdataloader.errors.WorkerError` carrying the worker's traceback as its
``__cause__``) or, when that cannot be rebuilt, into the
:class:`~splitdataloader.errors.WorkerError` alone. :class:`Done` follows a worker's last item.
Both classes cross the process boundary as pickles, so they live at the top level of this
importable module. Nothing here knows about processes, threads or shared memory blocks.
"""

from __future__ import annotations

import logging
import pickle
import struct
from collections.abc import Sequence
from traceback import format_exception

from splitdataloader import shm
from splitdataloader.errors import WorkerError

__all__ = ["BATCH", "FRAME_BYTES", "Done", "Failure", "join", "label", "split"]

logger = logging.getLogger(__name__)

#: The first byte of a frame of several messages. A message starts with ``0x80`` (a pickle's
#: PROTO) or :data:`splitdataloader.shm.TAG`, so a lone message needs no header.
BATCH = ord("B")
#: Small messages are joined into frames of at most about this many bytes: the size of a
#: pipe's buffer on Linux, so that a frame takes one write. A larger message goes alone.
FRAME_BYTES = 64 << 10
_COUNT = struct.Struct("<I")


def join(messages: Sequence[bytes | memoryview]) -> bytes:
    """One frame holding ``messages`` (bytes-like, one byte per item), in order."""
    count = len(messages)
    lengths = struct.pack(f"<{count}I", *map(len, messages))
    return b"".join([bytes([BATCH]), _COUNT.pack(count), lengths, *messages])


def split(frame: bytes) -> list[bytes | memoryview]:
    """The messages of a frame, *last first* (so that ``pop()`` takes them in order)."""
    if not frame or frame[0] != BATCH:
        return [frame]
    (count,) = _COUNT.unpack_from(frame, 1)
    start = 1 + _COUNT.size + 4 * count
    view = memoryview(frame)
    messages: list[bytes | memoryview] = []
    for length in struct.unpack_from(f"<{count}I", frame, 1 + _COUNT.size):
        end = start + length
        messages.append(view[start:end])
        start = end
    messages.reverse()
    return messages


def label(itr_func: object) -> str:
    """How messages name a generator function: its qualified name, else its repr."""
    name = getattr(itr_func, "__qualname__", None)
    return name if isinstance(name, str) else repr(itr_func)


def _qualified_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class Done:
    """Sent by a worker after its last item."""


class Failure:
    """Sent by a worker when its generator raised: everything needed to raise it here."""

    def __init__(self, exc_type: str, message: str, traceback: str, pickled: bytes | None) -> None:
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        # The exception itself, when it survived a pickle round trip in the worker.
        self.pickled = pickled

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """Describe ``exc``, in the worker, for :meth:`to_exception` in the consumer."""
        text = "".join(format_exception(type(exc), exc, exc.__traceback__))
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not hide the original error
            message = "<str() failed>"
        pickled: bytes | None = None
        if isinstance(exc, Exception):
            try:
                data = bytes(shm.dumps(exc))
                # Loading here catches exceptions whose __init__ cannot be called again.
                pickle.loads(data)
            except Exception:
                logger.debug("%s does not pickle; sending its text only", type(exc))
            else:
                pickled = data
        return cls(_qualified_name(type(exc)), message, text, pickled)

    def to_exception(self, where: str, pid: int | None, label: str) -> BaseException:
        """The exception to raise in the consumer for the worker ``where`` running ``label``."""
        summary = f"{self.exc_type}: {self.message}" if self.message else self.exc_type
        error = WorkerError(
            f"{label} raised {summary}\nin {where}; the worker's traceback:\n"
            f"{self.traceback.rstrip()}",
            pid=pid,
            traceback=self.traceback,
            exc_type=self.exc_type,
        )
        if self.pickled is None:
            return error
        try:
            original = pickle.loads(self.pickled)
        except Exception:  # e.g. its class cannot be imported in this process
            return error
        if not isinstance(original, Exception):
            return error
        original.__cause__ = error
        return original
