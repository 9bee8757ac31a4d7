"""An httpx transport with a lean HTTP/1.1 keep-alive pool on raw asyncio.

Why it exists: with 2,000 requests fanned out by `asyncio.gather`, httpx's default
transport (httpcore's pool under anyio) times out or manages about an eighth of what
aiohttp does against the same server, while the httpx client layer above it is fast.
This transport keeps the httpx interface (users still pass an `httpx.AsyncClient`)
and replaces only what is below it.

This module is the httpx-facing side: it turns an `httpx.Request` into bytes on a
connection and the response into an `httpx.Response`, falls back to httpx's own
transport when respx mocks it, and reports the pool's counts. The pool is in
`nanobanana._pool`, one connection in `nanobanana._connection`, and the HTTP/1.1
parsing in `nanobanana._h1`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

import attrs
import httpx

from nanobanana._connection import H1Connection
from nanobanana._h1 import encode_head
from nanobanana._pool import ConnectionPool

if TYPE_CHECKING:
    import ssl

__all__ = ["AsyncioTransport", "ResponseStream", "TransportStats"]

_SMALL_BODY: Final = 64 * 1024  # Bodies up to this size go out in the head's write.

DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=100, keepalive_expiry=5.0
)


@attrs.frozen(kw_only=True)
class TransportStats:
    """A snapshot of an `AsyncioTransport`'s pool.

    Attributes:
        open: Connections open or being opened.
        idle: Open connections waiting in the pool for a request.
        active: Open connections carrying a request (`open - idle`).
        waiting: Requests queued for a connection.
    """

    open: int
    idle: int
    active: int
    waiting: int


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


class AsyncioTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 transport for `httpx.AsyncClient`, built on asyncio protocols.

    It runs only under asyncio. When respx's default (httpcore) mocker is active, it
    sends through a plain `httpx.AsyncHTTPTransport` so that the mocks see the request.

    Example:
        ```python
        async with httpx.AsyncClient(transport=AsyncioTransport()) as client:
            response = await client.get("http://127.0.0.1:8000/")
        ```

    Args:
        limits: `max_connections` caps open connections across all origins (None: no
            cap); `max_keepalive_connections` caps idle ones; `keepalive_expiry` is how
            long, in seconds, an idle connection may be reused (None: forever).
        ssl_context: For https URLs; `httpx.create_ssl_context()` is made on first use
            when None.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits
        self._pool = ConnectionPool(limits=limits, ssl_context=ssl_context)
        self._fallback: httpx.AsyncHTTPTransport | None = None

    def stats(self) -> TransportStats:
        """Count the pool's connections and queued requests."""
        pool = self._pool
        return TransportStats(
            open=pool.open_count,
            idle=pool.idle_count,
            active=pool.open_count - pool.idle_count,
            waiting=pool.waiting_count,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request and return its response, with the body still streaming.

        Raises:
            httpx.TimeoutException: The pool, connect, write or read timeout passed.
            httpx.NetworkError: The connection could not be made or broke.
            httpx.ProtocolError: A side broke HTTP/1.1.
            RuntimeError: Not running under asyncio, or the transport was closed while
                the request waited for a connection.
        """
        mocks = sys.modules.get("respx.mocks")
        if mocks is not None and mocks.HTTPCoreMocker._patches:
            # respx's default mocker patches httpcore's pools, which we bypass.
            return await self._respx_transport().handle_async_request(request)
        pool = self._pool
        loop = pool.bind_loop()
        url = request.url
        scheme = url.raw_scheme
        if scheme == b"https":
            default_port = 443
        elif scheme == b"http":
            default_port = 80
        else:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        timeouts = request.extensions.get("timeout") or {}
        read_timeout: float | None = timeouts.get("read")
        # Encode before taking a connection, so that a bad header costs none.
        head, chunked, length, close = encode_head(request)
        origin = (scheme, url.raw_host, url.port or default_port)
        # The common case first: an idle connection to reuse, no coroutine to await.
        conn = pool.reuse(loop, origin)
        if conn is None:
            conn = await pool.acquire(loop, origin, request, timeouts)
        try:
            conn.start(request, close=close)
            body = request.stream
            if isinstance(body, httpx.ByteStream):
                self._write_bytes(conn, request, body, head, chunked=chunked, length=length)
                if conn.write_paused:
                    await conn.drain(timeouts.get("write"))
            else:
                await self._write_stream(
                    conn,
                    request,
                    head,
                    chunked=chunked,
                    length=length,
                    timeout=timeouts.get("write"),
                )
            await conn.receive_head(read_timeout)
        except BaseException:
            pool.release(conn, False)
            raise
        status = conn.status
        headers = conn.headers
        extensions = {"http_version": conn.http_version, "reason_phrase": conn.reason}
        stream: httpx.AsyncByteStream
        if conn.response_complete:
            # The whole response came with its head (the common case for small JSON
            # bodies): give the connection back now and skip the streaming machinery.
            stream = httpx.ByteStream(conn.take_body())
            conn.finish()
            pool.release(conn, True)
        else:
            stream = ResponseStream(conn, pool.release, read_timeout)
        return httpx.Response(status, headers=headers, stream=stream, extensions=extensions)

    async def aclose(self) -> None:
        """Close every connection, and fail the requests waiting for one.

        It may be awaited on a later event loop than the one the connections were made
        on, once that one has ended (a client used across `asyncio.run()` calls).
        """
        await self._pool.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()

    def _respx_transport(self) -> httpx.AsyncHTTPTransport:
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport(
                limits=self._limits, verify=self._pool.ssl_context or True
            )
        return self._fallback

    # -- sending ----------------------------------------------------------------------

    def _write_bytes(
        self,
        conn: H1Connection,
        request: httpx.Request,
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
            raise httpx.LocalProtocolError(
                "Request body does not match its Content-Length.", request=request
            )
        if len(body) <= _SMALL_BODY:
            conn.write(head + body)  # One send() for head and body.
        else:
            conn.write(head)
            conn.write(body)

    async def _write_stream(
        self,
        conn: H1Connection,
        request: httpx.Request,
        head: bytes,
        *,
        chunked: bool,
        length: int,
        timeout: float | None,
    ) -> None:
        stream = request.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("Attempted to send a sync request body with an async transport.")
        if not chunked and length == -1:
            head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
            chunked = True
        conn.write(head)
        sent = 0
        async for chunk in stream:
            if not chunk:
                continue  # An empty chunk would end a chunked body early.
            if chunked:
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                sent += len(chunk)
                if sent > length:
                    raise httpx.LocalProtocolError(
                        "Request body is longer than its Content-Length.", request=request
                    )
                conn.write(chunk)
            if conn.write_paused:
                await conn.drain(timeout)
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif sent != length:
            raise httpx.LocalProtocolError(
                "Request body is shorter than its Content-Length.", request=request
            )
        if conn.write_paused:
            await conn.drain(timeout)
