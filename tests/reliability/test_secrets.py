"""Key safety: the API key is in no repr, log record, exception text or URL, and travels
to the API's host only (never to the CDN, never across a redirect).
"""

from __future__ import annotations

import contextlib
import logging
import traceback

import httpx
import pytest
from reliability_support import SECRET_KEY, RawServer, drain, fast_client, whole

from nanobanana import (
    APIConnectionError,
    AsyncNanoBanana,
    AuthenticationError,
    DownloadError,
    InternalServerError,
    NanoBananaError,
    UnexpectedResponseError,
)
from nanobanana.testing import Simulator, fingerprint

LOGGERS = ("nanobanana", "httpx", "httpcore", "asyncio", "hpack", "h11")


@pytest.fixture
def sim():
    with Simulator(seed=3, stream_event_ids=True, retry_after="0") as s:
        s.add_account(SECRET_KEY, credits=1000, concurrency_limit=4)
        yield s


def exception_texts(error: BaseException) -> list[str]:
    """Every text an exception shows: message, repr, traceback with its causes, and
    the reprs of the request and response it carries."""
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for name in ("request", "response", "body", "url", "field"):
        value = getattr(error, name, None)
        if value is not None:
            texts.append(repr(value))
            texts.append(str(value))
    response = getattr(error, "response", None)
    if response is not None:
        texts += [repr(response.request), str(response.request.url)]
        texts.append(repr(response.request.headers))  # httpx masks Authorization here
        texts.append(str(response.request.headers.raw))  # but not here
        texts.append(response.text)
    requests = [getattr(error, "request", None)]
    if isinstance(error.__cause__, httpx.HTTPError):  # what an error tracker also shows
        with contextlib.suppress(RuntimeError):  # an httpx error may carry no request
            requests.append(error.__cause__.request)
    for request in requests:
        if request is not None:
            texts += [str(request.url), repr(request.headers), str(request.headers.raw)]
    return texts


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = []
    for record in records:
        texts.append(formatter.format(record))  # with exc_info and stack, if any
        texts.append(repr(record.args))
        texts.append(repr(record.__dict__))
    return texts


async def test_the_key_is_in_no_log_record_exception_repr_or_url(sim, tmp_path, caplog):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    shown: list[str] = []

    async def expect(error_class, call):
        with pytest.raises(error_class) as info:
            await call
        errors.append(info.value)

    async with fast_client(sim, api_key=SECRET_KEY) as client:
        shown.append(repr(client))
        shown.append(str(client.http_client.headers))
        models = await client.models()
        shown += [repr(m) for m in models]
        await client.credits()
        sim.inject("429", path="/generate", times=2)  # retried: logged at DEBUG
        generation = await client.generate("secret-free prompt")
        events = await drain(client.stream("streamed"))
        shown += [repr(e) for e in events]
        job = await client.submit("async")
        shown.append(repr(job))
        sim.inject("500", method="GET", path="/generate")  # a poll retried
        done = await job.wait(timeout=10)
        shown += [repr(generation), repr(done)]
        stream = client.stream("repr me")
        shown.append(repr(stream))
        await stream.aclose()
        await client.download(generation, tmp_path)

        # And the failures: each error's every text is checked below.
        sim.inject("500_after_charge", path="/generate")
        await expect(InternalServerError, client.generate("p"))
        sim.inject("reset_after", path="/generate")
        await expect(APIConnectionError, client.generate("p"))
        sim.inject("sse_cut", with_id=False)
        await expect(APIConnectionError, drain(client.stream("p")))
        sim.inject("cdn_410")
        await expect(DownloadError, client.download(generation, tmp_path / "gone"))
        sim.inject("status", status=401, path="/credits")
        await expect(AuthenticationError, client.credits())
        sim.inject("status", status=200, body="not json", path="/credits")
        await expect(UnexpectedResponseError, client.credits())
    assert len(errors) == 6

    texts = shown + record_texts(caplog.records)
    for error in errors:
        texts += exception_texts(error)
    leaked = [text for text in texts if SECRET_KEY in text]
    assert leaked == []
    # The logs were really there to look at.
    assert any(r.name == "nanobanana" and "retrying" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("httpx") for r in caplog.records)

    # Nor in any URL the server saw, and never on a request to the CDN.
    await sim.wait_for_async(lambda: sum(r.origin == "cdn" for r in sim.requests) >= 2)
    for record in sim.requests:
        assert SECRET_KEY not in record.path
        assert SECRET_KEY not in record.query
    api = [r for r in sim.requests if r.origin == "api"]
    assert all(r.authorization for r in api if not r.path.endswith("/models"))
    assert not any(r.authorization for r in api if r.path.endswith("/models"))
    assert {r.key_fingerprint for r in api if r.authorization} == {fingerprint(SECRET_KEY)}
    cdn = [r for r in sim.requests if r.origin == "cdn"]
    assert cdn
    assert not any(r.authorization for r in cdn)


async def test_the_key_never_follows_a_download_to_another_host(sim, tmp_path):
    async with fast_client(sim, api_key=SECRET_KEY) as client:
        generation = await client.generate("p", quantity=2)
        # Each image redirects once to another origin (localhost instead of 127.0.0.1).
        for index in range(2):
            sim.inject("cdn_redirect", path=f"/img/{generation.id}/{index}.png")
        paths = await client.download(generation, tmp_path)
    assert len(paths) == 2
    await sim.wait_for_async(lambda: sum(r.origin == "cdn" for r in sim.requests) >= 4)
    cdn = [r for r in sim.requests if r.origin == "cdn"]
    assert [r.status for r in cdn].count(302) == 2
    assert [r.status for r in cdn].count(200) == 2
    assert not any(r.authorization for r in cdn)


async def test_the_key_goes_to_no_host_but_the_apis_even_when_the_api_redirects():
    async def thief(request, writer):
        writer.write(whole(200, b'{"data": {"credits": 1}}', "application/json"))
        await writer.drain()

    async with RawServer(thief) as other:

        async def redirect(request, writer):
            location = other.origin + "/api/v1/credits"
            writer.write(whole(307, b"", "text/plain", Location=location))
            await writer.drain()

        async with RawServer(redirect) as api:
            client = AsyncNanoBanana(api_key=SECRET_KEY, base_url=api.origin + "/api/v1")
            async with client:
                with pytest.raises(NanoBananaError):
                    await client.credits()
    assert api.requests[0].headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert other.requests == []


@pytest.mark.parametrize(
    "body",
    [
        f'{{"error": "Invalid API key: {SECRET_KEY}"}}',
        f"<html><body>Unknown key {SECRET_KEY}</body></html>",
        f"key {SECRET_KEY} refused",
    ],
)
async def test_a_server_echoing_the_key_does_not_put_it_in_our_error_text(body):
    async def echo(request, writer):
        content_type = "application/json" if body.startswith("{") else "text/plain"
        writer.write(whole(401, body.encode(), content_type))
        await writer.drain()

    api = RawServer(echo)
    async with api, AsyncNanoBanana(api_key=SECRET_KEY, base_url=api.origin + "/api/v1") as c:
        with pytest.raises(AuthenticationError) as info:
            await c.credits()
    assert [t for t in exception_texts(info.value) if SECRET_KEY in t] == []
    assert str(info.value).startswith("401")
    assert "[api key]" in str(info.value) + repr(info.value.body)


@pytest.mark.parametrize(
    "key",
    ["nb_cl\u00e9_secret", "\u201cnb_quoted_secret\u201d", "nb_snow\u2603man_secret"],
)
async def test_a_key_an_http_header_cannot_carry_is_refused_clearly_without_echoing_it(
    monkeypatch, key
):
    # A key pasted with a typographic quote or an accent: refused when the client is
    # made, with a message that names the problem but not the key.
    with pytest.raises(ValueError, match="printable ASCII") as info:
        AsyncNanoBanana(api_key=key)
    assert "secret" not in str(info.value)
    monkeypatch.setenv("NANOBANANA_API_KEY", key)
    with pytest.raises(ValueError, match="NANOBANANA_API_KEY") as info:
        AsyncNanoBanana()
    assert "secret" not in str(info.value)
