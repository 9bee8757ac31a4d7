"""One HTTP/1.1 client connection, as a raw `asyncio.Protocol`.

The bytes are parsed inside `data_received` by `nanobanana._h1.H1Parser`, which this
class extends with the I/O: body bytes are queued for the consumer as they arrive, so
a server-sent event stream is seen event by event, and the socket stops being read
while too much is queued (backpressure).

The connection never sends a second request before the first response is complete
(no pipelining), so it only ever has one reader and one writer waiting on it. Waits
are plain futures resolved by the protocol callbacks or by a timer, never tasks.

Why it is a module: it is the one place that touches an asyncio transport. The pool
in `nanobanana._pool` owns connections; this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Final

import httpx

from nanobanana._h1 import DONE, HEAD, IDLE, UNTIL_CLOSE, H1Parser

__all__ = ["H1Connection", "Origin"]

# Above this many buffered body bytes the socket is paused, until the consumer takes
# them (it takes all that is queued at once). High enough that a fast consumer never
# sees a pause, low enough that a slow one does not make us hold megabytes.
_HIGH_WATER: Final = 256 * 1024

#: A pool key: scheme, host (IDNA-encoded, as httpx gives it) and port.
Origin = tuple[bytes, bytes, int]


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


class H1Connection(H1Parser, asyncio.Protocol):
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
        super().__init__()
        self.origin = origin
        self.idle_since = 0.0
        self.in_pool = False
        self.loop = loop
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._closing = False
        self._exc: httpx.TransportError | None = None
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
        return self._keep_alive and not self._closed and self._state == IDLE

    @property
    def write_paused(self) -> bool:
        """True while the socket's write buffer is above its high-water mark."""
        return self._write_paused

    @property
    def response_complete(self) -> bool:
        """True when the whole response has been received (not necessarily consumed)."""
        return self._state == DONE and self._exc is None

    def close(self) -> None:
        """Close the socket, now or as soon as it is connected. Idempotent."""
        self._shut(flush=True)

    def abort(self) -> None:
        """Drop the socket at once, without flushing what is still buffered."""
        self._shut(flush=False)

    def _shut(self, *, flush: bool) -> None:
        self._keep_alive = False
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if self.loop.is_closed():
            _close_orphan(transport)
        elif flush:
            transport.close()
        else:
            transport.abort()

    # -- sending --------------------------------------------------------------------

    def start(self, request: httpx.Request, *, close: bool) -> None:
        """Prepare to receive the response to `request`, before any byte is sent."""
        self._request = request
        self._head_only = request.method == "HEAD"
        self._got_bytes = False
        self._exc = None
        self._state = HEAD
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
        while self._state == HEAD and self._exc is None:
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
            if self._state == DONE:
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
        self._state = IDLE
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
        if state in (IDLE, DONE) or self._exc is not None:
            return
        if state == UNTIL_CLOSE and exc is None:
            self._state = DONE
            self._wake()
            return
        request = self._request
        error: httpx.TransportError
        if exc is not None:
            error = httpx.ReadError(str(exc) or type(exc).__name__, request=request)
        elif state == HEAD and not self._got_bytes:
            error = httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        elif state == HEAD:
            error = httpx.RemoteProtocolError(
                "Server disconnected while sending the response head.", request=request
            )
        else:
            error = httpx.RemoteProtocolError(
                "Server disconnected before the response body was complete.", request=request
            )
        self._fail(error)

    # -- effects of parsing (see H1Parser) ------------------------------------------

    def _push(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def _on_stray_bytes(self) -> None:
        if self._transport is not None:
            self._transport.abort()
