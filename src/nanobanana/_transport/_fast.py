"""The fast path: one HTTP/1.1 exchange on the keep-alive pool, in httpcore's terms.

`FastPool` takes an `httpcore.Request` and returns an `httpcore.Response`, as
httpcore's own pools do, so that httpx's `AsyncHTTPTransport` can call it in their
place (see `nanobanana._transport._transport`). It raises httpcore's exceptions,
which httpx maps to its own.

Why it exists: with 2,000 requests fanned out by `asyncio.gather`, httpcore's pool
under anyio times out or manages about an eighth of what aiohttp does against the
same server, while the httpx client layer above it is fast. This replaces only
what is below httpx's transport: the pool (`nanobanana._transport._pool`), one
connection (`nanobanana._transport._connection`), the connect
(`nanobanana._transport._connect`) and the request head (`_wire`); responses are
parsed by llhttp or h11 (`_parsers`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

import httpcore
import httpx

from nanobanana._transport._connection import H1Connection, NotSentError
from nanobanana._transport._pool import CLOSE_WAIT, ConnectionPool
from nanobanana._transport._wire import encode_head

if TYPE_CHECKING:
    import ssl

    from nanobanana._transport._parsers import ParserFactory

__all__ = ["ABORT_ON_DISCARD", "CLOSE_WAIT", "FastPool", "ResponseStream"]

_SMALL_BODY: Final = 64 * 1024  # Bodies up to this size go out in the head's write.

#: A request extension (``httpx.Request(..., extensions={ABORT_ON_DISCARD: True})``):
#: if the response is closed before its end (an error, a cancellation), drop the
#: connection at once instead of half-closing it and waiting for the server's close.
#: For requests that hold no slot on the server, such as image downloads from a CDN:
#: the wait is only worth it where a concurrency slot is freed after the close.
ABORT_ON_DISCARD: Final = "nanobanana.abort_on_discard"


class _Complete:
    """The body of a response that arrived whole with its head: one chunk, no I/O."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Complete:
        return self

    async def __anext__(self) -> bytes:
        data = self._data
        if data is None:
            raise StopAsyncIteration
        self._data = None
        return data

    async def aclose(self) -> None:
        """Nothing to release: the connection went back to the pool already."""
        self._data = None


class ResponseStream:
    """The body of a response still arriving, as httpcore's response streams are.

    Iterating yields bytes as they arrive. Reaching the end gives the connection back
    to the pool; closing earlier, or any error or cancellation while reading, closes
    it instead, since its state is then unknown. Closing a discarded connection
    half-closes it and returns once the server has closed its end too (bounded by
    `CLOSE_WAIT`), so that what the caller releases next (a concurrency slot) is
    released after the server let go of the request. With ``graceful=False``
    (`ABORT_ON_DISCARD`) it drops the connection at once instead.
    """

    def __init__(
        self,
        conn: H1Connection,
        release: Callable[[H1Connection, bool], None],
        timeout: float | None,
        *,
        graceful: bool = True,
    ) -> None:
        self._conn: H1Connection | None = conn
        self._release = release
        self._timeout = timeout
        self._graceful = graceful
        self._discarded: H1Connection | None = None  # being shut down, not yet lost

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
            self._discard(conn)
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
        if conn is None:
            await self._wait_discarded()  # a read that failed has shut it down already
            return
        self._conn = None
        # A response fully received but not fully iterated leaves the connection in a
        # known state, so it may be reused; anything else may not.
        if conn.response_complete:
            conn.take_body()
            conn.finish()
            self._release(conn, True)
            return
        self._discard(conn)
        await self._wait_discarded()

    def _discard(self, conn: H1Connection) -> None:
        """Shut the connection down; it goes back to the pool once the server closed too.

        A half-close tells the server the request is over; when its end closes in turn
        (or after `CLOSE_WAIT`, when the socket is dropped) the connection is given
        back. No await: this also runs on the way out of a cancelled read, and `aclose`
        waits for it.
        """
        if conn.lost:
            self._release(conn, False)  # the server has closed it already
            return
        if not self._graceful:
            conn.abort()
            self._release(conn, False)
            return
        self._discarded = conn
        conn.shut_down()
        lost = conn.lost_future()
        timer = conn.loop.call_later(CLOSE_WAIT, conn.abort)

        def given_back(_: object) -> None:
            timer.cancel()
            self._release(conn, False)

        lost.add_done_callback(given_back)

    async def _wait_discarded(self) -> None:
        # Returns once the server has let go of the request (or the socket was
        # dropped), so that what the caller frees next, a concurrency slot, is free on
        # the server too.
        conn, self._discarded = self._discarded, None
        if conn is not None:
            await conn.wait_lost(CLOSE_WAIT + 0.5)


class FastPool:
    """HTTP/1.1 over asyncio protocols, for `httpx.AsyncHTTPTransport` to call.

    Args:
        limits: The connection limits, as httpx's.
        ssl_context: For https URLs (made by httpx's `create_ssl_context`).
        parser: The response parser backend.
    """

    def __init__(
        self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext, parser: ParserFactory
    ) -> None:
        self.pool = ConnectionPool(limits=limits, ssl_context=ssl_context, parser=parser)

    async def aclose(self) -> None:
        """Close every connection, and fail the requests waiting for one."""
        await self.pool.aclose()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send one request and return its response, with the body still streaming.

        Raises:
            httpcore.TimeoutException: The pool, connect, write or read timeout passed.
            httpcore.NetworkError: The connection could not be made or broke.
            httpcore.ProtocolError: A side broke HTTP/1.1.
            httpcore.UnsupportedProtocol: Not an http or https URL.
            RuntimeError: The transport was closed while the request waited.
        """
        pool = self.pool
        loop = pool.bind_loop()
        url = request.url
        scheme = url.scheme
        if scheme == b"https":
            default_port = 443
        elif scheme == b"http":
            default_port = 80
        else:
            raise httpcore.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme.decode('ascii')}://'."
            )
        method = request.method
        timeouts = request.extensions.get("timeout") or {}
        read_timeout: float | None = timeouts.get("read")
        # Encode before taking a connection, so that a bad header costs none.
        head, chunked, length, close = encode_head(method, url.target, request.headers)
        origin = (scheme, url.host, url.port or default_port)
        head_only = method == b"HEAD"
        while True:
            # The common case first: an idle connection to reuse, no coroutine to await.
            conn = pool.reuse(loop, origin)
            reused = conn is not None
            if conn is None:
                conn = await pool.acquire(loop, origin, timeouts)
            try:
                conn.start(head_only=head_only, close=close)
                body = request.stream
                if isinstance(body, httpx.ByteStream):
                    self._write_bytes(conn, body, head, chunked=chunked, length=length)
                    if conn.write_paused:
                        await conn.drain(timeouts.get("write"))
                else:
                    await self._write_stream(
                        conn,
                        body,
                        head,
                        chunked=chunked,
                        length=length,
                        timeout=timeouts.get("write"),
                    )
                await conn.receive_head(read_timeout)
            except NotSentError:
                pool.release(conn, False)
                if reused:
                    continue  # Closed while idle, and nothing was sent: use another.
                raise
            except BaseException:
                pool.release(conn, False)
                raise
            break
        status, headers = conn.status, conn.headers
        extensions = {"http_version": conn.http_version, "reason_phrase": conn.reason}
        stream: _Complete | ResponseStream
        if conn.response_complete:
            # The whole response came with its head (the common case for small JSON
            # bodies): give the connection back now and skip the streaming machinery.
            stream = _Complete(conn.take_body())
            conn.finish()
            pool.release(conn, True)
        else:
            graceful = not request.extensions.get(ABORT_ON_DISCARD, False)
            stream = ResponseStream(conn, pool.release, read_timeout, graceful=graceful)
        return httpcore.Response(status, headers=headers, content=stream, extensions=extensions)

    # -- sending ----------------------------------------------------------------------

    @staticmethod
    def _write_bytes(
        conn: H1Connection,
        stream: httpx.ByteStream,
        head: bytes,
        *,
        chunked: bool,
        length: int,
    ) -> None:
        # The common case: the body is already in memory (bytes, json=, data=).
        body = b"".join(stream)
        if chunked:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        elif length == -1:
            if body:
                # No framing header: add one rather than send an unframed body.
                head = head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body)
        elif length != len(body):
            raise httpcore.LocalProtocolError("Request body does not match its Content-Length.")
        if len(body) <= _SMALL_BODY:
            conn.write(head + body, first=True)  # One send() for head and body.
        else:
            conn.write(head, first=True)
            conn.write(body)

    @staticmethod
    async def _write_stream(
        conn: H1Connection,
        stream: object,
        head: bytes,
        *,
        chunked: bool,
        length: int,
        timeout: float | None,
    ) -> None:
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("Attempted to send a sync request body with an async transport.")
        if not chunked and length == -1:
            head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
            chunked = True
        conn.write(head, first=True)
        sent = 0
        async for chunk in stream:
            if not chunk:
                continue  # An empty chunk would end a chunked body early.
            if chunked:
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                sent += len(chunk)
                if sent > length:
                    raise httpcore.LocalProtocolError(
                        "Request body is longer than its Content-Length."
                    )
                conn.write(chunk)
            if conn.write_paused:
                await conn.drain(timeout)
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif sent != length:
            raise httpcore.LocalProtocolError("Request body is shorter than its Content-Length.")
        if conn.write_paused:
            await conn.drain(timeout)
