"""API responses once they arrive: read within a bound, or held open as a stream.

Two things `nanobanana._http.Requester` hands its callers, kept apart from the retry
loop that produces them: `read_at_most`, which reads a JSON answer without ever
reading an endless one, and `StreamContext`, which holds a streamed response and
its concurrency slot, and gives the slot back only once the response is closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, cast

import httpx

if TYPE_CHECKING:
    from nanobanana._admission import Governor, Slot

__all__ = ["MAX_ANSWER_SIZE", "STREAM_CLOSE_TIMEOUT", "StreamContext", "read_at_most"]

#: The most bytes of an API answer that are read (its JSON is a few kilobytes at most).
#: Past it, the rest is not read: a 2xx is refused, an error keeps what was read.
MAX_ANSWER_SIZE = 1024 * 1024


async def read_at_most(response: httpx.Response, limit: int) -> None:
    """Read a streamed response's body, but no more than ``limit`` bytes and a chunk.

    Afterwards ``response.content`` holds what was read and the response is closed
    (a body left unread closes its connection). httpx has no public way to read a
    bounded body into a response, so this sets the attribute its own ``aread`` sets.
    """
    headers = response.headers
    length = headers.get("content-length", "")
    parts: list[bytes] = []
    size = 0
    try:
        if length.isdecimal() and int(length) <= limit and "content-encoding" not in headers:
            # The common case, and the fast one: the framing already bounds the body.
            await response.aread()
            return
        # Typed as an iterator, it is an async generator: close it when we stop early.
        body = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        async with contextlib.aclosing(body) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
    finally:
        # Also when the read fails or is cancelled, as httpx's own non-streamed send
        # does: the connection is then given up, never left checked out.
        await response.aclose()
    response._content = b"".join(parts)  # what httpx's aread sets


#: The longest a stream's close may hold up its caller, cancelled or not (seconds).
STREAM_CLOSE_TIMEOUT = 5.0


class StreamContext:
    """`Requester.stream`'s context manager: a class, not an ``@asynccontextmanager``.

    A generator-based one is a second async generator inside the stream's own. When
    trio ends a run it closes the async generators still alive one by one, in no
    particular order: closing the inner one first made the outer one's ``async with``
    fail with "generator didn't stop after athrow()". A class has nothing to close.

    The slot is given back only once the response is closed, also when the close
    happens in a cancelled task: the server counts the request until it has seen the
    disconnect, and a slot freed sooner lets the next request in to a 429. So the
    close is shielded from cancellation (for at most `STREAM_CLOSE_TIMEOUT`), and
    `release` (bounded and shielded by the governor) comes after it. The two steps
    are separate for a stream's owner that sends one more request on the same slot
    once the response is closed.
    """

    def __init__(
        self, send: Callable[[], Awaitable[tuple[httpx.Response, Slot]]], governor: Governor
    ) -> None:
        self._send = send
        self._governor = governor
        self._response: httpx.Response | None = None
        self._slot: Slot | None = None

    async def __aenter__(self) -> httpx.Response:
        self._response, self._slot = await self._send()
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose_response()
        finally:
            await self.release()

    async def aclose_response(self) -> None:
        """Close the response (if open), shielded and bounded; the slot stays taken."""
        response, self._response = self._response, None
        if response is None:
            return
        import anyio  # noqa: PLC0415 - lazily: keeps `import nanobanana` cheap

        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + STREAM_CLOSE_TIMEOUT
            await response.aclose()

    async def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        slot, self._slot = self._slot, None
        if slot is not None:
            await self._governor.release(slot)
