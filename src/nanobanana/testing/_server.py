"""A small HTTP/1.1 server for the simulator: h11 over asyncio streams.

Why our own server rather than uvicorn: fault injection needs the socket. The app asks
for a TCP reset (`ResetConnection`) or a dropped response (`CutConnection`), and
writes stream bodies in tiny pieces that must reach the wire one by one. Keep-alive
works as in any HTTP/1.1 server; a client that goes away is reported to the app as
``http.disconnect``, as ASGI servers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from typing import Any
from urllib.parse import unquote

import h11

from nanobanana._logs import emit
from nanobanana.testing._asgi import (
    CutConnection,
    Message,
    RawResponse,
    ResetConnection,
    Scope,
)

__all__ = ["ClientDisconnected", "HttpServer"]

_logger = logging.getLogger("nanobanana.testing")
_READ_SIZE = 65536
# struct linger is two ints on POSIX, two unsigned shorts on Windows.
_LINGER = "HH" if sys.platform == "win32" else "ii"
_App = Any  # an ASGI 3 callable


class ClientDisconnected(OSError):  # noqa: N818 - named for what happened, as OSErrors are
    """Raised by ``send`` when the client has gone (ASGI: an ``OSError`` subclass)."""


class _Connection:
    """One client connection: a loop of request/response cycles."""

    def __init__(
        self, app: _App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._app = app
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER)
        self._eof = False
        self._client = writer.get_extra_info("peername")
        self._server = writer.get_extra_info("sockname")

    async def serve(self) -> None:
        try:
            while True:
                event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return
                if not await self._cycle(event):
                    return
                self._h11.start_next_cycle()
        except h11.RemoteProtocolError:
            await self._bad_request()
        except OSError:
            pass
        except Exception as exc:  # noqa: BLE001 - logged with its traceback (exc_info)
            emit(
                logging.ERROR,
                "the simulator's connection handler failed",
                event="simulator_error",
                error=type(exc).__name__,
                exc_info=True,
                logger=_logger,
            )
        finally:
            await self._close()

    async def _next_event(self) -> Any:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._reader.read(_READ_SIZE)
            self._h11.receive_data(data)  # b"" marks the end of the stream

    async def _send(self, event: Any) -> None:
        if self._writer.is_closing():
            raise ClientDisconnected("the client has gone")
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ClientDisconnected(str(exc)) from exc

    def _scope(self, request: h11.Request) -> Scope:
        target = bytes(request.target)
        raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": tuple(self._client[:2]) if self._client else None,
            "server": tuple(self._server[:2]) if self._server else None,
            "extensions": {},
        }

    async def _cycle(self, request: h11.Request) -> bool:
        """Run the app for one request; return whether the connection can be reused."""
        disconnected = asyncio.Event()
        body_done = False
        started = complete = False
        watcher: asyncio.Task[None] | None = None

        async def receive() -> Message:
            nonlocal body_done, watcher
            if not body_done:
                if self._h11.they_are_waiting_for_100_continue:
                    # curl sends "Expect: 100-continue" with larger bodies.
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                try:
                    event = await self._next_event()
                except OSError:
                    event = None
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                body_done = True
                if isinstance(event, h11.EndOfMessage):
                    watcher = asyncio.create_task(self._watch(disconnected))
                    return {"type": "http.request", "body": b"", "more_body": False}
                disconnected.set()
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started, complete
            if disconnected.is_set():
                raise ClientDisconnected("the client has gone")
            try:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", []), (b"server", b"nanobanana-simulator")]
                    await self._send(h11.Response(status_code=message["status"], headers=headers))
                    started = True
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        await self._send(h11.Data(data=message["body"]))
                    if not message.get("more_body", False):
                        await self._send(h11.EndOfMessage())
                        complete = True
            except ClientDisconnected:
                disconnected.set()
                raise

        try:
            await self._app(self._scope(request), receive, send)
        except ResetConnection:
            self._reset()
            return False
        except CutConnection:
            self._abort()
            return False
        except RawResponse as raw:
            if not started and not disconnected.is_set():
                with contextlib.suppress(OSError):
                    self._writer.write(raw.data)
                    await self._writer.drain()
            return False  # closed gracefully by serve(): the client sees a plain EOF
        except ClientDisconnected:
            return False
        except Exception as exc:  # noqa: BLE001 - logged with its traceback (exc_info)
            emit(
                logging.ERROR,
                "the simulator app failed",
                event="simulator_error",
                error=type(exc).__name__,
                exc_info=True,
                logger=_logger,
            )
            if not started and not disconnected.is_set():
                await self._plain(500, b"Internal Server Error")
            return False
        finally:
            if watcher is not None:
                watcher.cancel()
                # gather, not a bare await: a cancellation of this task must go on.
                await asyncio.gather(watcher, return_exceptions=True)
        if not complete:
            if not started and not disconnected.is_set():
                await self._plain(500, b"The app sent no response")
            return False
        if self._eof or disconnected.is_set():
            return False
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _watch(self, disconnected: asyncio.Event) -> None:
        # While the app works, read ahead: EOF means the client left. Bytes of a
        # pipelined next request are kept in h11's buffer for the next cycle.
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                self._h11.receive_data(data)
        except OSError:
            pass
        self._eof = True
        disconnected.set()

    async def _plain(self, status: int, body: bytes) -> None:
        with contextlib.suppress(OSError, h11.LocalProtocolError):
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            await self._send(h11.Response(status_code=status, headers=headers))
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())

    async def _bad_request(self) -> None:
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._plain(400, b"Bad Request")

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack(_LINGER, 1, 0))
        self._abort()

    def _abort(self) -> None:
        self._writer.transport.abort()

    async def _close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class HttpServer:
    """Serve an ASGI app on an already bound, listening socket."""

    def __init__(self, app: _App, sock: socket.socket) -> None:
        self._app = app
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}

    async def start(self) -> None:
        """Start accepting connections."""
        self._server = await asyncio.start_server(self._on_client, sock=self._sock)

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small writes (SSE pieces) must leave at once, not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self._app, reader, writer)
        # Our own task rather than the one start_server would make of a coroutine:
        # close() cancels it, and Python 3.11's start_server logs a spurious
        # "Exception in callback" for a cancelled client task.
        task = asyncio.get_running_loop().create_task(connection.serve())
        self._connections[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._connections.pop(task, None)

    async def close(self) -> None:
        """Stop listening, drop every connection, and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task, connection in list(self._connections.items()):
            connection._abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
