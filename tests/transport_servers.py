"""Scripted HTTP/1.1 servers on 127.0.0.1 for tests/test_transport.py.

Each test writes its server as a coroutine `handler(conn)` that reads requests and
writes exactly the bytes it wants, so that framing, timing and misbehaviour are under
the test's control. Ordering between client and server is done with events, never
with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import attrs


@attrs.frozen(kw_only=True)
class ReceivedRequest:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes


@attrs.define
class ServerConn:
    """One accepted connection, as seen by the handler."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int

    async def read_request(self) -> ReceivedRequest | None:
        """Read one request (Content-Length or chunked body); None at a clean EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        lines = head[:-4].split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return ReceivedRequest(method=method, target=target, headers=headers, body=body)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self,
        body: bytes = b"",
        *,
        status: bytes = b"200 OK",
        headers: tuple[bytes, ...] = (),
    ) -> None:
        head = [b"HTTP/1.1 " + status, b"Content-Length: %d" % len(body), *headers]
        await self.send(b"\r\n".join(head) + b"\r\n\r\n" + body)

    def close(self) -> None:
        self.writer.close()


@attrs.define
class ScriptedServer:
    """Serve every accepted connection with `handler`; count the connections.

    The accept loop is our own (not `asyncio.start_server`) so that every accepted
    socket is known and closed on exit, even one whose handler never got to run.
    """

    handler: object
    ssl_context: ssl.SSLContext | None = None
    connections: int = 0
    port: int = 0
    _listener: socket.socket | None = None
    _tasks: set[asyncio.Task[None]] = attrs.Factory(set)
    _writers: list[asyncio.StreamWriter] = attrs.Factory(list)
    _sockets: list[socket.socket] = attrs.Factory(list)

    @property
    def url(self) -> str:
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        asyncio.get_running_loop().add_reader(listener, self._accept)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._listener is not None
        asyncio.get_running_loop().remove_reader(self._listener)
        self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        for sock in self._sockets:
            sock.close()  # Accepted, but its task was cancelled before it started.

    def _accept(self) -> None:
        # A reader callback rather than `await sock_accept()`: accepting and recording
        # the socket happen in one step, so a cancellation cannot drop a socket.
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._sockets.append(sock)
        self.connections += 1
        self._tasks.add(asyncio.create_task(self._serve(sock, self.connections)))

    async def _serve(self, sock: socket.socket, index: int) -> None:
        task = asyncio.current_task()
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ssl_context
            )
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            self._writers.append(writer)
            self._sockets.remove(sock)
            try:
                await self.handler(ServerConn(reader, writer, index))  # type: ignore[operator]
            finally:
                writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # The client went away: what several tests do on purpose.
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]


async def keep_alive_ok(conn: ServerConn, body: bytes = b"ok") -> None:
    """Answer every request on the connection with 200 and `body`."""
    while await conn.read_request() is not None:
        await conn.respond(body)
