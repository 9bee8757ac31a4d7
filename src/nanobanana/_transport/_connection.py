"""One HTTP/1.1 client connection, as a raw `asyncio.Protocol`.

Bytes are handed to a response parser (`nanobanana._transport._parsers`) inside
`data_received`, and this class does the I/O around what it parses: body bytes are
queued for the consumer as they arrive, so a server-sent event stream is seen event
by event, and the socket stops being read while too much is queued (backpressure).

The connection never sends a second request before the first response is complete
(no pipelining), so it only ever has one reader and one writer waiting on it. Waits
are plain futures resolved by the protocol callbacks or by a timer, never tasks.

It only uses what every asyncio event loop's transports offer (asyncio's own and
uvloop's alike): no `isinstance` checks on the transport, no private methods.
"""

from __future__ import annotations

import asyncio
import collections
import select
from collections.abc import Callable
from typing import Final, cast

import httpcore

from nanobanana._transport._parsers import ParserFactory

__all__ = ["H1Connection", "NotSentError", "Origin"]

# Above this many buffered body bytes the socket is paused, until the consumer takes
# them (it takes all that is queued at once). High enough that a fast consumer never
# sees a pause, low enough that a slow one does not make us hold megabytes.
_HIGH_WATER: Final = 256 * 1024

# While a connection is shut down, at most this much of what the server still sends is
# read (and dropped) waiting for its close; past it the socket is dropped at once.
_DISCARD_LIMIT: Final = 256 * 1024

#: A pool key: scheme, host (IDNA-encoded, as httpx gives it) and port.
Origin = tuple[bytes, bytes, int]

# The connection's side of one exchange.
IDLE: Final = 0  # No request in flight: any byte from the server is a protocol error.
HEAD: Final = 1  # Waiting for the final response head.
BODY: Final = 2  # Receiving the body.
DONE: Final = 3  # Response complete (maybe not yet consumed).


class NotSentError(httpcore.WriteError):
    """The connection was closed before any byte of the request was written.

    Nothing reached the server, so even a ``POST /generate`` may be sent again:
    `nanobanana._retry` reads the ``nanobanana_not_sent`` mark on the cause.
    """

    nanobanana_not_sent = True


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
        status: The final response's status code, once its head is parsed.
        reason: Its reason phrase.
        http_version: Its HTTP version, `b"HTTP/1.1"` or `b"HTTP/1.0"`.
        headers: Its header fields, in order.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        on_lost: Callable[[H1Connection], None],
        parser: ParserFactory,
    ) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self.in_pool = False
        self.loop = loop
        self.status = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self._parser = parser(self)
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None
        self._state = IDLE
        self._keep_alive = True
        self._got_bytes = False
        self._closed = False
        self._closing = False
        self._exc: httpcore.NetworkError | httpcore.ProtocolError | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._read_paused = False
        self._discarding = False  # half-closed by us: what still arrives is dropped
        self._dropped = 0  # bytes dropped since
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any loop's stream transport (asyncio's, uvloop's) has the methods we use,
        # whatever class it is: no isinstance check (uvloop's are not asyncio's).
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            poll = select.poll()
            poll.register(sock.fileno(), select.POLLIN)
            self._poll = poll
        if self._closing:
            # Closed (by the pool's aclose) while it was still connecting.
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            # The rest of a response nobody reads any more. A server that goes on
            # sending (an endless body) is not read on: past a bound, drop the socket.
            self._dropped += len(data)
            if self._dropped > _DISCARD_LIMIT:
                self.abort()
            return
        if self._state == IDLE:
            # Bytes with no request in flight: the server is confused, and the
            # connection must not carry more requests.
            self._keep_alive = False
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed(data)
        except httpcore.RemoteProtocolError as exc:
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
        waiter = self._lost_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- what the parser tells us (nanobanana._transport._parsers.ResponseSink) -------

    def on_head(
        self, status: int, reason: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self._state = BODY
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_complete(self, keep_alive: bool) -> None:
        if not keep_alive:
            self._keep_alive = False
        self._state = DONE
        self._wake()

    def on_stray(self) -> None:
        self._keep_alive = False

    # -- used by the pool -----------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        return self._keep_alive and not self._closed and self._state == IDLE

    def readable(self) -> bool:
        """True when the idle socket has something to read: data, or the server's EOF.

        The loop may not have run since the server closed an idle connection (it was
        blocked, or the close came a moment ago), so `reusable` can still be True for
        a dead socket. Asked just before reuse, as httpcore does, this catches that;
        an idle HTTP/1.1 connection with anything to read is unusable either way.
        """
        poll = self._poll
        return poll is not None and bool(poll.poll(0))

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

    def shut_down(self) -> None:
        """Stop using the connection and tell the server, keeping the socket to see it end.

        A half-close (EOF on our side) where the transport has one, else a close (TLS
        sends its close_notify); what still arrives is dropped. The server sees the
        request end as soon as it reads, and closes its side: waiting for that
        (`wait_lost`) means that the server has let go of the request, so a
        concurrency slot freed afterwards is free on the server too.
        """
        self._keep_alive = False
        self._discarding = True
        transport = self._transport
        if transport is None or self._closed or self.loop.is_closed():
            return
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()  # keep reading, or the server's EOF is never seen
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self._closing = True
            transport.close()

    @property
    def lost(self) -> bool:
        """True once the socket is closed (`connection_lost` ran), or never opened."""
        return self._closed or self._transport is None

    def lost_future(self) -> asyncio.Future[None]:
        """A future resolved when the socket is closed (done already if it is)."""
        waiter = self._lost_waiter
        if waiter is None:
            waiter = self._lost_waiter = self.loop.create_future()
            if self.lost:
                waiter.set_result(None)
        return waiter

    async def wait_lost(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until the socket is really closed."""
        if not self.lost:
            await asyncio.wait([self.lost_future()], timeout=timeout)

    def _shut(self, *, flush: bool) -> None:
        self._keep_alive = False
        self._closing = True
        transport = self._transport
        if transport is None or self.loop.is_closed():
            # A loop that has ended can run no callback; the pool closes connections
            # while their loop still runs (see `nanobanana._transport._pool`).
            return
        if flush:
            transport.close()
        else:
            transport.abort()

    # -- sending --------------------------------------------------------------------

    def start(self, *, head_only: bool, close: bool) -> None:
        """Prepare to receive a response, before any byte of its request is sent."""
        self._parser.start(head_only=head_only)
        self._got_bytes = False
        self._exc = None
        self._state = HEAD
        if close:
            self._keep_alive = False

    def write(self, data: bytes, *, first: bool = False) -> None:
        """Queue bytes on the socket.

        Args:
            data: The bytes.
            first: These are the request's first bytes.

        Raises:
            NotSentError: The connection was already closed and `first` is True:
                nothing of the request left this machine.
            httpcore.WriteError: The connection was closed while sending.
        """
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            if first:
                raise NotSentError("Connection closed before the request was sent.")
            raise self._exc or httpcore.WriteError("Connection closed while sending the request.")
        transport.write(data)

    async def drain(self, timeout: float | None) -> None:
        """Wait until the socket's write buffer is below its high-water mark.

        Raises:
            httpcore.WriteTimeout: It stayed full for `timeout` seconds.
            httpcore.WriteError: The connection was lost meanwhile.
        """
        while self._write_paused:
            if self._closed:
                raise self._exc or httpcore.WriteError(
                    "Connection closed while sending the request."
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
                raise httpcore.WriteTimeout("Timed out sending the request.")

    # -- receiving ------------------------------------------------------------------

    async def receive_head(self, timeout: float | None) -> None:
        """Wait for the final response head; then `status`, `reason`, `headers` are set.

        Raises:
            httpcore.ReadTimeout: No head within `timeout` seconds.
            httpcore.NetworkError: The connection broke.
            httpcore.RemoteProtocolError: The server broke HTTP/1.1.
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
            httpcore.ReadTimeout: No bytes arrived within `timeout` seconds.
            httpcore.NetworkError: The connection broke.
            httpcore.RemoteProtocolError: The server broke HTTP/1.1.
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
            raise httpcore.ReadTimeout("Timed out waiting for the server.")

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

    def _fail(self, exc: httpcore.NetworkError | httpcore.ProtocolError) -> None:
        if self._exc is None:
            self._exc = exc
        self._keep_alive = False
        if self._transport is not None and not self.loop.is_closed():
            self._transport.abort()
        self._wake()

    def _end_of_stream(self, exc: Exception | None) -> None:
        state = self._state
        if state in (IDLE, DONE) or self._exc is not None:
            return
        if state == BODY and exc is None and self._parser.feed_eof():
            self._state = DONE
            self._wake()
            return
        error: httpcore.NetworkError | httpcore.ProtocolError
        if exc is not None:
            error = httpcore.ReadError(str(exc) or type(exc).__name__)
        elif state == HEAD and not self._got_bytes:
            error = httpcore.RemoteProtocolError("Server disconnected without sending a response.")
        elif state == HEAD:
            error = httpcore.RemoteProtocolError(
                "Server disconnected while sending the response head."
            )
        else:
            error = httpcore.RemoteProtocolError(
                "Server disconnected before the response body was complete."
            )
        self._fail(error)
