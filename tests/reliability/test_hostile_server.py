"""Hostile servers: every broken, giant or malicious answer gets a clear typed error.

Memory stays bounded for the giant cases (tracemalloc), nothing is written outside a
download's destination, and the client is fine afterwards (no slot, no connection
held). Where the simulator has the behaviour it serves it; the rest comes from a raw
asyncio server in `reliability_support`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import tracemalloc
from pathlib import Path

import anyio
import attrs
import pytest
from reliability_support import (
    FAST_RETRIES,
    RawServer,
    assert_no_leaks,
    drain,
    fast_client,
    head,
    whole,
)

from nanobanana import (
    APIConnectionError,
    APIStatusError,
    AsyncNanoBanana,
    DownloadError,
    GenerationFailedError,
    GenerationStatus,
    InternalServerError,
    NanoBananaError,
    ProgressEvent,
    RetryPolicy,
    ServerBusyError,
    SystemClock,
    UnexpectedResponseError,
)
from nanobanana._sse import SSETooLargeError
from nanobanana.testing import Simulator

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n"
KEY = "nb_hostile_test_key"


@pytest.fixture
def sim():
    with Simulator(seed=7, credits=1000, concurrency_limit=4, retry_after="0") as s:
        yield s


def raw_client(server: RawServer, **kwargs) -> AsyncNanoBanana:
    kwargs.setdefault("retry_policy", FAST_RETRIES)
    return AsyncNanoBanana(api_key=KEY, base_url=server.origin + "/api/v1", **kwargs)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@contextlib.contextmanager
def peak_memory():
    """Yields a list that holds tracemalloc's peak (bytes) once the block is done."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


async def _write_until_gone(writer: asyncio.StreamWriter, piece: bytes, limit: int) -> int:
    """Write `piece` over and over (at most `limit` bytes) until the client leaves."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < limit:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
    return sent


def sse_head() -> bytes:
    return head(200, {"Content-Type": "text/event-stream", "Connection": "close"})


# -- JSON answers that are not what the protocol says -----------------------------------


def json_answer(status: int, body: bytes | str, content_type: str = "application/json"):
    if isinstance(body, str):
        body = body.encode()

    async def handler(request, writer):
        writer.write(whole(status, body, content_type))
        await writer.drain()

    return handler


CALLS = {
    "credits": lambda c: c.credits(),
    "models": lambda c: c.models(),
    "get_generation": lambda c: c.get_generation("gen_1"),
    "generate": lambda c: c.generate("p"),
    "submit": lambda c: c.submit("p"),
}


@pytest.mark.parametrize(
    ("call", "body", "field"),
    [
        ("credits", "this is not json", None),
        ("credits", "<html><body>Welcome to nginx!</body></html>", None),
        ("credits", "", None),
        ("credits", '{"data": []}', "credits"),
        ("credits", '{"data": {"credits": "100"}}', "credits"),
        ("credits", '{"data": {"credits": true}}', "credits"),
        ("credits", "[1, 2, 3]", "data"),
        ("credits", '"data"', "data"),
        ("credits", '{"data": {"credits": 1e400}}', "credits"),  # json.loads gives inf
        ("credits", '{"data": {"credits": NaN}}', "credits"),  # json.loads accepts NaN
        ("models", '{"data": {"name": "m"}}', "data"),
        ("models", '{"data": [1]}', "a model"),
        ("models", '{"data": [{"displayName": "no name"}]}', "name"),
        ("models", '{"data": [{"name": "m", "creditsCost": "1"}]}', "creditsCost"),
        ("models", '{"data": [{"name": "m", "creditsCost": Infinity}]}', "creditsCost"),
        ("models", '{"data": [{"name": "m", "creditsCost": NaN}]}', "creditsCost"),
        ("get_generation", '{"data": null}', "the generation"),
        ("get_generation", '{"data": {"id": 5, "processingStatus": "completed"}}', "id"),
        ("get_generation", '{"data": {"id": "g"}}', "processingStatus"),
        (
            "get_generation",
            '{"data": {"id": "g", "processingStatus": "exploded"}}',
            "processingStatus",
        ),
        (
            "get_generation",
            '{"data": {"id": "g", "processingStatus": "completed", "outputImageUrls": "u"}}',
            "outputImageUrls",
        ),
        (
            "get_generation",
            '{"data": {"id": "g", "processingStatus": "completed", "outputImageUrls": [1]}}',
            "outputImageUrls",
        ),
        ("generate", '{"success": true, "imageUrls": ["http://x/1.png"]}', "generationId"),
        ("generate", "[]", "the generate response"),
        ("generate", '{"success": true, "generationId": "g", "imageUrls": "u"}', "imageUrls"),
        ("submit", '{"success": true, "async": true}', "generationId"),
    ],
)
async def test_a_2xx_body_we_cannot_read_is_an_unexpected_response_naming_the_field(
    call, body, field
):
    async with RawServer(json_answer(200, body)) as server, raw_client(server) as client:
        with pytest.raises(UnexpectedResponseError) as info:
            await CALLS[call](client)
        assert info.value.field == field
        if field is not None:
            assert repr(field) in str(info.value) or field in str(info.value)
        assert len(str(info.value)) < 1000
        assert_no_leaks(client)


@pytest.mark.parametrize("call", ["generate", "submit"])
@pytest.mark.parametrize(
    "body", ["<html>accepted</html>", '{"success": true}', '{"success": true, "generationId": 7}']
)
async def test_an_unreadable_2xx_to_post_generate_says_it_may_have_been_charged(call, body):
    # A 2xx means the generation was accepted and charged (async-mode docs): a caller
    # must be told, or it would pay again for a generation it cannot see.
    async with RawServer(json_answer(200, body)) as server, raw_client(server) as client:
        with pytest.raises(UnexpectedResponseError) as info:
            await CALLS[call](client)
    assert info.value.may_have_been_charged
    assert "may have been charged" in str(info.value)
    assert len(server.requests) == 1  # and it was not resent


async def test_a_json_body_with_the_wrong_content_type_is_still_read():
    # Proxies relabel bodies; what matters is that the body is the protocol's JSON.
    body = b'{"data": {"credits": 42}}'
    server = RawServer(json_answer(200, body, "text/html"))
    async with server, raw_client(server) as client:
        assert await client.credits() == 42


async def test_a_giant_html_error_page_gives_a_short_typed_error():
    page = b"<html><body>" + b"<p>Bad gateway</p>" * 300_000 + b"</body></html>"  # ~5 MB
    server = RawServer(json_answer(502, page, "text/html"))
    async with server, raw_client(server, max_retries=0) as client:
        with pytest.raises(InternalServerError) as info:
            await client.credits()
    assert str(info.value).startswith("502 ")
    assert len(str(info.value)) < 300


def endless_answer(status: int, sent: list[int], content_type: str = "application/json"):
    """A chunked answer that never ends: what a broken proxy or a hostile server sends."""

    async def handler(request, writer):
        writer.write(head(status, {"Content-Type": content_type, "Transfer-Encoding": "chunked"}))
        chunk = b'{"data": [' + b"1, " * 20000
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent.append(await _write_until_gone(writer, framed, 512 * MB))

    return handler


@pytest.mark.parametrize(("call", "charged"), [("credits", False), ("generate", True)])
async def test_an_endless_json_answer_is_refused_with_memory_bounded(call, charged):
    sent: list[int] = []
    async with RawServer(endless_answer(200, sent)) as server, raw_client(server) as client:
        with peak_memory() as peak, pytest.raises(UnexpectedResponseError) as info:
            await CALLS[call](client)
        assert_no_leaks(client)
        await server.settle(timeout=5.0)
    assert "1,048,576 bytes" in str(info.value)
    assert info.value.may_have_been_charged is charged
    assert len(server.requests) == 1
    assert peak[0] < 16 * MB, peak
    assert sent[0] < 64 * MB  # the client hung up instead of reading on


ERROR_CALLS = {
    "credits": lambda c: c.credits(),
    "stream": lambda c: drain(c.stream("p")),
}


@pytest.mark.parametrize("call", ERROR_CALLS)
async def test_an_endless_error_page_keeps_its_status_class_with_memory_bounded(call):
    sent: list[int] = []
    handler = endless_answer(500, sent, "text/html")
    async with RawServer(handler) as server, raw_client(server, max_retries=0) as client:
        with peak_memory() as peak, pytest.raises(InternalServerError) as info:
            await ERROR_CALLS[call](client)
        assert_no_leaks(client)
        await server.settle(timeout=5.0)
    assert str(info.value).startswith("500 ")
    assert len(info.value.response.content) <= 2 * MB
    assert peak[0] < 16 * MB, peak
    assert sent[0] < 64 * MB


async def test_an_html_error_page_on_post_generate_is_not_resent_and_may_have_charged():
    server = RawServer(json_answer(502, "<h1>502 Bad Gateway</h1>", "text/html"))
    async with server, raw_client(server) as client:
        with pytest.raises(InternalServerError) as info:
            await client.generate("p")
    assert info.value.may_have_been_charged
    assert len(server.requests) == 1


async def test_an_html_503_with_retry_after_is_retried_then_a_busy_error():
    page = whole(503, b"<h1>Service Unavailable</h1>", "text/html", Retry_After="0.01")

    async def handler(request, writer):
        writer.write(page)
        await writer.drain()

    patient = attrs.evolve(FAST_RETRIES, patience=0.1)
    async with RawServer(handler) as server, raw_client(server, retry_policy=patient) as client:
        with pytest.raises(ServerBusyError, match="Gave up after waiting") as info:
            await client.credits()
    assert info.value.retry_after == 0.01
    # Refusals are waited out for the policy's patience, not counted as attempts.
    assert info.value.refusals == len(server.requests) > FAST_RETRIES.attempts


# -- Retry-After: whatever the header says, waits stay within [0, cap] -------------------


class RecordingClock(SystemClock):
    """The real clock, remembering every sleep the client asks for."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("-5", "backoff"),
        ("-0", "backoff"),
        ("99999999999", "cap"),
        ("9" * 400, "cap"),  # float() of it is inf
        ("1e9", "backoff"),
        ("NaN", "backoff"),
        ("inf", "backoff"),
        ("soon, maybe", "backoff"),
        ("0x10", "backoff"),
        ("Fri, 31 Dec 9999 23:59:59 GMT", "cap"),
        ("Mon, 01 Jan 1900 00:00:00 GMT", 0.0),
        ("Tue, 32 Nov 2023 22:13:50 GMT", "backoff"),
        ("0.01", 0.01),
        ("\u00e9t\u00e9", "backoff"),
    ],
)
async def test_any_retry_after_is_obeyed_within_zero_and_the_cap(sim, retry_after, expected):
    cap = 0.05
    policy = RetryPolicy(attempts=3, wait_initial=0.01, wait_max=0.02, retry_after_max=cap)
    clock = RecordingClock()
    sim.inject("429", path="/credits", retry_after=retry_after)
    async with fast_client(sim, retry_policy=policy, clock=clock) as client:
        started = time.monotonic()
        assert await client.credits() == 1000
        elapsed = time.monotonic() - started
    (wait,) = clock.sleeps
    if expected == "cap":
        assert wait == cap
    elif expected == "backoff":
        assert 0.0 <= wait <= policy.wait_initial  # jittered backoff, header ignored
    else:
        assert wait == pytest.approx(expected)
    assert elapsed < 2.0


# -- redirects: never followed for the API, so the key never travels --------------------


@pytest.mark.parametrize(
    ("method", "status"), [("GET", 302), ("GET", 301), ("POST", 307), ("POST", 308)]
)
async def test_an_api_redirect_to_another_host_is_not_followed(method, status):
    async def elsewhere(request, writer):
        writer.write(whole(200, b'{"data": {"credits": 1}}', "application/json"))
        await writer.drain()

    async with RawServer(elsewhere) as other:
        target = other.origin + "/api/v1/steal"

        async def redirect(request, writer):
            writer.write(whole(status, b"", "text/plain", Location=target))
            await writer.drain()

        async with RawServer(redirect) as server, raw_client(server) as client:
            call = client.credits() if method == "GET" else client.generate("p")
            with pytest.raises(APIStatusError) as info:
                await call
    assert info.value.status_code == status
    assert not info.value.may_have_been_charged
    assert len(server.requests) == 1  # not resent either
    assert other.requests == []


# -- event streams: giant, endless, malformed --------------------------------------------


async def test_a_giant_sse_line_is_refused_with_memory_bounded():
    sent: list[int] = []

    async def handler(request, writer):
        writer.write(sse_head() + b"data: ")
        sent.append(await _write_until_gone(writer, b"x" * 65536, 256 * MB))

    async with RawServer(handler) as server, raw_client(server) as client:
        with peak_memory() as peak, pytest.raises(SSETooLargeError, match="max_line_size"):
            await drain(client.stream("p"))
        assert_no_leaks(client)
        await server.settle(timeout=5.0)
    assert peak[0] < 16 * MB, peak
    assert sent[0] < 32 * MB  # the client hung up instead of reading on


async def test_an_endless_event_of_small_lines_is_refused_with_memory_bounded():
    async def handler(request, writer):
        writer.write(sse_head())
        await _write_until_gone(writer, b'data: {"type": "status"}\n' * 2000, 256 * MB)

    async with RawServer(handler) as server, raw_client(server) as client:
        with peak_memory() as peak, pytest.raises(SSETooLargeError, match="max_event_size"):
            await drain(client.stream("p"))
        assert_no_leaks(client)
    assert peak[0] < 16 * MB, peak


async def test_an_endless_stream_of_heartbeats_keeps_memory_flat_until_the_caller_leaves():
    beat = b'data: {"type":"status","message":"Processing...","progress":0}\n\n'
    step = b'data: {"type":"status","message":"Step %d","progress":%d}\n\n'

    async def handler(request, writer):
        writer.write(sse_head())
        batch = b"".join(step % (i, i % 100) for i in range(500)) + beat * 500
        await _write_until_gone(writer, batch, 256 * MB)

    async with RawServer(handler) as server, raw_client(server) as client:
        seen = 0
        with peak_memory() as peak:
            async with client.stream("p") as events:
                async for event in events:
                    seen += 1
                    assert event.type == "status"
                    if seen == 20_000:
                        break
        assert_no_leaks(client)
    assert peak[0] < 16 * MB, peak


@pytest.mark.parametrize("how", ["move_on_after", "asyncio.wait_for", "task.cancel"])
async def test_an_endless_stream_without_events_is_cancellable_and_leaves_nothing(how):
    # Comments and blank lines only: bytes keep coming, so no idle timeout fires, and
    # there is no event to yield. Only the caller's own deadline can end it.
    flowing = asyncio.Event()

    async def handler(request, writer):
        writer.write(sse_head())
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            for _ in range(4):  # the client is reading: it has taken 4 batches
                writer.write(b": ping\n\n" * 100)
                await writer.drain()
            flowing.set()
            await _write_until_gone(writer, b": ping\n\n" * 100, 256 * MB)

    async def consume(client):
        async for _ in client.stream("p"):
            pytest.fail("a comment is not an event")

    async with RawServer(handler) as server, raw_client(server) as client:
        if how == "move_on_after":
            with anyio.move_on_after(0.2) as scope:
                await consume(client)
            assert scope.cancelled_caught
        elif how == "asyncio.wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(consume(client), 0.2)
        else:
            task = asyncio.create_task(consume(client))
            await flowing.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert flowing.is_set()
        assert_no_leaks(client)


async def tap(events, seen):
    async for event in events:
        seen.append(event)
        yield event


STATUS = b'data: {"type":"status","message":"Working","progress":10}\n\n'


@pytest.mark.parametrize(
    ("events", "error"),
    [
        # A complete event whose data is not an object, with no id to poll with.
        (b'data: {"type":"complete","data":"done"}\n\n', UnexpectedResponseError),
        (b'data: {"type":"complete","data":{"imageUrls":"u"}}\n\n', UnexpectedResponseError),
        (b'data: {"type":"complete","data":{"imageUrls":[1,2]}}\n\n', UnexpectedResponseError),
        (b'data: {"type":"complete"}\n\n', UnexpectedResponseError),
        (b'data: {"type":"error"}\n\n', GenerationFailedError),
        (b'data: {"type":"error","message":5,"data":[]}\n\n', GenerationFailedError),
        (b'data: {"type":"complete","data":{"success":false}}\n\n', GenerationFailedError),
        # Only junk and unknown types, then the end: cut with no id.
        (b"data: [1,2]\n\ndata: null\n\ndata: {\n\nevent: x\ndata: {}\n\n", APIConnectionError),
        (b'data: {"type":"weird","progress":500}\n\n', APIConnectionError),
        (b'data: {"type":"status","progress":"NaN","message":[1]}\n\n', APIConnectionError),
        (b'data: {"type":"status","progress":-1e308}\n\n', APIConnectionError),
    ],
)
async def test_events_of_the_wrong_shape_end_in_a_typed_error(events, error):
    async def handler(request, writer):
        writer.write(sse_head() + STATUS + events)
        await writer.drain()

    async with RawServer(handler) as server, raw_client(server) as client:
        seen: list[ProgressEvent] = []
        with pytest.raises(error):
            await drain(tap(client.stream("p"), seen))
        assert_no_leaks(client)
    assert seen
    assert all(0 <= event.progress <= 100 for event in seen)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"type":"status","progress":1e400}\n\n',
        b'data: {"type":"complete","data":{"imageUrls":["http://x/1.png"],"creditsUsed":1e400}}\n\n',
    ],
)
async def test_an_infinite_number_in_an_event_is_not_a_crash(event):
    complete = b'data: {"type":"complete","data":{"imageUrls":["http://x/1.png"]}}\n\n'

    async def handler(request, writer):
        writer.write(sse_head() + event + complete)
        await writer.drain()

    async with RawServer(handler) as server, raw_client(server) as client:
        events = await drain(client.stream("p"))
    assert events[-1].type == "complete"
    assert all(0 <= e.progress <= 100 for e in events)


async def test_a_stream_answered_with_json_is_a_typed_error_that_may_have_charged():
    async def handler(request, writer):
        writer.write(whole(200, b'{"success": true}', "application/json"))
        await writer.drain()

    async with RawServer(handler) as server, raw_client(server) as client:
        with pytest.raises(UnexpectedResponseError) as info:
            await drain(client.stream("p"))
        assert_no_leaks(client)
    assert info.value.field == "content-type"
    assert info.value.may_have_been_charged


async def test_a_wrong_content_type_then_a_cut_is_still_a_typed_error(sim):
    sim.inject("wrong_content_type", mode="stream")
    sim.inject("sse_cut", mode="stream", after_events=1)
    async with fast_client(sim) as client:
        with pytest.raises(NanoBananaError):
            await drain(client.stream("p"))
        assert_no_leaks(client)


# -- evil generation ids: round-trip as data, never as a path -----------------------------

EVIL_IDS = [
    "../../escaped",
    "/etc/passwd",
    "/tmp/x",  # noqa: S108 - a hostile id, not a file we use
    "a\x00b",
    "..\\..\\windows",
    "C:\\evil",
    "a/../../b",
    ".hidden",
    "~/x",
    "x" * 400,
    "\U0001f34c/../\U0001f34c",
    "%2e%2e%2fescaped",
    "gen?id=other&x=1#frag",
]


@pytest.mark.parametrize("evil", EVIL_IDS)
async def test_an_evil_generation_id_is_data_never_a_path(sim, tmp_path, evil):
    sim.inject("outcome", outcome="success", generation_id=evil)
    dest = tmp_path / "a" / "b"
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        assert generation.id == evil
        # The id round-trips through the query string, whatever it holds.
        polled = await client.get_generation(evil)
        assert (polled.id, polled.status) == (evil, GenerationStatus.COMPLETED)
        assert (await client.job(evil).wait(timeout=10)).image_urls == generation.image_urls
        (path,) = await client.download(generation, dest)
    assert path.parent == dest.resolve()
    assert "\x00" not in path.name
    assert not path.name.startswith(".")
    assert tree(tmp_path) == {"a", "a/b", f"a/b/{path.name}"}
    assert path.read_bytes().startswith(PNG)
    polls = [r for r in sim.requests if r.method == "GET" and r.origin == "api"]
    assert {r.generation_id for r in polls} == {evil}


@pytest.mark.parametrize("evil", [".", ".."])
async def test_a_dot_segment_id_gives_a_download_error_and_writes_nothing(sim, tmp_path, evil):
    # As a URL path segment "." and ".." are dot-segments (RFC 3986), removed before
    # sending, so the image cannot be found: an error, and no file anywhere.
    sim.inject("outcome", outcome="success", generation_id=evil)
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        assert (await client.get_generation(evil)).id == evil
        with pytest.raises(DownloadError, match="404"):
            await client.download(generation, tmp_path / "d")
    assert tree(tmp_path) == {"d"}


async def test_an_evil_id_from_the_stream_is_safe_to_download(sim, tmp_path):
    sim.inject("outcome", outcome="success", generation_id="../../../stream-escape")
    dest = tmp_path / "dest"
    async with fast_client(sim) as client:
        *_, complete = await drain(client.stream("p"))
        (path,) = await client.download(complete.generation, dest)
    assert path.parent == dest.resolve()
    assert tree(tmp_path) == {"dest", f"dest/{path.name}"}


# -- hostile image downloads ------------------------------------------------------------


def cdn(body: bytes, content_type: str = "image/png", **extra: str):
    async def handler(request, writer):
        writer.write(whole(200, body, content_type, **extra))
        await writer.drain()

    return handler


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"error": "not found"}', "image/png"),
        (b"", "image/png"),
        (b"<!DOCTYPE html><html>Please enable JavaScript</html>", "text/html"),
        (b"GIF8", "image/gif"),  # shorter than any signature
        (PNG[:7], "image/png"),  # a truncated signature
        (b"\x00" * 4096, "application/octet-stream"),
    ],
)
async def test_a_body_that_is_not_an_image_is_refused_and_nothing_is_written(
    tmp_path, body, content_type
):
    async with RawServer(cdn(body, content_type)) as server, raw_client(server) as client:
        with pytest.raises(DownloadError, match="not a PNG"):
            # One try (timeout=0): that a non-image is retried until the deadline is
            # tests/test_download.py's; here, that it is refused and leaves nothing.
            await client.download(
                server.origin + "/img/1.png?sig=s3cret", tmp_path / "d", timeout=0
            )
        assert_no_leaks(client)
    assert tree(tmp_path) == {"d"}


async def test_an_endless_image_without_a_length_stops_at_max_size_with_memory_bounded(tmp_path):
    sent: list[int] = []

    async def handler(request, writer):
        writer.write(head(200, {"Content-Type": "image/png", "Connection": "close"}) + PNG)
        sent.append(await _write_until_gone(writer, bytes(65536), 1024 * MB))

    async with RawServer(handler) as server, raw_client(server) as client:
        with peak_memory() as peak, pytest.raises(DownloadError, match="larger than"):
            await client.download(server.origin + "/img/1.png", tmp_path, max_size=2 * MB)
        assert_no_leaks(client)
        await server.settle(timeout=5.0)
    assert peak[0] < 16 * MB, peak
    assert sent[0] < 64 * MB
    assert tree(tmp_path) == set()


async def test_an_endless_chunked_image_stops_at_max_size(tmp_path):
    async def handler(request, writer):
        writer.write(head(200, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}))
        writer.write(b"%x\r\n%s\r\n" % (len(PNG), PNG))
        chunk = bytes(65536)
        await _write_until_gone(writer, b"%x\r\n%s\r\n" % (len(chunk), chunk), 1024 * MB)

    async with RawServer(handler) as server, raw_client(server) as client:
        with pytest.raises(DownloadError, match="larger than"):
            await client.download(server.origin + "/img/1.png", tmp_path, max_size=2 * MB)
        assert_no_leaks(client)
    assert tree(tmp_path) == set()


async def test_a_gzip_bomb_stops_at_max_size_with_memory_bounded(tmp_path):
    # 64 MB of image that travels as ~64 KB of gzip. We ask for identity and refuse an
    # encoded body rather than inflate it.
    bomb = gzip.compress(PNG + bytes(64 * MB), compresslevel=9)
    handler = cdn(bomb, "image/png", Content_Encoding="gzip")
    async with RawServer(handler) as server, raw_client(server) as client:
        with peak_memory() as peak, pytest.raises(DownloadError, match="gzip-encoded"):
            await client.download(server.origin + "/img/1.png", tmp_path, max_size=1 * MB)
        assert_no_leaks(client)
    assert peak[0] < 32 * MB, peak
    assert tree(tmp_path) == set()


async def test_a_huge_declared_length_is_refused_before_reading(sim, tmp_path):
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        sim.inject("cdn_huge", size=3 * 1024 * MB)
        with pytest.raises(DownloadError, match="larger than"):
            await client.download(generation, tmp_path)
    assert tree(tmp_path) == set()


async def test_a_download_redirected_to_the_api_carries_no_key(sim, tmp_path):
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        sim.inject("cdn_redirect", location=sim.base_url + "/credits")
        with pytest.raises(DownloadError, match="401"):
            await client.download(generation, tmp_path)
    await sim.wait_for_async(lambda: len(sim.requests) >= 3)
    followed = [r for r in sim.requests if r.path.endswith("/credits")]
    assert len(followed) == 1
    assert not followed[0].authorization
    assert tree(tmp_path) == set()
