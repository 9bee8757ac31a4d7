"""Shared pieces of the reliability suites: fast policies, leak checks, a raw HTTP server.

Not a conftest: `tests/test_client.py` imports `conftest` by name, and a third
conftest module would only add to the confusion. Test modules here import this one
by name (pytest puts their folder on `sys.path`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana import AsyncNanoBanana, PollPolicy, ProgressEvent, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from typing_extensions import Self

# Polls every 10-20 ms instead of every 3 s, retries after a few ms: the protocol's
# shape at a test's speed. `retry_after_max` caps what any Retry-After can make us wait.
FAST_POLLS = PollPolicy(first_delay=0.01, growth=1.5, max_interval=0.02, jitter=0.0, timeout=20.0)
FAST_RETRIES = RetryPolicy(
    attempts=5, wait_initial=0.005, wait_max=0.02, retry_after_max=0.05, timeout=20.0
)

SECRET_KEY = "nb_live_S3CRET_reliability_key_8f2c1e9d"


def fast_client(sim: Any, *, seed: int = 0, **kwargs: Any) -> AsyncNanoBanana:
    """A client of `sim` with fast polls and retries and seeded jitter."""
    kwargs.setdefault("retry_policy", FAST_RETRIES)
    kwargs.setdefault("poll_policy", FAST_POLLS)
    kwargs.setdefault("rng", random.Random(seed))
    return sim.client(**kwargs)


async def drain(events: AsyncIterable[ProgressEvent]) -> list[ProgressEvent]:
    """Every event of a stream, in order."""
    return [event async for event in events]


# -- leak checks ------------------------------------------------------------------------


@attrs.frozen
class PoolState:
    """What the client's connection pool holds, for either transport."""

    kind: str
    checked_out: int
    waiting: int


def pool_state(client: AsyncNanoBanana) -> PoolState:
    """Connections checked out and requests queued in `client`'s pool.

    The client's transport is our `NanoBananaTransport`: on asyncio its requests go
    through the fast pool, on trio through httpx's own httpcore pool, whose queue is
    inspected too (a private attribute: tests may look).
    """
    transport = client.http_client._transport  # type: ignore[attr-defined]
    dispatch = transport.dispatch
    stats = transport.stats()
    waiting = stats.waiting + len(getattr(dispatch.httpcore_pool, "_requests", ()))
    kind = "fast" if dispatch.fast is not None and dispatch.fast.pool.open_count else "httpcore"
    if not stats.open and not waiting:
        kind = "none"
    return PoolState(kind, stats.active, waiting)


def assert_no_leaks(client: AsyncNanoBanana) -> None:
    """No governor slot held or awaited, no connection checked out or awaited."""
    stats = client.governor_stats()
    assert (stats.active, stats.waiting) == (0, 0), stats
    pool = pool_state(client)
    assert (pool.checked_out, pool.waiting) == (0, 0), pool


def stray_files(folder: Path) -> list[str]:
    """Temporary or partial files left anywhere below `folder`."""
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and (p.name.startswith(".") or p.name.endswith(".part"))
    )


class LoopErrors:
    """Records what the event loop would print ("Task exception was never retrieved")."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self) -> LoopErrors:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(lambda _loop, context: self.contexts.append(context))
        return self

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)

    def messages(self) -> list[str]:
        return [f"{c.get('message')}: {c.get('exception')!r}" for c in self.contexts]


# -- a raw HTTP/1.1 server, for behaviour the simulator does not have --------------------


@attrs.define
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A tiny HTTP/1.1 server on the running asyncio loop; each handler writes raw bytes.

    Every request is recorded before its handler runs. One request per connection:
    handlers end their responses with `Connection: close` or by closing.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[RawRequest] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def origin(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Handlers end by themselves once their client has gone; give them a moment,
        # then cut the connections of those still writing (no task is cancelled:
        # asyncio would log the cancelled handler as an error).
        await self.settle(timeout=5.0)
        for writer in list(self._writers):
            writer.transport.abort()
        await self.settle(timeout=5.0)
        await self._server.wait_closed()

    async def settle(self, *, timeout: float) -> None:
        """Wait until every handler has returned (or `timeout` passed)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            request = RawRequest(method, target, headers, body)
            self.requests.append(request)
            await self.handler(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._writers.discard(writer)
            self._tasks.discard(task)


def head(status: int, headers: dict[str, str] | None = None, *, reason: str = "X") -> bytes:
    """A response head; add `Content-Length` or `Transfer-Encoding` yourself."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def whole(status: int, body: bytes, content_type: str, **extra: str) -> bytes:
    """A complete response with a `Content-Length` that closes the connection."""
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "close",
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    return head(status, headers) + body
