"""NanoBananaTransport's fast pool against real asyncio servers on 127.0.0.1.

Framing tests run with both response parsers (llhttp through httptools, and h11);
connections are also fed bytes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import ssl
import subprocess

import httpcore
import httpx
import pytest
import respx
import trio

from nanobanana._transport import (
    ABORT_ON_DISCARD,
    MAX_HEAD,
    NanoBananaTransport,
    TransportStats,
)
from nanobanana._transport._connection import H1Connection
from nanobanana._transport._parsers import parser_factory
from transport_servers import ScriptedServer, ServerConn, keep_alive_ok

PARSERS = ["httptools", "h11"]

IDLE_POOL = TransportStats(open=0, idle=0, active=0, waiting=0)


def one_idle(n: int = 1) -> TransportStats:
    return TransportStats(open=n, idle=n, active=0, waiting=0)


@pytest.fixture(params=PARSERS)
def parser(request):
    return request.param


@pytest.fixture
async def transport(parser):
    transport = NanoBananaTransport(parser=parser)
    yield transport
    await transport.aclose()


@pytest.fixture
async def client(transport):
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


async def until(predicate, *, steps: int | None = None) -> None:
    # Let the loop run callbacks (connection_lost, a handler's next step) until the
    # condition holds; the per-test timeout bounds it, or `steps` loop iterations.
    step = 0
    while not predicate():
        step += 1
        assert steps is None or step <= steps, "condition still false"
        await asyncio.sleep(0)


# -- response framing -------------------------------------------------------------------


async def test_content_length_body_status_reason_and_http_version(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.respond(b"hello", status=b"201 Created", headers=(b"X-Thing: a b",))

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url + "/path?q=1")
        assert transport.stats() == one_idle()
    assert response.status_code == 201
    assert response.content == b"hello"
    assert response.headers["x-thing"] == "a b"
    assert response.reason_phrase == "Created"
    assert response.http_version == "HTTP/1.1"


async def test_request_head_carries_method_target_and_headers(client):
    seen = []

    async def handler(conn: ServerConn) -> None:
        seen.append(await conn.read_request())
        await conn.respond()

    async with ScriptedServer(handler) as server:
        await client.get(server.url + "/a/b?x=%20y", headers={"X-Custom": "v"})
    (request,) = seen
    assert request.method == b"GET"
    assert request.target == b"/a/b?x=%20y"
    assert request.headers[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert request.headers[b"x-custom"] == b"v"


async def test_chunked_body_with_extensions_and_trailers(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\nworld12345\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        await keep_alive_ok(conn)

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url)
        assert response.content == b"hello world12345"
        assert (await client.get(server.url)).content == b"ok"
    assert server.connections == 1


async def test_close_delimited_body_is_read_to_the_end_and_not_reused(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await conn.send(b"part two")
        conn.close()

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url)
    assert response.content == b"part one, part two"
    assert transport.stats() == IDLE_POOL


async def test_informational_responses_are_skipped(client):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        await conn.respond(b"final")

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url)
    assert response.status_code == 200
    assert response.content == b"final"


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_no_body_statuses_ignore_content_length_and_keep_the_connection(client, status):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n")
        await keep_alive_ok(conn)

    async with ScriptedServer(handler) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)
    assert first.content == b""
    assert second.content == b"ok"
    assert server.connections == 1


async def test_head_response_has_no_body_and_keeps_the_connection(client):
    async def handler(conn: ServerConn) -> None:
        request = await conn.read_request()
        assert request is not None
        assert request.method == b"HEAD"
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await keep_alive_ok(conn)

    async with ScriptedServer(handler) as server:
        head = await client.head(server.url)
        after = await client.get(server.url)
    assert head.headers["content-length"] == "1000"
    assert head.content == b""
    assert after.content == b"ok"
    assert server.connections == 1


async def test_http_1_0_response_without_keep_alive_is_not_reused(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.read_request()

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url)
        assert response.http_version == "HTTP/1.0"
        await until(lambda: transport.stats().open == 0)
    assert response.content == b"ok"


async def test_oversize_head_is_a_protocol_error(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")

    async with ScriptedServer(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="exceed"):
            await client.get(server.url)
    assert transport.stats() == IDLE_POOL


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_responses_are_protocol_errors(client, transport, garbage):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(garbage)
        await conn.reader.read()

    async with ScriptedServer(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.get(server.url)
    assert info.value.request.url.port == server.port
    assert transport.stats() == IDLE_POOL


async def test_server_closing_before_any_response_byte(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        conn.close()

    async with ScriptedServer(handler) as server:
        with pytest.raises(
            httpx.RemoteProtocolError, match=r"Server disconnected without sending a response\."
        ):
            await client.get(server.url)
    assert transport.stats() == IDLE_POOL


async def test_server_closing_mid_body_is_a_protocol_error(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.close()

    async with ScriptedServer(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="body was complete"):
            await client.get(server.url)
    assert transport.stats() == IDLE_POOL


# -- keep-alive --------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(client, transport):
    async with ScriptedServer(keep_alive_ok) as server:
        bodies = [(await client.get(server.url)).content for _ in range(5)]
    assert bodies == [b"ok"] * 5
    assert server.connections == 1


async def test_server_closing_an_idle_connection_means_a_new_one_next_time():
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.respond(b"conn %d" % conn.index)
        conn.close()

    # No keep-alive expiry: only noticing the close can free the slot.
    transport = NanoBananaTransport(limits=httpx.Limits(keepalive_expiry=None))
    async with (
        ScriptedServer(handler) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        first = await client.get(server.url)
        # The pool notices the close by itself, within a few loop steps.
        await until(lambda: transport.stats().open == 0, steps=1000)
        second = await client.get(server.url)
    assert (first.content, second.content) == (b"conn 1", b"conn 2")
    assert server.connections == 2


@pytest.mark.parametrize("side", ["request", "response"])
async def test_connection_close_is_honoured_both_ways(client, transport, side):
    seen = []

    async def handler(conn: ServerConn) -> None:
        while (request := await conn.read_request()) is not None:
            seen.append(request.headers.get(b"connection"))
            await conn.respond(headers=(b"Connection: close",) if side == "response" else ())

    headers = {"Connection": "close"} if side == "request" else {}
    async with ScriptedServer(handler) as server:
        await client.get(server.url, headers=headers)
        assert transport.stats() == IDLE_POOL
        await client.get(server.url, headers=headers)
    assert server.connections == 2


async def test_a_request_on_an_idle_connection_found_closing_goes_on_a_new_one(client, transport):
    # The connection is closing (its transport told to close) but the loop has not
    # run its connection_lost yet: nothing of the request can have been written, so
    # it is sent again on a fresh connection, transparently (even a POST).
    async with ScriptedServer(echo) as server:
        await client.post(server.url, content=b"first")
        (conn,) = transport.dispatch.fast.pool._conns
        conn._transport.close()  # No await between this and the next request.
        response = await client.post(server.url, content=b"second")
    assert response.content == b"second"
    assert server.connections == 2


async def test_expired_idle_connections_are_not_reused():
    transport = NanoBananaTransport(limits=httpx.Limits(keepalive_expiry=0))
    async with (
        ScriptedServer(keep_alive_ok) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url)
        await client.get(server.url)
    assert server.connections == 2


async def test_concurrent_requests_never_exceed_max_connections():
    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=3))
    async with (
        ScriptedServer(keep_alive_ok) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        responses = await asyncio.gather(*(client.get(server.url) for _ in range(50)))
        assert transport.stats() == one_idle(3)
    assert all(r.content == b"ok" for r in responses)
    assert server.connections == 3


async def test_full_pool_evicts_an_idle_connection_to_another_origin():
    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with (
        ScriptedServer(keep_alive_ok) as a,
        ScriptedServer(keep_alive_ok) as b,
        httpx.AsyncClient(transport=transport) as client,
    ):
        await client.get(a.url)
        await client.get(b.url)
        assert transport.stats() == one_idle(1)
        await client.get(a.url)
    assert (a.connections, b.connections) == (2, 1)


# -- streaming ---------------------------------------------------------------------------


async def test_body_is_delivered_as_it_arrives(client, transport):
    got_first = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n")
        await got_first.wait()
        await conn.send(b"6\r\nsecond\r\n0\r\n\r\n")

    async with ScriptedServer(handler) as server:
        async with client.stream("GET", server.url) as response:
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"first "
            got_first.set()
            assert [chunk async for chunk in chunks] == [b"second"]
        assert transport.stats() == one_idle()


async def test_closing_a_response_early_discards_its_connection(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        assert await conn.reader.read() == b""  # The client closed the connection.

    async with ScriptedServer(handler) as server:
        async with client.stream("GET", server.url) as response:
            assert await anext(response.aiter_raw()) == b"abc"
            assert transport.stats().active == 1
        assert transport.stats() == IDLE_POOL


async def test_closing_a_discarded_response_returns_once_its_socket_is_closed(client, transport):
    # So that what the caller gives back next (a concurrency slot) is given back after
    # the connection is really gone, not while its socket still lingers.
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        assert await conn.reader.read() == b""

    async with ScriptedServer(handler) as server:
        async with client.stream("GET", server.url) as response:
            assert await anext(response.aiter_raw()) == b"abc"
            (conn,) = transport.dispatch.fast.pool._conns
        # No loop step between the close and here: connection_lost has already run.
        assert conn._closed
        assert transport.stats() == IDLE_POOL


@pytest.mark.parametrize("how", ["close", "cancel"])
async def test_a_request_marked_abort_on_discard_drops_its_connection_without_waiting(
    client, transport, how
):
    # A server that does not close on the client's EOF: a graceful discard would wait
    # CLOSE_WAIT for it. Marked ABORT_ON_DISCARD (image downloads), the connection is
    # dropped at once: the close returns within a few loop steps, the slot is free.
    release = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await release.wait()

    first = asyncio.Event()

    async def read() -> None:
        request = client.build_request("GET", server.url, extensions={ABORT_ON_DISCARD: True})
        response = await client.send(request, stream=True)
        try:
            async for _ in response.aiter_raw():
                first.set()
                if how == "close":
                    break
        finally:
            await response.aclose()

    async with ScriptedServer(handler) as server:
        task = asyncio.create_task(read())
        await first.wait()
        (conn,) = transport.dispatch.fast.pool._conns
        if how == "cancel":
            task.cancel()
        await until(task.done, steps=20)
        assert not release.is_set()  # the server never closed its end
        await until(lambda: conn._closed, steps=20)
        assert transport.stats() == IDLE_POOL
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_without_the_mark_a_discarded_connection_waits_for_the_servers_close(
    client, transport
):
    # The graceful close API requests need (a slot freed after it is free on the
    # server): the close has not returned while the server keeps its end open.
    release = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        assert await conn.reader.read() == b""  # the client's half-close
        await release.wait()

    async def read() -> None:
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                break

    async with ScriptedServer(handler) as server:
        task = asyncio.create_task(read())
        with pytest.raises(AssertionError, match="still false"):
            await until(task.done, steps=50)
        release.set()  # the server closes: the close returns
        await task
        assert transport.stats() == IDLE_POOL


async def test_large_body_arrives_whole_through_backpressure(client):
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.respond(payload)

    async with ScriptedServer(handler) as server:
        response = await client.get(server.url)
    assert response.content == payload


# -- request bodies ----------------------------------------------------------------------


async def echo(conn: ServerConn) -> None:
    while (request := await conn.read_request()) is not None:
        framing = b"chunked" if b"transfer-encoding" in request.headers else b"length"
        await conn.respond(request.body, headers=(b"X-Framing: " + framing,))


async def test_post_bytes_body_is_sent_with_content_length(client):
    async with ScriptedServer(echo) as server:
        response = await client.post(server.url, content=b"payload")
    assert response.content == b"payload"
    assert response.headers["x-framing"] == "length"


async def test_post_large_bytes_body_waits_for_the_socket(client):
    payload = b"x" * (8 * 1024 * 1024)
    async with ScriptedServer(echo) as server:
        response = await client.post(server.url, content=payload)
    assert len(response.content) == len(payload)


async def test_post_async_iterable_body_is_sent_chunked(client):
    async def parts():
        yield b"one,"
        yield b""
        yield b"two"

    async with ScriptedServer(echo) as server:
        response = await client.post(server.url, content=parts())
        again = await client.post(server.url, json={"a": 1})
    assert response.content == b"one,two"
    assert response.headers["x-framing"] == "chunked"
    assert again.content == b'{"a":1}'
    assert server.connections == 1


async def test_header_with_a_line_break_is_refused_before_sending(client, transport):
    async with ScriptedServer(echo) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(server.url, headers={"X-Evil": "a\r\nX-Injected: 1"})
    assert server.connections == 0


# -- errors and timeouts -----------------------------------------------------------------


async def test_connect_error_on_a_closed_port(client, transport):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as info:
        await client.get(f"http://127.0.0.1:{port}/")
    assert info.value.request.url.port == port
    assert transport.stats() == IDLE_POOL


async def test_read_timeout_when_the_server_never_answers(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.reader.read()

    async with ScriptedServer(handler) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5, read=0.05))
    assert transport.stats() == IDLE_POOL


async def test_pool_timeout_leaves_nothing_queued(transport):
    release = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await release.wait()
        await conn.respond()

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with ScriptedServer(handler) as server, httpx.AsyncClient(transport=transport) as client:
        holder = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().active == 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5, pool=0.05))
        assert transport.stats().waiting == 0
        release.set()
        await holder
        assert transport.stats() == one_idle()


async def test_unsupported_scheme(client):
    with pytest.raises(httpx.UnsupportedProtocol):
        await NanoBananaTransport().handle_async_request(httpx.Request("GET", "ftp://example.com/"))


def test_on_trio_requests_go_through_httpcore(parser):
    # The fast pool is asyncio's; under trio the same transport sends through the
    # httpcore pool that httpx made, which speaks trio.
    from nanobanana.testing import Simulator  # noqa: PLC0415

    async def main(url):
        transport = NanoBananaTransport(parser=parser)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(url)
            assert not transport.dispatch.uses_fast_path()
            assert transport.dispatch.fast.pool.open_count == 0
            assert transport.stats() == one_idle()
        return response.status_code

    with Simulator() as sim:
        assert trio.run(main, sim.base_url + "/models") == 200


# -- cancellation ------------------------------------------------------------------------


async def test_cancelled_while_queued_for_the_pool(transport):
    release = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        while await conn.read_request() is not None:
            await release.wait()
            await conn.respond()

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with ScriptedServer(handler) as server, httpx.AsyncClient(transport=transport) as client:
        holder = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().active == 1)
        queued = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().waiting == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert transport.stats().waiting == 0
        release.set()
        await holder
        assert transport.stats() == one_idle()
        assert (await client.get(server.url)).status_code == 200


async def test_waiter_cancelled_as_it_is_handed_a_connection_gives_it_back():
    # httpcore issue 1093: the connection is handed over and the waiter cancelled in
    # the same loop step; the slot must not leak.
    finish = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await finish.wait()
        await conn.send(b"cd")
        await keep_alive_ok(conn)

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with ScriptedServer(handler) as server, httpx.AsyncClient(transport=transport) as client:
        held = await client.send(client.build_request("GET", server.url), stream=True)
        queued = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().waiting == 1)
        finish.set()
        assert await held.aread() == b"abcd"  # Hands the connection to `queued`...
        assert transport.stats() == TransportStats(open=1, idle=0, active=1, waiting=0)
        queued.cancel()  # ...which is cancelled before it runs.
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert transport.stats() == one_idle()
        assert (await client.get(server.url)).content == b"ok"
    assert server.connections == 1


async def test_cancelled_while_waiting_for_the_response_head(client, transport):
    got_request = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        got_request.set()
        assert await conn.reader.read() == b""

    async with ScriptedServer(handler) as server:
        task = asyncio.create_task(client.get(server.url))
        await got_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.stats() == IDLE_POOL


async def test_cancelled_while_reading_the_body(client, transport):
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        assert await conn.reader.read() == b""

    async def read_all(first_chunk: asyncio.Event) -> None:
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                first_chunk.set()

    async with ScriptedServer(handler) as server:
        first_chunk = asyncio.Event()
        task = asyncio.create_task(read_all(first_chunk))
        await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.stats() == IDLE_POOL


async def test_cancelled_while_connecting(client, transport):
    # A listening socket whose backlog is never accepted: connect() may complete in
    # the kernel, so cancel as soon as the request is on its way instead.
    async with ScriptedServer(keep_alive_ok) as server:
        task = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().open == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert transport.stats() == IDLE_POOL


async def test_aclose_fails_queued_requests_and_closes_connections():
    got_request = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        got_request.set()
        assert await conn.reader.read() == b""

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with ScriptedServer(handler) as server:
        client = httpx.AsyncClient(transport=transport)
        holder = asyncio.create_task(client.get(server.url))
        await got_request.wait()
        queued = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().waiting == 1)
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await queued
        with pytest.raises(httpx.RemoteProtocolError):
            await holder
        assert transport.stats() == IDLE_POOL


async def test_aclose_while_connecting_closes_the_new_connection(client, transport):
    async with ScriptedServer(keep_alive_ok) as server:
        task = asyncio.create_task(client.get(server.url))
        await until(lambda: transport.stats().open == 1)
        await transport.aclose()
        with pytest.raises(httpx.WriteError):
            await task
    assert transport.stats() == IDLE_POOL


# -- respx ---------------------------------------------------------------------------------


async def test_respx_mock_intercepts_requests(client, transport):
    with respx.mock:
        route = respx.get("http://nowhere.invalid/x").respond(json={"mocked": True})
        response = await client.get("http://nowhere.invalid/x")
    assert route.called
    assert response.json() == {"mocked": True}
    assert transport.stats() == IDLE_POOL


# -- the parser, fed directly --------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def fed_connection(parser: str, method: str = "GET") -> tuple[H1Connection, FakeTransport]:
    loop = asyncio.get_running_loop()
    conn = H1Connection(loop, (b"http", b"x", 80), lambda conn: None, parser_factory(parser))
    fake = FakeTransport()
    conn.connection_made(fake)
    conn.start(head_only=method == "HEAD", close=False)
    return conn, fake


async def read_body(conn: H1Connection) -> bytes:
    parts = []
    while (chunk := await conn.receive_body(1)) is not None:
        parts.append(chunk)
    return b"".join(parts)


async def read_response(conn: H1Connection) -> bytes:
    await conn.receive_head(1)
    return await read_body(conn)


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"
)


@pytest.mark.parametrize("cut", range(1, len(CHUNKED_RESPONSE)))
async def test_chunked_response_split_at_every_byte_boundary(parser, cut):
    conn, _ = fed_connection(parser)
    conn.data_received(CHUNKED_RESPONSE[:cut])
    conn.data_received(CHUNKED_RESPONSE[cut:])
    await conn.receive_head(1)
    assert conn.headers[1] == (b"X-A", b"1")
    assert await read_body(conn) == b"abc0123456789abcdef"
    assert conn.response_complete


async def test_chunked_response_one_byte_at_a_time(parser):
    conn, _ = fed_connection(parser)
    for i in range(len(CHUNKED_RESPONSE)):
        conn.data_received(CHUNKED_RESPONSE[i : i + 1])
    await conn.receive_head(1)
    assert await read_body(conn) == b"abc0123456789abcdef"
    conn.finish()
    assert conn.reusable


async def test_reading_pauses_above_the_high_water_mark_and_resumes_when_drained(parser):
    conn, fake = fed_connection(parser)
    size = 1024 * 1024
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    await conn.receive_head(1)
    conn.data_received(b"a" * (size // 2))
    assert fake.paused
    assert len(await conn.receive_body(1)) == size // 2
    assert not fake.paused


async def test_bytes_after_a_complete_response_make_the_connection_unusable(parser):
    conn, _ = fed_connection(parser)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    await conn.receive_head(1)
    assert await read_body(conn) == b"ok"
    conn.finish()
    assert not conn.reusable


async def test_read_timeout_on_a_reused_connection_with_a_shorter_deadline(client, transport):
    # The connection's read timer is re-armed lazily: a long deadline from earlier
    # requests must not delay a shorter one, and a moved deadline must still fire.
    async def handler(conn: ServerConn) -> None:
        for _ in range(3):
            await conn.read_request()
            await conn.respond(b"quick")
        await conn.read_request()
        await conn.reader.read()

    async with ScriptedServer(handler) as server:
        for read in (30, 0.2, 0.2):
            response = await client.get(server.url, timeout=httpx.Timeout(5, read=read))
            assert response.content == b"quick"
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5, read=0.2))
        assert loop.time() - start < 5
    assert server.connections == 1
    assert transport.stats() == IDLE_POOL


REFUSED = httpcore.RemoteProtocolError


# Where the two parsers differ, each stays within RFC 9112: a list Content-Length may
# be refused or read as one value (RFC 9110 8.6), a message with both framings may be
# refused or read by its chunked coding (RFC 9112 6.1), and a client may always close
# an HTTP/1.0 connection. Either way the body is right or the error is typed.
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            {"httptools": REFUSED, "h11": (b"abc", True)},
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
            {"httptools": (b"abc", True), "h11": (b"abc", False)},
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            {"httptools": (b"abc", False), "h11": (b"abc", False)},
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
            {"httptools": (b"abc", False), "h11": (b"abc", False)},
        ),
        (
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            ),
            {"httptools": REFUSED, "h11": (b"abc", True)},
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            {"httptools": (b"", False), "h11": REFUSED},
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            {"httptools": (b"abc", True), "h11": REFUSED},
        ),
    ],
)
async def test_framing_and_reuse_follow_the_response_headers(parser, response, expected):
    conn, fake = fed_connection(parser)
    conn.data_received(response)
    outcome = expected[parser]
    if outcome is REFUSED:
        with pytest.raises(REFUSED):
            await read_response(conn)
        assert fake.closed
        return
    body, reusable = outcome
    assert await read_response(conn) == body
    conn.finish()
    assert conn.reusable is reusable


async def test_non_chunked_transfer_coding_is_read_until_close_or_refused(parser):
    conn, _ = fed_connection(parser)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw")
    if parser == "h11":  # h11 knows no coding but chunked, and says so.
        with pytest.raises(REFUSED, match="chunked"):
            await conn.receive_head(1)
        return
    await conn.receive_head(1)
    assert await conn.receive_body(1) == b"raw"
    conn.eof_received()
    assert await conn.receive_body(1) is None
    conn.finish()
    assert not conn.reusable


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * (MAX_HEAD + 1), None),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
            + b"X-T: 1\r\n" * (MAX_HEAD // 8 + 100),
            "exceed",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6 + 1), "exceed"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\n: novalue\r\n\r\n", None),
        # A fold needs a field to continue: none before the first (h11 and httpx refuse).
        (b"HTTP/1.1 200 OK\r\n X-F: a\r\nContent-Length: 2\r\n\r\nok", "continuation line"),
        (b"HTTP/1.1 200 OK\n\tX-F: a\nContent-Length: 2\n\nok", "continuation line"),
    ],
)
@pytest.mark.parametrize("piecewise", [False, True])
async def test_parser_refuses_broken_or_oversize_input(parser, data, match, piecewise):
    conn, fake = fed_connection(parser)
    if piecewise:
        for i in range(0, len(data), 1000):
            conn.data_received(data[i : i + 1000])
    else:
        conn.data_received(data)
    with pytest.raises(httpcore.RemoteProtocolError, match=match):
        await read_response(conn)
    assert fake.closed


@pytest.mark.parametrize(
    "head",
    [
        # RFC 9112 5.2: a user agent that receives an obs-fold MUST replace it with SP.
        (
            b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n  two\r\n\ttwo and a half\r\n"
            b"Content-Length: 2\r\n\r\n"
        ),
        # Bare LF line ends (RFC 9112 2.2 allows a recipient to accept them).
        b"HTTP/1.1 200 OK\nX-Folded: one two two and a half\nContent-Length: 2\n\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: one two two and a half\nContent-Length: 2\r\n\n",
    ],
)
@pytest.mark.parametrize("cut", [None, 20, 31, 40])
async def test_folded_and_bare_lf_heads_are_read(parser, head, cut):
    conn, _ = fed_connection(parser)
    data = head + b"ok"
    if cut is None:
        conn.data_received(data)
    else:
        conn.data_received(data[:cut])
        conn.data_received(data[cut:])
    assert await read_response(conn) == b"ok"
    value = dict(conn.headers)[b"X-Folded"]
    assert b" ".join(value.split()) == b"one two two and a half"
    conn.finish()
    assert conn.reusable


async def test_a_head_just_under_the_limit_is_read(parser):
    # As httpx: heads up to 100 KiB (ours used to stop at 64 KiB).
    filler = b"X-Big: " + b"a" * (MAX_HEAD - 200) + b"\r\n"
    conn, _ = fed_connection(parser)
    data = b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"
    for i in range(0, len(data), 8192):
        conn.data_received(data[i : i + 8192])
    assert await read_response(conn) == b"ok"


CHUNKED_BODY = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"


@pytest.mark.parametrize("cut", range(len(CHUNKED_BODY) - 2))
@pytest.mark.parametrize("end", ["eof", "close"])
async def test_a_chunked_body_ended_by_the_connection_before_its_last_chunk_is_an_error(
    parser, cut, end
):
    # A close is no end of a chunked body (RFC 9112 7.1): whatever came, the body is
    # cut short without its last chunk, and must not pass for a whole one (an image).
    conn, _ = fed_connection(parser)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY[:cut]
    )
    await conn.receive_head(1)
    if end == "eof":
        conn.eof_received()
    else:
        conn.connection_lost(None)
    with pytest.raises(httpcore.RemoteProtocolError, match="before the response body was complete"):
        await read_body(conn)
    assert not conn.reusable


async def test_disconnect_mid_head_and_reset_are_reported(parser):
    conn, _ = fed_connection(parser)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    conn.connection_lost(None)
    with pytest.raises(httpcore.RemoteProtocolError, match="while sending the response head"):
        await conn.receive_head(1)
    conn, _ = fed_connection(parser)
    conn.connection_lost(ConnectionResetError("reset by peer"))
    with pytest.raises(httpcore.ReadError, match="reset by peer"):
        await conn.receive_head(1)


async def test_unsolicited_bytes_on_an_idle_connection_close_it(parser):
    conn, fake = fed_connection(parser)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    await conn.receive_head(1)
    conn.finish()
    assert conn.reusable
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert fake.closed
    assert not conn.reusable


async def test_write_timeout_and_write_error_while_the_socket_is_full(parser):
    conn, _ = fed_connection(parser)
    conn.pause_writing()
    with pytest.raises(httpcore.WriteTimeout):
        await conn.drain(0.01)
    conn.connection_lost(None)
    with pytest.raises(httpcore.RemoteProtocolError):
        await conn.drain(1)
    with pytest.raises(httpcore.RemoteProtocolError):
        conn.write(b"more")


async def test_closing_a_fully_received_response_keeps_the_connection(client, transport):
    rest_sent = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        await rest_sent.wait()
        await conn.send(b"def")
        await keep_alive_ok(conn)

    async with ScriptedServer(handler) as server:
        async with client.stream("GET", server.url) as response:
            assert await anext(response.aiter_raw()) == b"abc"
            rest_sent.set()
            (conn,) = transport.dispatch.fast.pool._conns
            await until(lambda: conn.response_complete)
            # Closed without reading "def": the response is whole, so the connection
            # is in a known state and goes back to the pool.
        assert transport.stats() == one_idle()
        assert (await client.get(server.url)).content == b"ok"
    assert server.connections == 1


# -- pool hand-offs ------------------------------------------------------------------------


async def test_a_closed_connection_passes_its_slot_to_the_next_waiter():
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.respond(b"conn %d" % conn.index, headers=(b"Connection: close",))

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with (
        ScriptedServer(handler) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        responses = await asyncio.gather(*(client.get(server.url) for _ in range(3)))
        assert transport.stats() == IDLE_POOL
    assert sorted(r.content for r in responses) == [b"conn 1", b"conn 2", b"conn 3"]


async def test_a_waiter_for_another_origin_gets_the_slot_of_a_released_connection():
    finish = asyncio.Event()

    async def slow(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na")
        await finish.wait()
        await conn.send(b"b")
        await keep_alive_ok(conn)

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with (
        ScriptedServer(slow) as a,
        ScriptedServer(keep_alive_ok) as b,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with client.stream("GET", a.url) as held:
            queued = asyncio.create_task(client.get(b.url))
            await until(lambda: transport.stats().waiting == 1)
            finish.set()
            assert await held.aread() == b"ab"
        assert (await queued).content == b"ok"
        assert transport.stats() == one_idle()
    assert (a.connections, b.connections) == (1, 1)


async def test_waiter_cancelled_as_it_is_granted_a_slot_gives_it_back():
    finish = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\na")
        await finish.wait()
        await conn.send(b"b")

    transport = NanoBananaTransport(limits=httpx.Limits(max_connections=1))
    async with (
        ScriptedServer(handler) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with client.stream("GET", server.url) as held:
            queued = asyncio.create_task(client.get(server.url))
            await until(lambda: transport.stats().waiting == 1)
            finish.set()
            assert await held.aread() == b"ab"  # Closes the connection, grants its slot...
        queued.cancel()  # ...to a waiter cancelled before it runs.
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert transport.stats() == IDLE_POOL


async def test_idle_connections_beyond_max_keepalive_are_closed():
    finish = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na")
        await finish.wait()
        await conn.send(b"b")
        await keep_alive_ok(conn)

    limits = httpx.Limits(max_connections=5, max_keepalive_connections=2)
    transport = NanoBananaTransport(limits=limits)
    async with (
        ScriptedServer(handler) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with contextlib.AsyncExitStack() as stack:
            responses = [
                await stack.enter_async_context(client.stream("GET", server.url)) for _ in range(4)
            ]
            assert transport.stats().active == 4
            finish.set()
            for response in responses:
                assert await response.aread() == b"ab"
        assert transport.stats() == one_idle(2)


async def test_idle_connections_are_closed_when_keepalive_expires():
    transport = NanoBananaTransport(limits=httpx.Limits(keepalive_expiry=0.05))
    async with (
        ScriptedServer(keep_alive_ok) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url)
        assert transport.stats() == one_idle()
        await until(lambda: transport.stats() == IDLE_POOL)


async def test_connect_timeout(client, transport):
    async with ScriptedServer(keep_alive_ok) as server:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5, connect=0))
    assert transport.stats() == IDLE_POOL


async def test_use_from_another_event_loop_while_connections_are_open(client, transport):
    async with ScriptedServer(keep_alive_ok) as server:
        await client.get(server.url)

        async def elsewhere():
            await transport.handle_async_request(httpx.Request("GET", server.url))

        with pytest.raises(RuntimeError, match="another event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())


# -- request framing edge cases ------------------------------------------------------------


async def test_streamed_body_with_explicit_content_length_is_sent_as_is(client):
    async def parts():
        yield b"abc"
        yield b"x" * (4 * 1024 * 1024)  # Large enough to fill the socket buffer.

    async with ScriptedServer(echo) as server:
        response = await client.post(
            server.url, content=parts(), headers={"Content-Length": str(3 + 4 * 1024 * 1024)}
        )
    assert response.headers["x-framing"] == "length"
    assert len(response.content) == 3 + 4 * 1024 * 1024


@pytest.mark.parametrize("declared", [2, 4])
async def test_streamed_body_not_matching_its_content_length_is_refused(
    client, transport, declared
):
    async def parts():
        yield b"abc"

    async with ScriptedServer(echo) as server:
        with pytest.raises(httpx.LocalProtocolError, match="Content-Length"):
            await client.post(
                server.url, content=parts(), headers={"Content-Length": str(declared)}
            )
    assert transport.stats() == IDLE_POOL


async def test_missing_framing_headers_are_added(transport):
    async def parts():
        yield b"streamed"

    async with ScriptedServer(echo) as server:
        request = httpx.Request("POST", server.url, content=b"inline")
        del request.headers["Content-Length"]
        response = await transport.handle_async_request(request)
        assert await response.aread() == b"inline"
        request = httpx.Request("POST", server.url, content=parts())
        del request.headers["Transfer-Encoding"]
        response = await transport.handle_async_request(request)
        assert await response.aread() == b"streamed"
        assert response.headers["x-framing"] == "chunked"


async def test_both_framing_headers_on_a_request_are_refused(client, transport):
    async with ScriptedServer(echo) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await client.post(server.url, content=b"abc", headers={"Transfer-Encoding": "chunked"})
    assert server.connections == 0


async def test_a_sync_body_is_a_type_error(transport):
    async with ScriptedServer(echo) as server:
        request = httpx.Request("POST", server.url, content=iter([b"sync"]))
        # httpx's own transport refuses it before any pool sees it, as plain httpx does.
        with pytest.raises(AssertionError):
            await transport.handle_async_request(request)
    assert transport.stats() == IDLE_POOL


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext"]
    command += ["subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(  # noqa: S603 - a fixed command line, no outside input
        command,
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_https_with_a_trusted_certificate_reuses_its_connection(self_signed):
    server_context, client_context = self_signed
    transport = NanoBananaTransport(verify=client_context)
    async with (
        ScriptedServer(keep_alive_ok, ssl_context=server_context) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        bodies = [(await client.get(server.url)).content for _ in range(3)]
    assert bodies == [b"ok"] * 3
    assert server.connections == 1


async def test_https_with_an_untrusted_certificate_is_a_connect_error(
    self_signed, client, transport
):
    server_context, _ = self_signed
    async with ScriptedServer(keep_alive_ok, ssl_context=server_context) as server:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(server.url)
    assert transport.stats() == IDLE_POOL


async def test_connections_are_closed_as_their_event_loop_ends(transport):
    # asyncio.run() returned with a connection idle in the pool. A loop that has
    # ended can run no callback, so the pool closes its connections as the loop shuts
    # down (it finalizes async generators): the server sees the client go, a later
    # aclose() has nothing left to do, and nothing warns at garbage collection.
    client_gone = asyncio.Event()

    async def handler(conn: ServerConn) -> None:
        await keep_alive_ok(conn)
        client_gone.set()

    async with ScriptedServer(handler) as server:

        async def use() -> tuple[bytes, TransportStats]:
            response = await transport.handle_async_request(httpx.Request("GET", server.url))
            return await response.aread(), transport.stats()

        assert await asyncio.to_thread(asyncio.run, use()) == (b"ok", one_idle())
        await client_gone.wait()
        assert transport.stats() == IDLE_POOL
        await asyncio.to_thread(asyncio.run, transport.aclose())
        gc.collect()  # An unclosed transport would warn here, failing the test.
        # And the transport serves a new loop afterwards.
        assert await asyncio.to_thread(asyncio.run, use()) == (b"ok", one_idle())
