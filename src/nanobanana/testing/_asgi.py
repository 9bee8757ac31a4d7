"""ASGI plumbing shared by the simulator's app modules: one `Exchange` per request.

The simulator's app is a raw ASGI 3 callable (a handful of paths needs no framework).
Faults that need the socket are asked for by raising `ResetConnection`,
`CutConnection` or `RawResponse`: our own server (``_server.py``) turns them into a TCP
reset, a dropped connection, or bytes sent as they are before a close; any other
ASGI server sees an exception from the app and closes the connection or answers 500,
which is the closest it can do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

__all__ = [
    "ClientGone",
    "CutConnection",
    "Exchange",
    "RawResponse",
    "Receive",
    "ResetConnection",
    "Scope",
    "Send",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_BODY = 1024 * 1024


class ResetConnection(Exception):  # noqa: N818 - a request to the server, not an error
    """Raised by the app to have the server reset the connection (TCP RST) at once."""


class CutConnection(Exception):  # noqa: N818 - same
    """Raised by the app to have the server drop the connection mid-response."""


class RawResponse(Exception):  # noqa: N818 - same
    """Raised by the app to have the server send ``data`` as it is, then close (a FIN).

    For responses the server's HTTP library would frame otherwise: a body delimited by
    the end of the connection, which h11 never sends to an HTTP/1.1 client.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(f"{len(data)} raw bytes")
        self.data = data


class ClientGone(Exception):  # noqa: N818 - same
    """Raised inside the app when the client disconnected; nothing more can be sent."""


class Exchange:
    """One HTTP request and its response, with helpers for the simulator's handlers."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.method: str = scope["method"].upper()
        self.path: str = scope["path"]
        # The path as sent, still %-encoded: an image URL's id segment may hold "%2F".
        raw_path = scope.get("raw_path") or quote(self.path).encode("ascii")
        self.raw_path: str = raw_path.decode("latin-1")
        self.raw_query: str = scope.get("query_string", b"").decode("latin-1")
        self.query: dict[str, list[str]] = parse_qs(self.raw_query, keep_blank_values=True)
        self.headers: dict[str, str] = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        self.status: int | None = None
        self.content_type_override: str | None = None
        self.body_too_large = False
        self.disconnected = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._finishers: list[Callable[[], None]] = []

    # -- request -----------------------------------------------------------------

    async def read_body(self) -> bytes:
        """Read the whole request body, then start watching for a disconnect.

        Bodies beyond 1 MiB are read but not kept (``body_too_large`` says so).

        Raises:
            ClientGone: If the client went away before the body ended.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= _MAX_BODY:
                chunks.append(chunk)
            else:
                self.body_too_large = True
            if not message.get("more_body", False):
                break
        self._watcher = asyncio.create_task(self._watch())
        return b"".join(chunks)

    async def _watch(self) -> None:
        # After the body, the next message an ASGI server delivers is http.disconnect.
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return

    async def close(self) -> None:
        """Stop watching for a disconnect (the handler is done)."""
        if self._watcher is not None:
            self._watcher.cancel()
            # gather, not a bare await: a cancellation of this task must go on.
            await asyncio.gather(self._watcher, return_exceptions=True)

    def header(self, name: str) -> str | None:
        """A request header, by case-insensitive name."""
        return self.headers.get(name.lower())

    # -- waiting -----------------------------------------------------------------

    async def race(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` until it ends; return ``False`` if the client left first."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(self.disconnected.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            return task.done() and not task.cancelled()
        finally:
            for pending in (task, gone):
                pending.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; return ``False`` early if the client left."""
        if seconds <= 0:
            return not self.disconnected.is_set()
        return await self.race(asyncio.sleep(seconds))

    # -- response ----------------------------------------------------------------

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, just before the last byte of the response is sent.

        Bookkeeping (in-flight counts, the request log) must be done by the time the
        client has the whole response, or its next request could see stale state.
        """
        self._finishers.append(callback)

    def finish(self) -> None:
        """Run the `on_finish` callbacks now (idempotent)."""
        callbacks, self._finishers = self._finishers, []
        for callback in callbacks:
            callback()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Send the status line and headers."""
        if self.content_type_override is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("content-type", self.content_type_override))
        self.status = status
        await self._send_or_gone(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )

    async def write(self, data: bytes, *, more: bool = True) -> None:
        """Send a piece of the body; ``more=False`` ends the response."""
        if not more:
            self.finish()
        await self._send_or_gone({"type": "http.response.body", "body": data, "more_body": more})

    async def _send_or_gone(self, message: Message) -> None:
        if self.disconnected.is_set():
            raise ClientGone
        try:
            await self._send(message)
        except OSError as exc:  # ASGI: send() on a closed connection raises an OSError
            self.disconnected.set()
            raise ClientGone from exc

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send a complete response with a ``Content-Length``."""
        all_headers = [("content-type", content_type), ("content-length", str(len(body)))]
        await self.start(status, all_headers + list(headers or []))
        await self.write(b"" if self.method == "HEAD" else body, more=False)

    async def json(
        self, status: int, payload: Any, *, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Send ``payload`` as an ``application/json`` response."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        await self.respond(status, body, content_type="application/json", headers=headers)

    async def error(
        self,
        status: int,
        message: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        **extra: Any,
    ) -> None:
        """Send the service's error body, ``{"error": message, ...}`` (overview docs)."""
        await self.json(status, {"error": message, **extra}, headers=headers)
