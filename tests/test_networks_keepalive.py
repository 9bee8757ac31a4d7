"""Keep-alive against a server that closes idle connections after 1 s, as Node.js does after 5.

The race: the server closes an idle connection while this client's event loop is
blocked (or has simply not run since), so the pool still holds it as idle. Sending
on it would reach a closed socket and end "maybe sent" (a POST /generate would say
it may have been charged). The test makes the race happen every time: the server
thread sets a `threading.Event` once the connection is closed, and the client waits
on it without yielding to its loop, then sends at once.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from nanobanana import APIConnectionError, AsyncNanoBanana
from nanobanana._transport._connection import H1Connection
from network_support import ServerThread

KEY = "nb_keepalive_key_31c9"
ANSWER = json.dumps(
    {"success": True, "generationId": "g", "imageUrls": ["http://127.0.0.1/x.png"]}
).encode()


class KeepAliveServer:
    """Answers every request; closes a connection idle for `keep_alive` seconds."""

    def __init__(self, keep_alive: float = 1.0) -> None:
        self.keep_alive = keep_alive
        self.closed_idle = threading.Event()
        self.requests = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    async def start(self) -> KeepAliveServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class _Conn(asyncio.Protocol):
    def __init__(self, server: KeepAliveServer) -> None:
        self.server = server
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.idle_closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.keep_alive, self._expire)

    def _expire(self) -> None:
        self.idle_closed = True
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            if self.timer is not None:
                self.timer.cancel()
            self.server.requests += 1
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )
            self._arm()

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.idle_closed:
            # The socket is closed by now (asyncio closes it, then calls us).
            self.server.closed_idle.set()


@pytest.fixture
def server():
    with ServerThread() as thread:
        yield thread.serve(KeepAliveServer(keep_alive=1.0))


def client_of(server: KeepAliveServer, **kwargs) -> AsyncNanoBanana:
    kwargs.setdefault("limits", httpx.Limits(keepalive_expiry=60))  # the server's close only
    return AsyncNanoBanana(
        api_key=KEY, base_url=server.base_url, trust_env=False, max_retries=0, **kwargs
    )


def block_until(event: threading.Event) -> None:
    # Blocks the calling event loop on purpose: nothing runs until the server is done.
    assert event.wait(10)


async def test_an_idle_connection_the_server_closed_is_never_used(server):
    async with client_of(server) as client:
        await client.generate("first")
        block_until(server.closed_idle)
        generation = await client.generate("second, right after the server's close")
    assert generation.id == "g"
    assert (server.requests, server.connections) == (2, 2)


async def test_the_race_is_real_without_the_check(server, monkeypatch):
    # Proof that the test above reproduces the race: trusting the pool's view alone,
    # the request goes to the closed socket and comes back "maybe sent".
    monkeypatch.setattr(H1Connection, "readable", lambda self: False)
    async with client_of(server) as client:
        await client.generate("first")
        block_until(server.closed_idle)
        with pytest.raises(APIConnectionError) as info:
            await client.generate("second")
    assert info.value.may_have_been_charged is True
    assert server.requests == 1


async def test_keepalive_expiry_is_configurable(server):
    async with client_of(server, limits=httpx.Limits(keepalive_expiry=0)) as client:
        await client.generate("one")
        await client.generate("two")
    assert server.connections == 2  # an expiry of 0 never reuses


async def test_the_default_expiry_is_below_nodes_five_seconds(server):
    async with AsyncNanoBanana(api_key=KEY, base_url=server.base_url, trust_env=False) as client:
        pool = client.http_client._transport.dispatch.fast.pool
        await client.generate("one")
        await client.generate("two")
    assert pool._expiry == 4.0
    assert server.connections == 1
