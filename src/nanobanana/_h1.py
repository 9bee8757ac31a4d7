"""One HTTP/1.1 client connection, as a raw `asyncio.Protocol`.

The parser runs inside `data_received`, on bytes, as a small state machine: the
response head is found with `bytes.find`, split once, and the body is framed by
Content-Length, by chunked transfer coding or by the end of the connection
(RFC 9112 section 6.3). Body bytes are queued for the consumer as they arrive, so a
server-sent event stream is seen event by event, and the socket stops being read
while too much is queued (backpressure).

The connection never sends a second request before the first response is complete
(no pipelining), so it only ever has one reader and one writer waiting on it. Waits
are plain futures resolved by the protocol callbacks or by a timer, never tasks.

The pool in `nanobanana._transport` owns connections; this module only speaks the
protocol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx

__all__ = ["MAX_HEAD", "H1Connection", "Origin", "ResponseStream", "encode_head"]

#: The most bytes a response head (or a chunk-size line, or the trailer section) may
#: take. A server that sends more is broken or hostile; we refuse rather than buffer.
MAX_HEAD: Final = 64 * 1024
# Above this many buffered body bytes the socket is paused, until the consumer takes
# them (it takes all that is queued at once). High enough that a fast consumer never
# sees a pause, low enough that a slow one does not make us hold megabytes.
_HIGH_WATER: Final = 256 * 1024

# Parser states.
_IDLE: Final = 0  # No request in flight: any byte from the server is a protocol error.
_HEAD: Final = 1  # Waiting for a status line and headers.
_LENGTH: Final = 2  # In a Content-Length body; `_remaining` bytes to go.
_CHUNK_SIZE: Final = 3  # Waiting for a chunk-size line.
_CHUNK_DATA: Final = 4  # In a chunk; `_remaining` bytes to go.
_CHUNK_CRLF: Final = 5  # Waiting for the CRLF that ends a chunk's data.
_TRAILERS: Final = 6  # After the last chunk: trailer lines until an empty one.
_UNTIL_CLOSE: Final = 7  # Body delimited by the end of the connection.
_DONE: Final = 8  # Response complete (maybe not yet consumed).

#: A pool key: scheme, host (IDNA-encoded, as httpx gives it) and port.
Origin = tuple[bytes, bytes, int]

_HEXDIGITS: Final = b"0123456789abcdefABCDEF"
_WHITESPACE: Final = b" \t"


def encode_head(request: httpx.Request) -> tuple[bytes, bool, int, bool]:
    """Serialize a request's head.

    Args:
        request: The request; httpx has already added Host and the body's framing
            headers.

    Returns:
        The head bytes, whether the body must be sent chunked, the declared
        Content-Length (-1 when there is none), and whether the request asked for
        `Connection: close`.

    Raises:
        httpx.LocalProtocolError: A header would break the message framing.
    """
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    extend = parts.extend
    chunked = False
    length = -1
    close = False
    lines = 2  # The request line and the blank line that ends the head.
    for name, value in request.headers.raw:
        extend((name, b": ", value, b"\r\n"))
        lines += 1
        # Only three header names matter to framing; compare lengths first so that
        # most headers cost one len() here.
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = _parse_length(value, httpx.LocalProtocolError)
        elif size == 17 and name.lower() == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif size == 10 and name.lower() == b"connection":
            close = b"close" in value.lower()
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a name or value would end the header early and let the rest
    # be read as something else (request smuggling). httpx does not reject them, so
    # count line breaks once over the whole head instead of checking every value.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise httpx.LocalProtocolError("Illegal line break in a request header.")
    if chunked and length != -1:
        # Each side would frame the body its own way (RFC 9112 section 6.1).
        raise httpx.LocalProtocolError("Both Content-Length and Transfer-Encoding are set.")
    return head, chunked, length, close


def _parse_length(value: bytes, error: type[httpx.ProtocolError]) -> int:
    if value.isdigit() and len(value) < 19:
        return int(value)  # The only form seen in practice: plain ASCII digits.
    # Several Content-Length values joined by commas are allowed only when they agree
    # (RFC 9110 section 8.6); `int()` alone would also accept "+1", " 1" and "1_0".
    first = value.split(b",", 1)[0].strip(_WHITESPACE)
    if (
        not first.isdigit()
        or len(first) > 18
        or any(part.strip(_WHITESPACE) != first for part in value.split(b","))
    ):
        raise error(f"Invalid Content-Length: {value!r}.")
    return int(first)


def _close_orphan(transport: asyncio.Transport) -> None:
    # The connection's event loop has been closed (asyncio.run() returned while it
    # sat in the pool), so transport.close() would raise "Event loop is closed".
    # asyncio's socket transports release their socket in _call_connection_lost,
    # which needs no loop. It is private, so it is only tried where it exists; a
    # transport without it (TLS, other loops) is left to the garbage collector.
    release = getattr(transport, "_call_connection_lost", None)
    if release is not None:
        with contextlib.suppress(Exception):
            release(None)


def _wake_on_timeout(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class H1Connection(asyncio.Protocol):
    """An HTTP/1.1 connection to one origin, carrying one request at a time.

    Attributes:
        loop: The event loop the connection lives on.
        origin: The pool's key for this connection.
        idle_since: Loop time at which the connection last went back to the pool.
        in_pool: True while the pool holds it as idle.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        on_lost: Callable[[H1Connection], None],
    ) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self.in_pool = False
        self.loop = loop
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._closing = False
        self._keep_alive = True
        self._request: httpx.Request | None = None
        self._head_only = False
        self._exc: httpx.TransportError | None = None
        self._state = _IDLE
        self._buf = bytearray()
        self._remaining = 0
        self._got_bytes = False
        self._trailer_bytes = 0
        self.status = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._read_paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None

    # -- protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - loop contract
        self._transport = transport
        if self._closing:
            # Closed (by the pool's aclose) while it was still connecting.
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._feed(data)
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> None:
        self._keep_alive = False
        self._end_of_stream(None)
        # Returning None lets the transport close itself: we never write after EOF.

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_of_stream(exc)
        self._wake_writer()
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- used by the pool -----------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        return self._keep_alive and not self._closed and self._state == _IDLE

    @property
    def write_paused(self) -> bool:
        """True while the socket's write buffer is above its high-water mark."""
        return self._write_paused

    @property
    def response_complete(self) -> bool:
        """True when the whole response has been received (not necessarily consumed)."""
        return self._state == _DONE and self._exc is None

    def close(self) -> None:
        """Close the socket, now or as soon as it is connected. Idempotent."""
        self._keep_alive = False
        self._closing = True
        transport = self._transport
        if transport is not None:
            if self.loop.is_closed():
                _close_orphan(transport)
            else:
                transport.close()

    def abort(self) -> None:
        """Drop the socket at once, without flushing what is still buffered."""
        self._keep_alive = False
        self._closing = True
        transport = self._transport
        if transport is not None:
            if self.loop.is_closed():
                _close_orphan(transport)
            else:
                transport.abort()

    # -- sending --------------------------------------------------------------------

    def start(self, request: httpx.Request, *, close: bool) -> None:
        """Prepare to receive the response to `request`, before any byte is sent."""
        self._request = request
        self._head_only = request.method == "HEAD"
        self._got_bytes = False
        self._exc = None
        self._state = _HEAD
        if close:
            self._keep_alive = False

    def write(self, data: bytes) -> None:
        """Queue bytes on the socket.

        Raises:
            httpx.WriteError: The connection is already closed.
        """
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise self._exc or httpx.WriteError(
                "Connection closed while sending the request.", request=self._request
            )
        transport.write(data)

    async def drain(self, timeout: float | None) -> None:
        """Wait until the socket's write buffer is below its high-water mark.

        Raises:
            httpx.WriteTimeout: It stayed full for `timeout` seconds.
            httpx.WriteError: The connection was lost meanwhile.
        """
        while self._write_paused:
            if self._closed:
                raise self._exc or httpx.WriteError(
                    "Connection closed while sending the request.", request=self._request
                )
            waiter = self.loop.create_future()
            self._drain_waiter = waiter
            handle = (
                None if timeout is None else self.loop.call_later(timeout, _wake_on_timeout, waiter)
            )
            try:
                ok = await waiter
            finally:
                self._drain_waiter = None
                if handle is not None:
                    handle.cancel()
            if not ok:
                raise httpx.WriteTimeout("Timed out sending the request.", request=self._request)

    # -- receiving ------------------------------------------------------------------

    async def receive_head(self, timeout: float | None) -> None:
        """Wait for the final response head; then `status`, `reason`, `headers` are set.

        Raises:
            httpx.ReadTimeout: No head within `timeout` seconds.
            httpx.TransportError: The server broke the protocol or the connection.
        """
        while self._state == _HEAD and self._exc is None:
            await self._wait(timeout)
        if self._exc is not None:
            raise self._exc

    async def receive_body(self, timeout: float | None) -> bytes | None:
        """Return the body bytes received so far, waiting for some if there are none.

        Returns:
            Bytes, or None once the body is complete and everything has been returned.

        Raises:
            httpx.ReadTimeout: No bytes arrived within `timeout` seconds.
            httpx.TransportError: The server broke the protocol or the connection.
        """
        body = self._body
        while not body:
            if self._exc is not None:
                raise self._exc
            if self._state == _DONE:
                return None
            await self._wait(timeout)
        # Hand over everything queued in one piece: fewer trips through httpx's
        # iterators, and still nothing held back that has arrived.
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return chunk

    def take_body(self) -> bytes:
        """Return the whole body of a response already complete, and reset the queue."""
        body = self._body
        chunk = (body.popleft() if len(body) == 1 else b"".join(body)) if body else b""
        body.clear()
        self._buffered = 0
        return chunk

    def finish(self) -> None:
        """Mark the exchange over so that the connection may carry another request."""
        self._state = _IDLE
        self._request = None
        self.headers = []

    async def _wait(self, timeout: float | None) -> None:
        # One read timer per connection, re-armed lazily. Deadlines on a keep-alive
        # connection only move later, so a timer armed for an earlier request fires
        # early, finds the deadline moved, and re-arms once: a connection serving
        # thousands of quick requests sets a timer per `timeout` seconds, not per
        # request (call_later and cancel were a visible share of the hot path).
        loop = self.loop
        waiter = loop.create_future()
        self._waiter = waiter
        if timeout is None:
            self._deadline = None
        else:
            deadline = loop.time() + timeout
            self._deadline = deadline
            if self._timer is None or self._timer_when > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
                self._timer_when = deadline
        try:
            ok = await waiter
        finally:
            self._waiter = None
        if not ok:
            raise httpx.ReadTimeout("Timed out waiting for the server.", request=self._request)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        deadline = self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # Nobody waiting (now); the next wait arms a new timer.
        if deadline <= self._timer_when:
            waiter.set_result(False)
        else:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_when = deadline

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, exc: httpx.TransportError) -> None:
        if self._exc is None:
            self._exc = exc
        self._keep_alive = False
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def _end_of_stream(self, exc: Exception | None) -> None:
        state = self._state
        if state in (_IDLE, _DONE) or self._exc is not None:
            return
        if state == _UNTIL_CLOSE and exc is None:
            self._state = _DONE
            self._wake()
            return
        request = self._request
        error: httpx.TransportError
        if exc is not None:
            error = httpx.ReadError(str(exc) or type(exc).__name__, request=request)
        elif state == _HEAD and not self._got_bytes:
            error = httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        elif state == _HEAD:
            error = httpx.RemoteProtocolError(
                "Server disconnected while sending the response head.", request=request
            )
        else:
            error = httpx.RemoteProtocolError(
                "Server disconnected before the response body was complete.", request=request
            )
        self._fail(error)

    # -- parsing --------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            # A head or a line was cut by the previous read. Append, and only copy
            # the whole buffer out once it holds what was missing, so that a server
            # sending a byte at a time costs linear time.
            old = len(buf)
            buf += data
            if not self._buffer_ready(buf, old):
                if len(buf) > MAX_HEAD:
                    self._too_big()
                return
            data = bytes(buf)
            buf.clear()
        self._got_bytes = True
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _LENGTH or state == _CHUNK_DATA:  # noqa: PLR1714, SIM109 - no tuple built per call
                take = end - pos
                remaining = self._remaining
                take = min(take, remaining)
                self._push(data if take == end else data[pos : pos + take])
                pos += take
                remaining -= take
                self._remaining = remaining
                if not remaining:
                    if state == _LENGTH:
                        self._complete()
                    else:
                        self._state = _CHUNK_CRLF
            elif state == _HEAD:
                i = data.find(b"\r\n\r\n", pos)
                if i < 0:
                    if end - pos > MAX_HEAD:
                        self._too_big()
                    buf += data[pos:]
                    return
                if i - pos > MAX_HEAD:
                    self._too_big()
                self._parse_head(data[pos:i])
                pos = i + 4
            elif state == _CHUNK_SIZE:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    buf += data[pos:]
                    if len(buf) > MAX_HEAD:
                        self._too_big()
                    return
                size = self._parse_chunk_size(data[pos:i])
                pos = i + 2
                if size:
                    self._remaining = size
                    self._state = _CHUNK_DATA
                else:
                    self._trailer_bytes = 0
                    self._state = _TRAILERS
            elif state == _CHUNK_CRLF:
                if end - pos < 2:
                    buf += data[pos:]
                    return
                if data[pos : pos + 2] != b"\r\n":
                    raise self._protocol_error("Missing CRLF after a chunk.")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                # Trailers are read past and dropped: httpx has no place for them.
                i = data.find(b"\r\n", pos)
                if i < 0:
                    buf += data[pos:]
                    if self._trailer_bytes + len(buf) > MAX_HEAD:
                        self._too_big()
                    return
                self._trailer_bytes += i - pos + 2
                if self._trailer_bytes > MAX_HEAD:
                    self._too_big()
                if i == pos:
                    self._complete()
                pos = i + 2
            elif state == _UNTIL_CLOSE:
                self._push(data if pos == 0 else data[pos:])
                return
            else:
                # Bytes with no request in flight, or after a complete response: the
                # server is confused and the connection must not carry more requests.
                self._keep_alive = False
                if state == _IDLE and self._transport is not None:
                    self._transport.abort()
                return

    def _buffer_ready(self, buf: bytearray, old: int) -> bool:
        # Whether the bytes appended since a cut read let the parser make progress.
        state = self._state
        if state == _HEAD:
            return buf.find(b"\r\n\r\n", max(0, old - 3)) >= 0
        if state in (_CHUNK_SIZE, _TRAILERS):
            return buf.find(b"\r\n", max(0, old - 1)) >= 0
        if state == _CHUNK_CRLF:
            return len(buf) >= 2
        return True

    def _push(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def _complete(self) -> None:
        self._state = _DONE
        self._wake()

    def _too_big(self) -> None:
        raise self._protocol_error(f"Response head or line exceeds {MAX_HEAD} bytes.")

    def _protocol_error(self, message: str) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(message, request=self._request)

    def _parse_chunk_size(self, line: bytes) -> int:
        size = line.split(b";", 1)[0].strip(_WHITESPACE)
        if not size or len(size) > 15 or size.strip(_HEXDIGITS):
            raise self._protocol_error(f"Invalid chunk size line: {line[:40]!r}.")
        return int(size, 16)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise self._protocol_error(f"Invalid status line: {lines[0][:80]!r}.")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            # Informational responses (100 Continue, 103 Early Hints) precede the real
            # one and are dropped; the state stays _HEAD.
            return
        keep_alive = version == b"HTTP/1.1"
        length = -1
        chunked = False
        coded = False
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1] in _WHITESPACE or name[0] in _WHITESPACE:
                # Also rejects obsolete line folding (a line starting with whitespace),
                # which RFC 9112 section 5.2 lets a client reject.
                raise self._protocol_error(f"Invalid header line: {line[:80]!r}.")
            value = value.strip(_WHITESPACE)
            append((name, value))
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                new = _parse_length(value, httpx.RemoteProtocolError)
                if length not in (-1, new):
                    raise self._protocol_error("Conflicting Content-Length headers.")
                length = new
            elif size == 17 and name.lower() == b"transfer-encoding":
                coded = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip(_WHITESPACE) == b"chunked"
            elif size == 10 and name.lower() == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        self.status = status
        self.reason = reason
        self.http_version = version
        self.headers = headers
        if not keep_alive:
            self._keep_alive = False
        # Body framing, in the order of RFC 9112 section 6.3.
        if self._head_only or status in (204, 304) or status == 101:
            if status == 101:
                # We do not speak the upgraded protocol; the connection is done for.
                self._keep_alive = False
            self._state = _DONE
        elif coded:
            if length != -1:
                # Both headers: a sign of smuggling; Transfer-Encoding wins, and the
                # connection is not trusted for another request (RFC 9112 section 6.1).
                self._keep_alive = False
            if chunked:
                self._state = _CHUNK_SIZE
            else:
                self._keep_alive = False
                self._state = _UNTIL_CLOSE
        elif length > 0:
            self._remaining = length
            self._state = _LENGTH
        elif length == 0:
            self._state = _DONE
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE
        self._wake()


class ResponseStream(httpx.AsyncByteStream):
    """The body of a response still arriving, handed to httpx as the response stream.

    Iterating yields bytes as they arrive. Reaching the end gives the connection back
    to the pool; closing earlier, or any error or cancellation while reading, closes
    it instead, since its state is then unknown.
    """

    def __init__(
        self,
        conn: H1Connection,
        release: Callable[[H1Connection, bool], None],
        timeout: float | None,
    ) -> None:
        self._conn: H1Connection | None = conn
        self._release = release
        self._timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            chunk = await conn.receive_body(self._timeout)
        except BaseException:
            self._conn = None
            self._release(conn, False)
            raise
        if chunk is None:
            self._conn = None
            conn.finish()
            self._release(conn, True)
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Release the connection: back to the pool only if the response was complete."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            # A response fully received but not fully iterated leaves the connection
            # in a known state, so it may be reused; anything else may not.
            if conn.response_complete:
                conn.take_body()
                conn.finish()
                self._release(conn, True)
            else:
                self._release(conn, False)
