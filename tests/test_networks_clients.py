"""A borrowed httpx client keeps its settings; OpenTelemetry sees one span per request.

Also pinned here: the one private attribute of httpx the transport relies on, and
respx still seeing requests sent through the default client.
"""

from __future__ import annotations

import subprocess
import sys

import anyio
import httpx
import pytest
import respx

from components import require_module
from nanobanana import APITimeoutError, AsyncNanoBanana
from nanobanana._transport import NanoBananaTransport
from nanobanana._transport._transport import _Dispatch
from nanobanana.testing import Simulator
from transport_servers import ScriptedServer, ServerConn

KEY = "nb_clients_SECRET_key_9e2b"
API = "https://api.example.test/api/v1"
CDN = "https://cdn.example.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def test_a_borrowed_clients_short_timeout_ends_a_call_the_server_never_answers():
    answered = anyio.Event()

    async def never(conn: ServerConn) -> None:
        await conn.read_request()
        await answered.wait()  # Set once the client gave up: never in time.

    async with (
        ScriptedServer(never) as server,
        httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as http,
        AsyncNanoBanana(
            api_key=KEY, base_url=server.url + "/api/v1", http_client=http, max_retries=0
        ) as client,
    ):
        with pytest.raises(APITimeoutError, match="ReadTimeout"):
            await client.credits()
        answered.set()


def borrowed(handler, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kwargs)


async def test_a_borrowed_client_keeps_its_headers_cookies_hooks_and_our_key_wins():
    seen: list[httpx.Request] = []
    hooked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.example.test":
            return httpx.Response(200, content=PNG)
        if request.url.path.endswith("/credits"):
            return httpx.Response(200, json={"data": {"credits": 5}})
        return httpx.Response(
            200,
            json={"success": True, "generationId": "g1", "imageUrls": [f"{CDN}/g1.png?sig=s"]},
        )

    async def hook(request: httpx.Request) -> None:
        hooked.append(request.url.path)

    http = borrowed(
        handler,
        headers={"X-Team": "imaging", "Authorization": "Bearer theirs"},
        cookies={"session": "abc"},
        auth=httpx.BasicAuth("user", "pass"),
        event_hooks={"request": [hook]},
    )
    async with http, AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
        assert await client.credits() == 5
        await client.generate("borrowed")
    first, second = seen
    for request in (first, second):
        assert request.headers["authorization"] == f"Bearer {KEY}"  # ours, not theirs
        assert request.headers["x-team"] == "imaging"
        assert request.headers["cookie"] == "session=abc"
        # httpx's default User-Agent is replaced by ours.
        assert request.headers["user-agent"].startswith("nanobanana/")
    assert hooked == ["/api/v1/credits", "/api/v1/generate"]


async def test_downloads_through_a_borrowed_client_never_carry_a_key(tmp_path):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})

    http = borrowed(handler, headers={"Authorization": "Bearer theirs", "User-Agent": "acme/2"})
    async with http, AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
        assert client.user_agent == "acme/2"  # set on purpose: kept
        await client.download(f"{CDN}/g1.png", tmp_path)
    (image,) = seen
    assert "authorization" not in image.headers
    assert image.headers["user-agent"] == "acme/2"


async def test_an_explicit_user_agent_on_a_borrowed_client_is_kept_on_api_requests():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"credits": 1}})

    http = borrowed(handler, headers={"User-Agent": "acme-gateway-allowed/1.0"})
    async with http, AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
        await client.credits()
    assert seen[0].headers["user-agent"] == "acme-gateway-allowed/1.0"


# -- telemetry ---------------------------------------------------------------------------


@pytest.fixture
def spans():
    require_module("opentelemetry.sdk", "recording spans (opentelemetry-sdk)")
    require_module("opentelemetry.instrumentation.httpx", "the httpx instrumentation")
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def assert_one_span_per_request(exporter, sim, key: str) -> None:
    finished = exporter.get_finished_spans()
    api_requests = [r for r in sim.requests if r.origin == "api"]
    assert len(finished) == len(api_requests) + 1  # and the one image download
    methods = [
        (span.attributes or {}).get(
            "http.request.method", (span.attributes or {}).get("http.method")
        )
        for span in finished
    ]
    assert methods.count("POST") == 2  # the sync generation and the stream
    for span in finished:
        text = repr(dict(span.attributes or {})) + span.name
        assert key not in text


async def test_global_httpx_instrumentation_records_one_span_per_request(spans, tmp_path):
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    provider, exporter = spans
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with Simulator(api_key=KEY) as sim:
            async with AsyncNanoBanana(
                api_key=KEY, base_url=sim.base_url, trust_env=False
            ) as client:
                assert client.http_client._transport.dispatch.uses_fast_path()
                await client.credits()
                generation = await client.generate("traced")
                [event async for event in client.stream("traced stream")]
                await client.download(generation, tmp_path)
            assert_one_span_per_request(exporter, sim, KEY)
    finally:
        instrumentor.uninstrument()


async def test_instrumenting_the_client_records_one_span_per_request(spans, tmp_path):
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    provider, exporter = spans
    with Simulator(api_key=KEY) as sim:
        async with AsyncNanoBanana(api_key=KEY, base_url=sim.base_url, trust_env=False) as client:
            HTTPXClientInstrumentor.instrument_client(client.http_client, tracer_provider=provider)
            await client.credits()
            generation = await client.generate("traced")
            [event async for event in client.stream("traced stream")]
            await client.download(generation, tmp_path)
        assert_one_span_per_request(exporter, sim, KEY)


# -- what the transport relies on ----------------------------------------------------------


def test_httpx_keeps_an_httpcore_pool_in_the_private_attribute_we_replace():
    import httpcore  # noqa: PLC0415

    # The one private attribute of httpx the transport depends on (see _transport.py).
    assert isinstance(httpx.AsyncHTTPTransport().__dict__["_pool"], httpcore.AsyncConnectionPool)
    assert isinstance(NanoBananaTransport().__dict__["_pool"], _Dispatch)
    assert "handle_async_request" not in NanoBananaTransport.__dict__


def test_a_transport_without_the_attribute_fails_clearly_at_construction(monkeypatch):
    original = httpx.AsyncHTTPTransport.__init__

    def changed(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._pool

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "__init__", changed)
    with pytest.raises(RuntimeError, match="keeps no httpcore pool"):
        NanoBananaTransport()


@pytest.mark.parametrize("using", ["httpcore", "httpx"])
async def test_respx_sees_requests_of_the_default_client(using):
    async with AsyncNanoBanana(api_key=KEY, base_url=API, trust_env=False) as client:
        with respx.mock(using=using) as mock:
            route = mock.get(f"{API}/credits").respond(json={"data": {"credits": 3}})
            assert await client.credits() == 3
        assert route.called
        assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"
        assert client.http_client._transport.stats().open == 0


RESPX_FIRST = """
import asyncio, respx
API = "https://api.example.test/api/v1"

async def main():
    async with respx.mock(base_url=API) as router:
        router.get("/credits").respond(json={"data": {"credits": 9}})
        from nanobanana import AsyncNanoBanana  # the transport module loads under the mock
        async with AsyncNanoBanana(api_key="nb_k", base_url=API, trust_env=False) as client:
            print(await client.credits())

asyncio.run(main())
"""


def test_respx_active_before_the_transport_is_imported_still_sees_requests():
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-W", "error", "-c", RESPX_FIRST],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "9"
