"""Proxies, as httpx has them: `proxy=` and the environment, on every loop and in the CLI.

A real forward proxy (CONNECT and forwarding, `network_support.ForwardProxy`) runs on
loopback, and the API is put where only the proxy reaches it: a port of 127.0.0.1
that refuses connections, which the proxy routes to the real server. A client that
went direct would fail. The https API is the simulator's ASGI app under hypercorn,
with a certificate from a CA made by the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from components import require_module
from nanobanana import APIConnectionError, AsyncNanoBanana, ProxyError, RetryPolicy
from nanobanana._transport._proxies import environment_proxies
from nanobanana.testing import Simulator
from network_support import (
    LOOPS,
    ForwardProxy,
    HypercornServer,
    ServerThread,
    closed_port,
    make_tls,
    run_on,
)

KEY = "nb_proxy_SECRET_key_5d1f"
PROXY_VARS = [
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
    "https_proxy", "http_proxy", "all_proxy", "no_proxy",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in [*PROXY_VARS, "SSL_CERT_FILE", "SSL_CERT_DIR"]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    require_module("hypercorn", "a real TLS and HTTP/2 server on loopback")
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sim():
    with Simulator(api_key=KEY, credits=50, concurrency_limit=4, seed=3) as s:
        yield s


@pytest.fixture
def servers():
    with ServerThread() as thread:
        yield thread


def hidden_https_api(servers, sim, tls):
    """The simulator over TLS, reachable only through the returned proxy."""
    api = servers.serve(HypercornServer(sim.asgi_app(origin="api"), cert_pem=tls.server_pem))
    hole, port = closed_port()
    proxy = servers.serve(ForwardProxy({("127.0.0.1", port): ("127.0.0.1", api.port)}))
    return SimpleNamespace(
        api=api, proxy=proxy, hole=hole, base_url=f"https://127.0.0.1:{port}/api/v1"
    )


@pytest.mark.parametrize(("loop", "variable"), [(loop, "HTTPS_PROXY") for loop in LOOPS])
def test_https_goes_through_the_environment_proxy_in_a_tunnel_on_every_loop(  # noqa: PLR0917
    loop, variable, servers, sim, tls, monkeypatch, tmp_path
):
    hidden = hidden_https_api(servers, sim, tls)
    monkeypatch.setenv(variable, hidden.proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_pem))

    async def main():
        async with AsyncNanoBanana(api_key=KEY, base_url=hidden.base_url) as client:
            assert await client.credits() == 50
            generation = await client.generate("through the proxy")
            events = [event async for event in client.stream("streamed through the proxy")]
            paths = await client.download(generation, tmp_path)
        return generation, events, paths

    _, events, paths = run_on(loop, main)
    assert events[-1].type == "complete"
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    tunnel = f"CONNECT 127.0.0.1:{hidden.base_url.split(':')[2].split('/')[0]}"
    assert set(hidden.proxy.seen) == {tunnel}  # Only tunnels: the CDN (http) went direct.
    # The proxy carried the TLS records, and never saw the key in clear.
    assert len(hidden.proxy.client_bytes) > 1000
    assert KEY.encode() not in hidden.proxy.client_bytes
    assert sim.credits() == 48
    assert {r.user_agent for r in sim.requests if r.origin == "api"} != set()
    hidden.hole.close()


@pytest.mark.parametrize("variable", ["https_proxy", "ALL_PROXY", "all_proxy"])
def test_any_case_and_all_proxy_are_read(variable, servers, sim, tls, monkeypatch):
    hidden = hidden_https_api(servers, sim, tls)
    monkeypatch.setenv(variable, hidden.proxy.url)

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY, base_url=hidden.base_url, verify=str(tls.ca_pem)
        ) as client:
            return await client.credits()

    assert run_on("asyncio", main) == 50
    assert len(hidden.proxy.seen) == 1
    hidden.hole.close()


def test_without_the_proxy_the_hidden_api_is_unreachable(servers, sim, tls):
    hidden = hidden_https_api(servers, sim, tls)

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY, base_url=hidden.base_url, verify=str(tls.ca_pem), max_retries=0
        ) as client:
            with pytest.raises(APIConnectionError, match="ConnectError"):
                await client.credits()

    run_on("asyncio", main)
    assert hidden.proxy.seen == []
    hidden.hole.close()


@pytest.mark.parametrize("call", ["generate", "credits"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_proxy_that_refuses_the_tunnel_raises_at_once_and_nothing_was_charged(
    loop, call, servers, sim, tls
):
    hidden = hidden_https_api(servers, sim, tls)
    hidden.proxy.refuse("407 Proxy Authentication Required")

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY, base_url=hidden.base_url, verify=str(tls.ca_pem), proxy=hidden.proxy.url
        ) as client:
            with pytest.raises(ProxyError) as info:
                await (client.generate("refused") if call == "generate" else client.credits())
            return info.value

    error = run_on(loop, main)
    assert error.may_have_been_charged is False
    assert "407 Proxy Authentication Required" in str(error)
    assert "credentials" in str(error)
    assert "may have been charged" not in str(error)
    assert KEY not in str(error)
    assert len(hidden.proxy.seen) == 1  # A refusal is permanent: not retried.
    assert not sim.requests
    assert sim.credits() == 50
    hidden.hole.close()


def test_a_proxy_that_forbids_the_host_raises_at_once(servers, sim, tls):
    hidden = hidden_https_api(servers, sim, tls)
    hidden.proxy.refuse("403 Forbidden")

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY, base_url=hidden.base_url, verify=str(tls.ca_pem), proxy=hidden.proxy.url
        ) as client:
            with pytest.raises(ProxyError, match=r"403 Forbidden.*allows the API's host"):
                await client.generate("forbidden")

    run_on("asyncio", main)
    assert len(hidden.proxy.seen) == 1
    hidden.hole.close()


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_proxy_that_could_not_reach_the_api_is_retried_even_for_generate(loop, servers, sim, tls):
    hidden = hidden_https_api(servers, sim, tls)
    hidden.proxy.refuse("502 Bad Gateway", times=1)

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY,
            base_url=hidden.base_url,
            verify=str(tls.ca_pem),
            proxy=hidden.proxy.url,
            retry_policy=RetryPolicy(wait_initial=0.0, wait_max=0.0),
        ) as client:
            generation = await client.generate("second tunnel")
            return generation, client.stats().retries

    generation, retries = run_on(loop, main)
    assert generation.image_urls
    assert len(hidden.proxy.seen) == 2  # The 502 was nothing sent: the POST went again.
    assert retries == {"connect": 1}
    assert sim.credits() == 49  # Charged once.
    hidden.hole.close()


def test_a_proxy_that_never_reaches_the_api_ends_in_a_proxy_error(servers, sim, tls):
    hidden = hidden_https_api(servers, sim, tls)
    hidden.proxy.refuse("504 Gateway Timeout")

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY,
            base_url=hidden.base_url,
            verify=str(tls.ca_pem),
            proxy=hidden.proxy.url,
            retry_policy=RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0),
        ) as client:
            with pytest.raises(ProxyError, match="504 Gateway Timeout") as info:
                await client.generate("never")
            return info.value

    error = run_on("asyncio", main)
    assert error.may_have_been_charged is False
    assert "credentials" not in str(error)
    assert len(hidden.proxy.seen) == 3
    assert sim.credits() == 50
    hidden.hole.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_proxy_argument_forwards_http_and_downloads_carry_no_key(loop, servers, sim, tmp_path):
    api_port = int(sim.api_origin.rsplit(":", 1)[1])
    hole, port = closed_port()
    proxy = servers.serve(ForwardProxy({("127.0.0.1", port): ("127.0.0.1", api_port)}))

    async def main():
        async with AsyncNanoBanana(
            api_key=KEY, base_url=f"http://127.0.0.1:{port}/api/v1", proxy=proxy.url
        ) as client:
            generation = await client.generate("forwarded")
            await client.download(generation, tmp_path)
            return generation

    generation = run_on(loop, main)
    assert proxy.seen[0] == f"POST http://127.0.0.1:{port}/api/v1/generate"
    image = [line for line in proxy.seen if line.startswith("GET ")]
    assert image == [f"GET {generation.image_urls[0]}"]
    # Plain http through a proxy is in clear, as with any client: only the API request
    # carries the key, never the image request to the CDN.
    text = bytes(proxy.client_bytes).decode("latin-1")
    image_request = text[text.index("GET http") :]
    assert "authorization" not in image_request.lower()
    assert KEY in text[: text.index("GET http")]
    hole.close()


def test_no_proxy_hosts_go_direct(servers, sim, monkeypatch):
    proxy = servers.serve(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com, 127.0.0.1")

    async def main():
        async with AsyncNanoBanana(api_key=KEY, base_url=sim.base_url) as client:
            return await client.credits()

    assert run_on("asyncio", main) == 50
    assert proxy.seen == []


def test_the_simulators_own_client_never_uses_a_proxy(servers, sim, monkeypatch):
    proxy = servers.serve(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    async def main():
        async with sim.client() as client:
            return await client.credits()

    assert run_on("asyncio", main) == 50
    assert proxy.seen == []


def test_the_cli_uses_the_environment_proxy(servers, sim, tls):
    hidden = hidden_https_api(servers, sim, tls)
    env = {
        "PATH": "/usr/bin:/bin",
        "HTTPS_PROXY": hidden.proxy.url,
        "SSL_CERT_FILE": str(tls.ca_pem),
        "NANOBANANA_API_KEY": KEY,
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "nanobanana", "credits", "--base-url", hidden.base_url],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["credits"] == 50
    assert len(hidden.proxy.seen) == 1
    assert hidden.proxy.seen[0].startswith("CONNECT ")
    assert KEY.encode() not in hidden.proxy.client_bytes
    hidden.hole.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        ({"HTTPS_PROXY": "proxy:3128"}, {"https://": "http://proxy:3128"}),
        ({"http_proxy": "http://p:1"}, {"http://": "http://p:1"}),
        ({"ALL_PROXY": "socks5://p:1080"}, {"all://": "socks5://p:1080"}),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".corp.example, 10.0.0.1, ::1, localhost"},
            {
                "https://": "http://p:1",
                "all://*.corp.example": None,
                "all://10.0.0.1": None,
                "all://[::1]": None,
                "all://localhost": None,
            },
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, {}),
    ],
)
def test_environment_proxies_are_read_as_httpx_reads_them(env, expected, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert environment_proxies() == expected


def test_proxy_options_with_a_borrowed_client_are_refused():
    http = httpx.AsyncClient()
    for options in ({"proxy": "http://p:1"}, {"http2": True}, {"verify": False}):
        with pytest.raises(ValueError, match=r"set them on that httpx\.AsyncClient"):
            AsyncNanoBanana(api_key=KEY, http_client=http, **options)
