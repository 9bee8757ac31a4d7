"""Real network components on loopback for tests/test_networks*.py, each in its own thread.

A thread with its own asyncio loop serves them, so the client under test may run on
asyncio, uvloop or trio, or in another process (the CLI). Everything listens on
127.0.0.1 (or ::1), on ports the OS picks. Ordering is by events, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

LOOPS = ["asyncio", "uvloop", "trio"]


def make_tls(folder: Path) -> SimpleNamespace:
    """A CA made here (trustme), a server certificate for 127.0.0.1 and localhost, as files.

    Attributes of the result: ``ca``, ``cert`` (trustme's), ``ca_pem`` (the CA, for
    ``verify=`` or ``SSL_CERT_FILE``) and ``server_pem`` (key and chain, for servers).
    """
    from components import require_module  # noqa: PLC0415

    require_module("trustme", "a CA made by the test for TLS servers on loopback")
    import trustme  # noqa: PLC0415

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem, server_pem = folder / "ca.pem", folder / "server.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return SimpleNamespace(ca=ca, cert=cert, ca_pem=ca_pem, server_pem=server_pem)


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main()` on a new event loop of the named kind."""
    if loop == "trio":
        import trio  # noqa: PLC0415

        return trio.run(main)
    if loop == "uvloop":
        from components import require_module  # noqa: PLC0415

        require_module("uvloop", "running the network tests on uvloop")
        import uvloop  # noqa: PLC0415

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


class ServerThread:
    """An asyncio loop in a daemon thread, to run servers on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[Any] = []

    def __enter__(self) -> ServerThread:  # noqa: PYI034 - a test helper, never subclassed
        self._thread.start()
        return self

    def serve(self, server: Any) -> Any:
        """Start a server (its `start()`) here; it is stopped (`stop()`) on exit."""
        started = self.run(server.start())
        self._servers.append(started)
        return started

    def __exit__(self, *exc_info: object) -> None:
        for server in reversed(self._servers):
            self.run(server.stop())

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
        """Run `coro` on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def closed_port() -> tuple[socket.socket, int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening.

    Keep the socket until the test ends, so that nothing else takes the port.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class ForwardProxy:
    """A forward HTTP proxy: CONNECT tunnels (for https) and absolute-form forwarding.

    `routes` sends a (host, port) the client asked for somewhere else: a name or a
    closed port that only the proxy can reach. Every request line is kept in
    `seen`, and every byte the client sent through the proxy in `client_bytes`.
    `refuse()` makes it answer CONNECT with an error status instead of a tunnel.
    """

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]] | None = None) -> None:
        self.routes = routes or {}
        self._refusal: str | None = None
        self._refusals_left: int | None = None
        self.seen: list[str] = []
        self.client_bytes = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def refuse(self, status: str, *, times: int | None = None) -> None:
        """Answer the next `times` CONNECTs (None: all) with `status`, e.g. ``"407 ..."``."""
        self._refusal, self._refusals_left = status, times

    def _refusing(self) -> str | None:
        if self._refusal is None or self._refusals_left == 0:
            return None
        if self._refusals_left is not None:
            self._refusals_left -= 1
        return self._refusal

    def _route(self, host: str, port: int) -> tuple[str, int]:
        return self.routes.get((host, port), (host, port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.client_bytes += head
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        self.seen.append(f"{method} {target}")
        refusal = self._refusing() if method == "CONNECT" else None
        if refusal is not None:
            writer.write(
                f'HTTP/1.1 {refusal}\r\nProxy-Authenticate: Basic realm="test"\r\n'
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(*self._route(host, int(port)))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(
                _pipe(reader, up_writer, self.client_bytes), _pipe(up_reader, writer, None)
            )
            return
        url = urlsplit(target)
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = [h for h in lines if h and not h.lower().startswith(("connection:", "proxy-"))]
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")),
            0,
        )
        body = await reader.readexactly(length) if length else b""
        self.client_bytes += body
        origin = f"{url.path or '/'}{'?' + url.query if url.query else ''}"
        forwarded = f"{method} {origin} HTTP/1.1\r\n" + "\r\n".join(headers)
        forwarded += "\r\nConnection: close\r\n\r\n"
        up_reader, up_writer = await asyncio.open_connection(
            *self._route(url.hostname or "", url.port or 80)
        )
        up_writer.write(forwarded.encode("latin-1") + body)
        await up_writer.drain()
        await _pipe(up_reader, writer, None)
        up_writer.close()


class TLSCountingServer:
    """A TLS server that counts connections (before the handshake) and handshakes.

    Each request gets an empty 200 and the connection is closed.
    """

    def __init__(self, ssl_context: Any) -> None:
        self.ssl_context = ssl_context
        self.connections = 0
        self.handshakes = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> TLSCountingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await writer.start_tls(self.ssl_context)
            self.handshakes += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # The client refused the certificate: what the tests want.
        finally:
            writer.close()


class HypercornServer:
    """An ASGI app served by hypercorn (HTTP/1.1 and HTTP/2, TLS when given a cert)."""

    def __init__(self, app: Any, *, cert_pem: Path | None = None, keep_alive: float = 5) -> None:
        self.app = app
        self.cert_pem = cert_pem
        self.keep_alive = keep_alive
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> HypercornServer:
        from hypercorn.asyncio import serve  # noqa: PLC0415
        from hypercorn.config import Config  # noqa: PLC0415

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.fileno()}"]
        config.keep_alive_timeout = self.keep_alive
        config.accesslog = None
        config.errorlog = None
        if self.cert_pem is not None:
            config.certfile = config.keyfile = str(self.cert_pem)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0)
        return self

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        if self._sock is not None:
            self._sock.detach()  # hypercorn owned the descriptor, and closed it.
