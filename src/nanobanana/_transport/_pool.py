"""The HTTP/1.1 keep-alive pool of the fast path: slots, idle lists, waiters.

Why it is apart from the transport: the httpx-facing side (encoding a request,
sending its body, wrapping the response) has nothing to do with the accounting that
decides which connection a request gets, and that accounting is where leaks and
deadlocks hide, so it is kept where it can be read on its own.

How the pool stays cheap:

- Connections are counted, not scanned. `_open` is the number of connections open or
  being opened; it never exceeds `max_connections`.
- Idle connections wait in one deque per origin. Requests reuse the newest (LIFO, the
  one least likely to have been closed by the server); the keep-alive sweep closes
  the oldest from the other end.
- Requests that find no connection and no free slot queue FIFO as futures. Whoever
  frees a connection or a slot hands it straight to the first live waiter. A waiter
  that gives up (timeout, cancellation) is not searched for: its future is done, and
  it is skipped when it reaches the head of the queue.
- Every wait is a plain future, woken by a protocol callback or a timer; no task is
  created per request, and read timers are re-armed lazily (see
  `nanobanana._transport._connection`).
- Connections die with their event loop. A loop that has ended can run no callback,
  so a socket cannot be closed through its transport any more; the pool therefore
  closes its connections as the loop ends, from an async generator that the loop
  finalizes (`loop.shutdown_asyncgens()`, which `asyncio.run()` calls).
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpcore
import httpx

from nanobanana._transport import _connect
from nanobanana._transport._connection import H1Connection, Origin

if TYPE_CHECKING:
    import ssl
    from collections.abc import Coroutine

    from nanobanana._transport._parsers import ParserFactory

__all__ = ["ConnectionPool"]

_T = TypeVar("_T")
# What a queued request's future resolves to, besides a connection handed over.
_GRANTED: Final = 1  # A slot: open a new connection.
_TIMED_OUT: Final = 2  # The pool timeout passed first.
_CLOSED: Final = 3  # The transport was closed.

#: How long closing the pool waits for its connections' sockets to be really closed.
CLOSE_WAIT: Final = 1.0

if sys.version_info >= (3, 11):

    async def _with_timeout(coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        # Runs in the calling task, so a cancellation cannot land between the
        # connection being made and us holding it.
        async with asyncio.timeout(timeout):
            return await coro

else:  # pragma: no cover - exercised on 3.10 only

    async def _with_timeout(coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        return await asyncio.wait_for(coro, timeout)


async def _watch(pool: ConnectionPool, tag: object) -> AsyncGenerator[None, None]:
    # Suspended at its yield for as long as the pool is bound to a loop; the loop
    # closes it when it shuts down, and the pool's connections go with it. `_unwatch`
    # clears the tag first, so that closing it then closes nothing.
    try:
        yield
    finally:
        if pool._watch_tag is tag:
            pool._loop_ending()


def _step(awaitable: Any) -> None:
    # Runs an async generator step that awaits nothing, without a task: it ends at
    # once with StopIteration (or StopAsyncIteration, for a generator already closed).
    try:
        awaitable.send(None)
    except (StopIteration, StopAsyncIteration):
        return


class ConnectionPool:
    """HTTP/1.1 connections to any number of origins, within `httpx.Limits`.

    A request takes a connection with `reuse` (an idle one, without awaiting) or else
    `acquire` (a new one, or one handed over after a wait), and gives it back with
    `release`. The pool lives on one event loop at a time, bound by `bind_loop`.

    Args:
        limits: `max_connections` caps open connections across all origins (None: no
            cap); `max_keepalive_connections` caps idle ones; `keepalive_expiry` is how
            long, in seconds, an idle connection may be reused (None: forever).
        ssl_context: For https origins.
        parser: The response parser backend (`nanobanana._transport._parsers`).
    """

    def __init__(
        self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext, parser: ParserFactory
    ) -> None:
        self._max_open = sys.maxsize if limits.max_connections is None else limits.max_connections
        self._max_idle = (
            sys.maxsize
            if limits.max_keepalive_connections is None
            else limits.max_keepalive_connections
        )
        self._expiry = limits.keepalive_expiry
        self._ssl_context = ssl_context
        self._parser = parser
        self._watcher: AsyncGenerator[None, None] | None = None
        self._watch_tag: object = None
        self._reset()

    def _reset(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[Origin, collections.deque[H1Connection]] = {}
        self._n_idle = 0
        self._open = 0
        self._conns: set[H1Connection] = set()
        self._waiters: collections.deque[tuple[asyncio.Future[H1Connection | int], Origin]] = (
            collections.deque()
        )
        self._n_waiting = 0
        self._sweep_handle: asyncio.TimerHandle | None = None

    @property
    def open_count(self) -> int:
        """Connections open or being opened."""
        return self._open

    @property
    def idle_count(self) -> int:
        """Open connections waiting in the pool for a request."""
        return self._n_idle

    @property
    def waiting_count(self) -> int:
        """Requests queued for a connection."""
        return self._n_waiting

    def reuse(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> H1Connection | None:
        """Take an idle connection to `origin` that may still carry a request, if any."""
        idle = self._idle.get(origin)
        return self._take_idle(loop, idle) if idle else None

    async def aclose(self) -> None:
        """Close every connection, and fail the requests waiting for one.

        It may be awaited on a later event loop than the one the connections were made
        on, once that one has ended (a client used across `asyncio.run()` calls).
        """
        loop = self._loop
        self._unwatch()
        if loop is None or loop.is_closed():
            # Nothing can be waiting on, or release anything to, a loop that has
            # ended (its connections were closed as it ended): start afresh.
            self._reset()
            return
        closing = [conn for conn in self._close_all(abort=False) if not conn.lost]
        if closing:
            # Wait for the sockets to be really closed (a TLS connection says goodbye
            # first), so that none outlives the close, nor its event loop; what is
            # still open after CLOSE_WAIT is dropped.
            await asyncio.wait([conn.lost_future() for conn in closing], timeout=CLOSE_WAIT)
            for conn in closing:
                if not conn.lost:
                    conn.abort()
            await asyncio.sleep(0)

    def _close_all(self, *, abort: bool) -> list[H1Connection]:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._open -= self._n_idle
        self._n_idle = 0
        self._idle.clear()
        conns = list(self._conns)
        for conn in conns:
            conn.in_pool = False
            if abort:
                conn.abort()
            else:
                conn.close()
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(_CLOSED)
        self._n_waiting = 0
        return conns

    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """Return the running loop, moving the pool to it if the old one has ended.

        Raises:
            RuntimeError: No asyncio loop is running, or the pool is still in use on
                another loop that is open.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "The fast HTTP/1.1 pool needs a running asyncio event loop."
            ) from None
        if loop is not self._loop:
            old = self._loop
            if old is not None and self._open and not old.is_closed():
                raise RuntimeError(
                    "This transport was used on another event loop that is still open; "
                    "create one transport per event loop."
                )
            # Whatever the old, closed loop held is dead: start afresh.
            self._unwatch()
            self._reset()
            self._loop = loop
            tag = object()
            watcher = _watch(self, tag)
            self._watch_tag = tag
            self._watcher = watcher
            _step(watcher.asend(None))
        return loop

    def _unwatch(self) -> None:
        # Stop watching the loop, without closing anything.
        watcher, self._watcher = self._watcher, None
        self._watch_tag = None
        if watcher is not None:
            _step(watcher.aclose())

    def _loop_ending(self) -> None:
        # The loop is shutting down: close every connection while callbacks can still
        # run, and fail whoever waits.
        self._watcher = None
        self._watch_tag = None
        self._close_all(abort=True)

    async def acquire(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        timeouts: dict[str, float | None],
    ) -> H1Connection:
        """Open a connection to `origin`, or wait for one, when `reuse` found none.

        Args:
            loop: The running loop, from `bind_loop`.
            origin: Where the request goes.
            timeouts: httpx's timeouts; "pool" and "connect" are used here.

        Raises:
            httpcore.PoolTimeout: No connection was free within the pool timeout.
            httpcore.ConnectTimeout: Connecting took longer than the connect timeout.
            httpcore.ConnectError: The connection could not be made.
            RuntimeError: The pool was closed while the request waited.
        """
        # No idle connection to the origin: open one, or queue for one.
        if not self._n_waiting:
            if self._open < self._max_open:
                self._open += 1
                return await self._connect(loop, origin, timeouts.get("connect"))
            if self._n_idle:
                # Full, but with idle connections to other origins: close the oldest
                # one and use its slot.
                self._evict_one()
                return await self._connect(loop, origin, timeouts.get("connect"))
        got = await self._queue(loop, origin, timeouts.get("pool"))
        if isinstance(got, H1Connection):
            return got
        return await self._connect(loop, origin, timeouts.get("connect"))

    def _take_idle(
        self, loop: asyncio.AbstractEventLoop, idle: collections.deque[H1Connection]
    ) -> H1Connection | None:
        expiry = self._expiry
        now = 0.0 if expiry is None else loop.time()
        while idle:
            conn = idle.pop()
            self._n_idle -= 1
            conn.in_pool = False
            if (
                conn.reusable
                and (expiry is None or now - conn.idle_since < expiry)
                and not conn.readable()
            ):
                return conn
            self._discard(conn)
        return None

    def _evict_one(self) -> None:
        for idle in self._idle.values():
            if idle:
                conn = idle.popleft()
                self._n_idle -= 1
                conn.in_pool = False
                conn.close()
                return

    async def _queue(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        timeout: float | None,
    ) -> H1Connection | int:
        future: asyncio.Future[H1Connection | int] = loop.create_future()
        self._waiters.append((future, origin))
        self._n_waiting += 1
        handle = None if timeout is None else loop.call_later(timeout, self._expire, future)
        try:
            got = await future
        except BaseException:
            if future.done() and not future.cancelled():
                # Served in the same loop step as we were cancelled: what we were
                # given must go back, or a slot leaks (httpcore issue 1093).
                self._give_back(future.result())
            else:
                future.cancel()
                self._n_waiting -= 1
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if got == _TIMED_OUT:
            raise httpcore.PoolTimeout("Timed out waiting for a connection.")
        if got == _CLOSED:
            raise RuntimeError("The transport was closed while the request waited.")
        return got

    def _expire(self, future: asyncio.Future[H1Connection | int]) -> None:
        if not future.done():
            future.set_result(_TIMED_OUT)
            self._n_waiting -= 1

    def _give_back(self, got: H1Connection | int) -> None:
        if isinstance(got, H1Connection):
            self.release(got, True)
        elif got == _GRANTED:
            self._open -= 1
            self._grant_slot()

    def _next_waiter(self) -> tuple[asyncio.Future[H1Connection | int], Origin]:
        # Only called while _n_waiting > 0, so a live waiter is in the queue.
        waiters = self._waiters
        while True:
            future, origin = waiters.popleft()
            if not future.done():
                self._n_waiting -= 1
                return future, origin

    def _grant_slot(self) -> None:
        if self._n_waiting and self._open < self._max_open:
            future, _ = self._next_waiter()
            self._open += 1
            future.set_result(_GRANTED)

    def release(self, conn: H1Connection, reuse: bool) -> None:
        """Give a connection back: to the first waiter, to the idle list, or closed.

        Args:
            conn: A connection taken with `reuse` or `acquire`.
            reuse: False when the exchange did not end cleanly, so the connection's
                state is unknown and it must be closed.
        """
        if not (reuse and conn.reusable):
            self._discard(conn)
            return
        if self._n_waiting:
            future, origin = self._next_waiter()
            if origin == conn.origin:
                future.set_result(conn)
            else:
                conn.close()
                future.set_result(_GRANTED)
            return
        if self._n_idle >= self._max_idle:
            self._discard(conn)
            return
        loop = conn.loop
        conn.idle_since = loop.time()
        conn.in_pool = True
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = collections.deque()
        idle.append(conn)
        self._n_idle += 1
        if self._sweep_handle is None and self._expiry is not None:
            self._sweep_handle = loop.call_later(self._expiry, self._sweep, loop, self._expiry)

    def _discard(self, conn: H1Connection) -> None:
        conn.close()
        self._open -= 1
        self._grant_slot()

    def _sweep(self, loop: asyncio.AbstractEventLoop, expiry: float) -> None:
        # Close idle connections past keepalive_expiry, oldest first, then come back
        # when the next oldest expires: one timer for the whole pool.
        self._sweep_handle = None
        now = loop.time()
        oldest = None
        for origin, idle in list(self._idle.items()):
            while idle and now - idle[0].idle_since >= expiry:
                conn = idle.popleft()
                self._n_idle -= 1
                conn.in_pool = False
                self._discard(conn)
            if idle:
                since = idle[0].idle_since
                oldest = since if oldest is None else min(oldest, since)
            else:
                del self._idle[origin]
        if oldest is not None:
            self._sweep_handle = loop.call_at(oldest + expiry, self._sweep, loop, expiry)

    def _on_lost(self, conn: H1Connection) -> None:
        # Called by the connection when its socket is gone, whoever closed it.
        self._conns.discard(conn)
        if conn.in_pool:
            # The server closed an idle connection: free its slot now rather than
            # when a request would have found it dead.
            conn.in_pool = False
            self._idle[conn.origin].remove(conn)
            self._n_idle -= 1
            self._open -= 1
            self._grant_slot()

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        timeout: float | None,
    ) -> H1Connection:
        # The caller holds a slot for this connection; it is given back on failure.
        scheme, raw_host, port = origin
        conn = H1Connection(loop, origin, self._on_lost, self._parser)
        # Tracked from now on, so that aclose() also stops connections being opened.
        self._conns.add(conn)
        try:
            host = raw_host.decode("ascii")
            await _with_timeout(
                _connect.connect(
                    loop,
                    lambda: conn,
                    host,
                    port,
                    ssl_context=self._ssl_context if scheme == b"https" else None,
                ),
                timeout,
            )
        except BaseException as exc:
            conn.abort()
            self._conns.discard(conn)
            self._open -= 1
            self._grant_slot()
            # asyncio.TimeoutError is TimeoutError only from Python 3.11 on.
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                raise httpcore.ConnectTimeout("Timed out connecting.") from exc
            if isinstance(exc, OSError):
                raise httpcore.ConnectError(str(exc) or repr(exc)) from exc
            raise
        return conn
