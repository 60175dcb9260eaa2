"""A fault-injecting HTTP/1.1 reverse proxy for S3 tests and benchmarks, standard library only.

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port) in a background thread with its
own event loop and forwards every request to one upstream S3 server. The request line,
the headers (``Host`` included) and the body go upstream byte for byte, so SigV4
signatures stay valid; the one exception is ``Expect: 100-continue``, which the proxy
answers itself (botocore never signs ``Expect``; s3fs's PUTs carry it, with a
``Content-Length``). Request bodies may also come ``Transfer-Encoding: chunked``.
Responses are read whole before they are sent on, which is what lets a fault rewrite
them; their hop-by-hop headers (``Connection``, ``Transfer-Encoding``, …) are dropped and
the body goes on with a ``Content-Length``, so client connections stay alive even when
the server closes its own after every response (moto does). A test arms faults with
:meth:`FaultProxy.add_fault`; each :class:`Fault` hits the next ``count`` requests that
match its method and path filters, and the proxy counts every request it sees, so a test
can check that a retry really happened. ``latency`` adds a fixed delay to every request
(about 20 ms makes the loopback behave like real S3 for benchmarks). This module only
imports the standard library: benchmarks import it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultKind", "FaultProxy", "ProxiedRequest"]

logger = logging.getLogger(__name__)

#: Longest request or response head the proxy accepts, in bytes.
MAX_HEAD = 1 << 16
#: How long a reset-after-part fault lets the partial response reach the client first.
_RESET_GRACE = 0.05
#: Response headers about the upstream hop, which the proxy does not pass on.
_HOP_BY_HOP = (b"connection:", b"keep-alive:", b"proxy-connection:", b"transfer-encoding:")


class FaultKind(str, enum.Enum):
    """What a :class:`Fault` does to a request it hits."""

    #: Answer ``503 SlowDown`` without contacting the server.
    SLOW_DOWN = "slow_down"
    #: Answer ``500 InternalError`` without contacting the server.
    INTERNAL_ERROR = "internal_error"
    #: Reset the client connection (TCP RST) before forwarding anything.
    RESET = "reset"
    #: Forward, send the head and part of the body, then reset the connection.
    RESET_MIDWAY = "reset_midway"
    #: Forward, send the head (with the full ``Content-Length``) and part of the body, close.
    TRUNCATE = "truncate"
    #: Forward, then hold the response back for ``Fault.seconds`` before sending it.
    DELAY = "delay"
    #: Forward, flip one bit of the response body (same length), send it.
    CORRUPT = "corrupt"


@dataclass
class ProxiedRequest:
    """One request the proxy received, as fault filters and counters see it."""

    method: str
    #: The request target: path and query string, e.g. ``/bucket/key?x-id=GetObject``.
    target: str
    #: Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    #: The kind of fault applied to it, if any.
    fault: FaultKind | None = None

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


@dataclass
class Fault:
    """A fault for the next ``count`` requests that pass every filter given.

    Parameters
    ----------
    kind
        What to do to a matching request (a :class:`FaultKind` or its value).
    count
        How many matching requests it hits; ``None`` hits all of them (a permanent fault).
    method
        Only requests with this method (``"GET"``, ``"PUT"``, …), if given.
    path
        Only requests whose target contains this substring (e.g. ``".seg"``), if given.
    match
        Only requests for which this predicate is true, if given. It runs on the proxy's
        thread and must not block.
    seconds
        For ``DELAY``: how long the response is held back.
    fraction
        For ``TRUNCATE`` and ``RESET_MIDWAY``: the share of the body sent before the cut
        (at least one byte is always withheld from a non-empty body).
    """

    kind: FaultKind | str
    count: int | None = 1
    method: str | None = None
    path: str | None = None
    match: Callable[[ProxiedRequest], bool] | None = None
    seconds: float = 5.0
    fraction: float = 0.5
    #: How many requests it hit so far (updated by the proxy under its lock).
    applied: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be None or >= 0, not {self.count}")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, not {self.seconds}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, not {self.fraction}")
        if self.method is not None:
            self.method = self.method.upper()

    @property
    def remaining(self) -> int | None:
        """Requests it will still hit; ``None`` for a permanent fault."""
        return None if self.count is None else max(self.count - self.applied, 0)

    def matches(self, request: ProxiedRequest) -> bool:
        """Whether ``request`` passes the filters (the count is not checked here)."""
        if self.method is not None and request.method != self.method:
            return False
        if self.path is not None and self.path not in request.target:
            return False
        return self.match is None or self.match(request)


@dataclass
class _Response:
    """An upstream response read whole: head lines without the status line, and body."""

    status_line: bytes
    header_lines: list[bytes]
    body: bytes
    #: The upstream connection may serve another request.
    reusable: bool

    def head(self) -> bytes:
        return b"\r\n".join([self.status_line, *self.header_lines]) + b"\r\n\r\n"


class _UpstreamGoneError(Exception):
    """A reused upstream connection failed before any byte of the response came back."""


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def _error_body(code: str, message: str, target: str) -> bytes:
    resource = target.split("?", 1)[0]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()


def _error_response(
    status: int, reason: str, code: str, message: str, request: ProxiedRequest
) -> bytes:
    body = b"" if request.method == "HEAD" else _error_body(code, message, request.target)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-amz-request-id: fault-proxy\r\n"
        "\r\n"
    ).encode("latin-1")
    return head + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with a TCP RST instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read a chunked body: ``(its raw bytes, framing included; the decoded payload)``."""
    raw = bytearray()
    payload = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                raw += trailer
                if trailer == b"\r\n":
                    return bytes(raw), bytes(payload)
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        payload += chunk[:-2]


class FaultProxy:
    """A reverse proxy to one S3 server that injects faults on request.

    Parameters
    ----------
    upstream_host, upstream_port
        Where the S3 server listens.
    latency
        Seconds added to every request before it is forwarded (also settable later).
    host
        The interface to listen on.

    Examples
    --------
    >>> proxy = FaultProxy.for_endpoint(server.endpoint)  # doctest: +SKIP
    >>> endpoint = proxy.start()  # doctest: +SKIP
    >>> proxy.add_fault(Fault("slow_down", count=1, method="GET", path=".seg"))  # doctest: +SKIP
    >>> proxy.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.latency = latency
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: list[ProxiedRequest] = []
        self._counts: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port: int | None = None

    @classmethod
    def for_endpoint(cls, endpoint: str, *, latency: float = 0.0) -> FaultProxy:
        """A proxy in front of the server at ``endpoint`` (``http://host:port``)."""
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected an http://host:port endpoint, not {endpoint!r}")
        return cls(parts.hostname, parts.port, latency=latency)

    # ------------------------------------------------------------------ settings

    @property
    def latency(self) -> float:
        """Seconds added to every request before it is forwarded."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, not {seconds}")
        self._latency = float(seconds)

    @property
    def endpoint(self) -> str:
        """The proxy's URL, for clients' ``endpoint_url``."""
        if self._port is None:
            raise RuntimeError("the proxy is not running: call start() first")
        return f"http://{self.host}:{self._port}"

    # ------------------------------------------------------------------ faults and counts

    def add_fault(self, fault: Fault) -> Fault:
        """Arm ``fault`` (thread-safe); a request gets the first armed fault it matches."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._faults.clear()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests the proxy received with ``method`` and ``path`` in the target."""
        with self._lock:
            if path is None:
                return sum(self._counts.values()) if method is None else self._counts[method]
            return sum(
                1
                for request in self._requests
                if (method is None or request.method == method) and path in request.target
            )

    @property
    def counts(self) -> dict[str, int]:
        """Requests received, per method."""
        with self._lock:
            return dict(self._counts)

    @property
    def requests(self) -> list[ProxiedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def reset_counts(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self._requests.clear()
            self._counts.clear()

    def _admit(self, request: ProxiedRequest) -> Fault | None:
        with self._lock:
            self._requests.append(request)
            self._counts[request.method] += 1
            for fault in self._faults:
                if fault.remaining != 0 and fault.matches(request):
                    fault.applied += 1
                    request.fault = FaultKind(fault.kind)
                    return fault
        return None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start listening and return the endpoint URL."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run, args=(loop,), name=f"s3-fault-proxy-{id(self):x}"
        )
        thread.daemon = True
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def stop(self) -> None:
        """Close the listener and every connection, end the thread and close the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=10)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        finally:
            self._loop = self._thread = None
            self._port = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._port is None else self.endpoint
        return f"FaultProxy({state} -> {self.upstream[0]}:{self.upstream[1]})"

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, limit=MAX_HEAD)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ one client connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        upstream = _Upstream(*self.upstream)
        try:
            while True:
                received = await _read_request(reader, writer)
                if received is None:
                    break
                request, outgoing = received
                fault = self._admit(request)
                if self._latency:
                    await asyncio.sleep(self._latency)
                if not await self._answer(request, outgoing, fault, writer, upstream):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, or sent something that is not HTTP
        except asyncio.CancelledError:
            # Shutting down: drop the connections at once instead of flushing them. The
            # task ends normally: Python 3.11's stream callback calls task.exception() on
            # the finished handler, which raises (and logs an error) for a cancelled task.
            writer.transport.abort()
            upstream.abort()
        except Exception:
            logger.exception("fault proxy: unexpected error")
        finally:
            if task is not None:
                self._tasks.discard(task)
            await _close(writer)
            await upstream.drop()

    async def _answer(
        self,
        request: ProxiedRequest,
        outgoing: bytes,
        fault: Fault | None,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> bool:
        """Answer one request, applying ``fault``; whether the client connection stays open."""
        keep_open = request.headers.get("connection", "").lower() != "close"
        kind = None if fault is None else FaultKind(fault.kind)
        if kind in _LOCAL_ERRORS:
            writer.write(_error_response(*_LOCAL_ERRORS[kind], request))
            await writer.drain()
            return keep_open
        if kind is FaultKind.RESET:
            _reset(writer)
            return False
        try:
            response = await upstream.exchange(outgoing, request.method)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as err:
            logger.debug("fault proxy: the upstream server failed: %r", err)
            writer.write(_error_response(*_BAD_GATEWAY, request))
            await writer.drain()
            return False
        body = response.body
        if fault is not None and kind is FaultKind.DELAY:
            await asyncio.sleep(fault.seconds)
        elif kind is FaultKind.CORRUPT and body:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0x01
            body = bytes(flipped)
        elif fault is not None and kind in (FaultKind.TRUNCATE, FaultKind.RESET_MIDWAY):
            cut = min(int(len(body) * fault.fraction), max(len(body) - 1, 0))
            writer.write(response.head() + body[:cut])
            await writer.drain()
            if kind is FaultKind.TRUNCATE:
                await _close(writer)  # an orderly close, short of the announced length
            else:
                await asyncio.sleep(_RESET_GRACE)  # let the part reach the client first
                _reset(writer)
            return False
        writer.write(response.head() + body)
        await writer.drain()
        return keep_open


#: Faults the proxy answers itself: ``kind -> (status, reason, S3 code, message)``.
_LOCAL_ERRORS: dict[FaultKind | None, tuple[int, str, str, str]] = {
    FaultKind.SLOW_DOWN: (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    FaultKind.INTERNAL_ERROR: (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}
_BAD_GATEWAY = (502, "Bad Gateway", "BadGateway", "The fault proxy could not reach the server.")


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[ProxiedRequest, bytes] | None:
    """The next request on a client connection and its bytes to forward; None at the end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed the connection between requests
    lines = head[:-4].split(b"\r\n")
    method, target, _version = lines[0].decode("latin-1").split(" ", 2)
    headers = _parse_headers(lines[1:])
    if headers.get("expect", "").lower() == "100-continue":
        # Answer it here and drop the header (never signed): the body comes at once.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        lines = [line for line in lines if not line.lower().startswith(b"expect:")]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, _ = await _read_chunked(reader)  # forwarded with its chunk framing
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return ProxiedRequest(method, target, headers), head + body


class _Upstream:
    """The connection to the server that serves one client connection, kept alive."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, outgoing: bytes, method: str) -> _Response:
        """Send one request and read its response whole.

        A reused connection that the server closed while idle is replaced once.
        """
        for attempt in range(2):
            reused = self._writer is not None
            if self._reader is None or self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    *self.address, limit=MAX_HEAD
                )
            try:
                self._writer.write(outgoing)
                await self._writer.drain()
                response = await _read_response(self._reader, method)
            except _UpstreamGoneError:
                await self.drop()
                if reused and attempt == 0:
                    continue
                raise ConnectionResetError("the upstream server closed the connection") from None
            except BaseException:
                await self.drop()
                raise
            if not response.reusable:
                await self.drop()
            return response
        raise ConnectionResetError("the upstream server closed the connection")

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()

    async def drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        await _close(writer)


async def _read_response(reader: asyncio.StreamReader, method: str) -> _Response:
    """Read one response whole, skipping interim (1xx) responses."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (ConnectionError, asyncio.IncompleteReadError) as err:
        if isinstance(err, asyncio.IncompleteReadError) and err.partial:
            raise
        raise _UpstreamGoneError from err
    lines = head[:-4].split(b"\r\n")
    while 100 <= int(lines[0].split(b" ", 2)[1]) < 200:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
    status_line = lines[0]
    status = int(status_line.split(b" ", 2)[1])
    headers = _parse_headers(lines[1:])
    connection = headers.get("connection", "").lower()
    reusable = connection != "close" and (
        status_line.startswith(b"HTTP/1.1") or connection == "keep-alive"
    )
    # Hop-by-hop headers describe the upstream connection, not the client's: the client
    # connection stays alive on its own terms (moto, for one, closes after every response).
    header_lines = [line for line in lines[1:] if not line.lower().startswith(_HOP_BY_HOP)]
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        _, body = await _read_chunked(reader)
        header_lines.append(b"Content-Length: %d" % len(body))
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # delimited by the end of the connection
        reusable = False
        header_lines.append(b"Content-Length: %d" % len(body))
    return _Response(status_line, header_lines, body, reusable)
