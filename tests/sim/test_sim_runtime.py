"""How the simulator runs: sync and async use, trio, keep-alive, serve(), other ASGI servers."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading

import httpx
import pytest
import trio

from nanobanana.testing import Simulator, serve
from nanobanana.testing._asgi import ResetConnection

TLS = ssl.create_default_context()

pytest_plugins = ["pytester"]


def test_sync_use_with_a_blocking_client():
    with Simulator(credits=3) as sim:
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        with httpx.Client(base_url=sim.base_url, headers=headers, verify=TLS) as client:
            assert client.get("/credits").json() == {"data": {"credits": 3}}
            assert client.post("/generate", json={"prompt": "a"}).status_code == 200
        assert sim.credits() == 2
    assert not sim.running


def test_start_stop_and_restart():
    sim = Simulator()
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.base_url
    sim.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sim.start()
        first = sim.base_url
        assert first.startswith("http://127.0.0.1:")
        assert first.endswith("/api/v1")
        assert sim.cdn_base_url != sim.api_origin
    finally:
        sim.stop()
    sim.stop()  # idempotent
    with sim:
        assert httpx.get(sim.base_url + "/models", verify=TLS).status_code == 200
    assert "nb_test_key" not in repr(sim)


def test_stopping_with_idle_keep_alive_connections_logs_nothing(caplog):
    # Python 3.11's start_server logged "Exception in callback" for cancelled handlers.
    with httpx.Client(verify=TLS) as client:
        with Simulator() as sim:
            for _ in range(3):
                assert client.get(sim.base_url + "/models").status_code == 200
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_state_outlives_a_restart():
    sim = Simulator()
    with sim:
        sim.add_account("nb_kept", credits=5)
    with sim:
        assert sim.credits("nb_kept") == 5


def test_usage_from_trio():
    async def main() -> None:
        with Simulator() as sim:
            headers = {"Authorization": f"Bearer {sim.api_key}"}
            async with httpx.AsyncClient(
                base_url=sim.base_url, headers=headers, verify=TLS
            ) as client:
                with sim.hold() as hold:
                    async with trio.open_nursery() as nursery:
                        results = []

                        async def first() -> None:
                            results.append(await client.post("/generate", json={"prompt": "a"}))

                        nursery.start_soon(first)
                        await sim.wait_for_async(lambda: sim.in_flight() == 1)
                        assert (await client.get("/credits")).status_code == 429
                        hold.release()
                assert results[0].status_code == 200
                body = {"prompt": "b", "mode": "stream"}
                async with client.stream("POST", "/generate", json=body) as response:
                    lines = [line async for line in response.aiter_lines() if line]
                assert '"type":"complete"' in lines[-1]

    trio.run(main)


async def test_usage_from_asyncio_with_async_with():
    async with Simulator() as sim, httpx.AsyncClient(base_url=sim.base_url, verify=TLS) as client:
        assert (await client.get("/models")).status_code == 200
    assert not sim.running


def test_keep_alive_reuses_one_connection():
    with Simulator() as sim:
        port = int(sim.api_origin.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port)
        try:
            for _ in range(3):
                connection.request("GET", "/api/v1/models")
                response = connection.getresponse()
                assert response.status == 200
                response.read()
                sock = connection.sock
                assert sock is not None
            connection.request(
                "POST",
                "/api/v1/generate",
                body=b'{"prompt": "a"}',
                headers={"Authorization": f"Bearer {sim.api_key}"},
            )
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            assert connection.sock is sock
        finally:
            connection.close()


def test_malformed_request_gets_400():
    with Simulator() as sim:
        port = int(sim.api_origin.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")


def test_expect_100_continue_is_answered():
    with Simulator() as sim:
        port = int(sim.api_origin.rsplit(":", 1)[1])
        body = b'{"prompt": "a"}'
        head = (
            "POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {sim.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")
            sock.sendall(body)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert b'"success":true' in reply.replace(b" ", b"")


async def test_oversized_body_is_413(nanobanana_sim):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(base_url=nanobanana_sim.base_url, verify=TLS) as client:
        body = {"prompt": "x" * (2 * 1024 * 1024)}
        response = await client.post("/generate", json=body, headers=headers)
    assert response.status_code == 413
    assert nanobanana_sim.ledger == ()


def test_wait_for_times_out():
    with Simulator() as sim:
        with pytest.raises(TimeoutError):
            sim.wait_for(lambda: sim.in_flight() == 5, timeout=0.05)
        sim.wait_for(lambda: sim.in_flight() == 0)


async def test_wait_for_async_times_out(nanobanana_sim):
    with pytest.raises(TimeoutError):
        await nanobanana_sim.wait_for_async(lambda: False, timeout=0.05)


class _Output:
    """A stderr stand-in that says when serve() has printed its banner."""

    def __init__(self) -> None:
        self.text = ""
        self.printed = threading.Event()

    def write(self, text: str) -> int:
        self.text += text
        if "Ctrl-C" in self.text:
            self.printed.set()
        return len(text)

    def flush(self) -> None:
        pass


def test_serve_runs_in_the_foreground_until_stopped():
    stop, out = threading.Event(), _Output()
    thread = threading.Thread(
        target=serve, kwargs={"port": 0, "stop": stop, "out": out, "credits": 9}
    )
    thread.start()
    try:
        assert out.printed.wait(10)
        base_url = next(
            line.split(": ", 1)[1].strip() for line in out.text.splitlines() if "base URL" in line
        )
        assert "API key:  nb_test_key" in out.text
        assert "CDN URL:  http://127.0.0.1:" in out.text
        headers = {"Authorization": "Bearer nb_test_key"}
        response = httpx.get(base_url + "/credits", headers=headers, verify=TLS)
        assert response.json() == {"data": {"credits": 9}}
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


async def test_the_asgi_app_runs_under_another_asgi_server():
    # httpx's ASGITransport stands in for uvicorn & co: one origin serves everything.
    sim = Simulator()
    transport = httpx.ASGITransport(app=sim.asgi_app())
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim.test/api/v1", headers=headers
    ) as client:
        assert (await client.get("/models")).status_code == 200
        response = await client.post("/generate", json={"prompt": "a"})
        (url,) = response.json()["imageUrls"]
        assert url.startswith("http://sim.test/img/")
        image = await client.get(url)
        assert image.headers["content-type"] == "image/png"
        # A reset needs a socket: here the app's request to reset surfaces as an error.
        sim.inject("reset")
        with pytest.raises(ResetConnection):
            await client.get("/credits")
    assert sim.credits() == 99


async def test_lifespan_is_acknowledged():
    app = Simulator().asgi_app()
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = []

    async def receive():
        return next(incoming)

    async def send(message):
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_client_factory_points_our_client_at_the_simulator(nanobanana_sim):
    async with nanobanana_sim.client(max_retries=0) as client:
        models = await client.models()
    assert models[0].name == "nano-banana"
    assert nanobanana_sim.requests[-1].path == "/api/v1/models"


async def test_client_fixture(nanobanana_client, nanobanana_sim):
    assert await nanobanana_client.credits() == 100
    assert nanobanana_sim.requests[-1].key_fingerprint is not None


def test_plugin_fixture_and_marker_in_a_users_suite(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import httpx
        import pytest

        @pytest.mark.nanobanana_sim(credits=3, api_key="nb_user")
        def test_user(nanobanana_sim):
            headers = {"Authorization": "Bearer nb_user"}
            r = httpx.get(nanobanana_sim.base_url + "/credits", headers=headers)
            assert r.json() == {"data": {"credits": 3}}
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)


def test_the_banners_admin_url_answers_with_the_list_of_calls():
    stop, out = threading.Event(), _Output()
    thread = threading.Thread(target=serve, kwargs={"port": 0, "stop": stop, "out": out})
    thread.start()
    try:
        assert out.printed.wait(10)
        admin = next(
            line.split(": ", 1)[1].strip() for line in out.text.splitlines() if "admin" in line
        )
        assert admin.endswith("/_sim/")
        response = httpx.get(admin, verify=TLS)
        assert response.status_code == 200
        paths = {route["path"] for route in response.json()["data"]["routes"]}
        assert {"/_sim/faults/random", "/_sim/generation-time", "/_sim/ledger"} <= paths
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
