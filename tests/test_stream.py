import contextlib
import gc
import json
import logging
import random
import warnings
from datetime import datetime, timedelta, timezone

import anyio
import httpx
import pytest

from nanobanana import (
    APIConnectionError,
    AsyncNanoBanana,
    FakeClock,
    Generation,
    GenerationFailedError,
    GenerationStatus,
    InsufficientCreditsError,
    JobTimeoutError,
    PollPolicy,
    ProgressEvent,
    UnexpectedResponseError,
)
from nanobanana._sse import SSETooLargeError, StreamIdleError

API = "https://api.test/api/v1"
KEY = "nb_stream_test_secret_key"
STALL = object()


def sse(payload):
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def status(progress, message="Processing...", **extra):
    return sse({"type": "status", "message": message, "progress": progress, **extra})


def complete(urls=("https://cdn.test/a.png",), **data):
    return sse(
        {
            "type": "complete",
            "message": "Generation complete",
            "progress": 100,
            "data": {"success": True, "imageUrls": list(urls), **data},
        }
    )


def poll_body(gid, state="completed", urls=("https://cdn.test/polled.png",), error=None):
    body = {
        "id": gid,
        "prompt": "p",
        "outputImageUrls": list(urls) if state == "completed" else [],
        "modelUsed": "nanobanan-2",
        "processingStatus": state,
        "creditsUsed": 1,
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    if error:
        body["errorMessage"] = error
    return {"data": body}


class Body(httpx.AsyncByteStream):
    def __init__(self, api, chunks):
        self.api = api
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            if chunk is STALL:
                self.api.stalled.set()
                await anyio.sleep_forever()
            if isinstance(chunk, anyio.Event):  # a gate: the server sends on once set
                self.api.stalled.set()
                await chunk.wait()
                continue
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    async def aclose(self):
        self.api.closing.set()
        if self.api.close_gate is not None:
            await self.api.close_gate.wait()  # a close that takes its time
        self.api.closed += 1


class FakeAPI:
    """POST /generate answers from `streams` (one per call, the last repeats); GETs `polls`."""

    def __init__(self, *streams, polls=()):
        self.streams = list(streams)
        self.polls = list(polls)
        self.requests = []
        self.opened = 0
        self.closed = 0
        self.stalled = anyio.Event()
        self.closing = anyio.Event()
        self.close_gate = None
        self.active_during_poll = []
        self.client = None

    async def handler(self, request):
        self.requests.append(request)
        if request.method == "GET":
            if self.client is not None:
                self.active_during_poll.append(self.client.governor_stats().active)
            if not self.polls:  # nothing scripted: as the service for an unknown id
                return httpx.Response(404, json={"error": "Generation not found"})
            poll = self.polls.pop(0)
            if isinstance(poll, Exception):
                raise poll
            if isinstance(poll, httpx.Response):
                return poll
            return httpx.Response(200, json=poll)
        script = self.streams.pop(0) if len(self.streams) > 1 else self.streams[0]
        if isinstance(script, httpx.Response):
            return script
        self.opened += 1
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream; charset=utf-8"},
            stream=Body(self, script),
        )

    @property
    def bodies(self):
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


@pytest.fixture
async def make_client():
    made = []

    async def make(api, **kwargs):
        http = httpx.AsyncClient(transport=httpx.MockTransport(api.handler))
        kwargs.setdefault("clock", FakeClock())
        client = AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, rng=random.Random(3), **kwargs
        )
        api.client = client
        made.append((client, http))
        return client

    yield make
    for client, http in made:
        await client.aclose()
        await http.aclose()


async def collect(stream):
    return [event async for event in stream]


async def progress_until_failure(stream, seen):
    async for event in stream:
        seen.append(event.progress)


async def test_events_are_parsed_and_the_complete_event_carries_a_full_generation(make_client):
    api = FakeAPI(
        [
            status(0, "Starting generation...", generationId="gen_1"),
            status(50),
            complete(creditsUsed=2, remainingCredits=98),
        ]
    )
    client = await make_client(api)
    events = await collect(client.stream("a cat", model="nanobanan-2", aspect_ratio="16:9"))
    assert [(e.type, e.progress, e.message) for e in events] == [
        ("status", 0, "Starting generation..."),
        ("status", 50, "Processing..."),
        ("complete", 100, "Generation complete"),
    ]
    generation = events[-1].generation
    assert generation is not None
    assert generation.id == "gen_1"
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.image_urls == ("https://cdn.test/a.png",)
    assert (generation.prompt, generation.model) == ("a cat", "nanobanan-2")
    assert (generation.credits_used, generation.remaining_credits) == (2, 98)
    assert events[-1].generation_id == "gen_1"
    assert api.bodies == [
        {"prompt": "a cat", "mode": "stream", "selectedModel": "nanobanan-2", "aspectRatio": "16:9"}
    ]
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_heartbeats_never_move_progress_backwards(make_client):
    api = FakeAPI([status(0), status(40), status(0), status(70), status(0), complete()])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert [e.raw_progress for e in events] == [0, 40, 0, 70, 0, 100]
    assert [e.progress for e in events] == [0, 40, 40, 70, 70, 100]
    assert [e.is_heartbeat for e in events] == [False, False, True, False, True, False]


async def test_junk_lines_split_bytes_and_crlf_parse_like_a_clean_stream(make_client):
    raw = (
        b": comment\r\n\r\ndata: not json\r\n\r\ndata: [1, 2]\r\n\r\nevent: ping\r\n\r\n"
        + status(30, "\u00c9tape \U0001f34c").replace(b"\n", b"\r\n")
        + b'data: {"type":"brand-new","x":1}\n\n'
        + complete(generationId="gen_2")
    )
    api = FakeAPI([raw[i : i + 1] for i in range(len(raw))])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert [(e.type, e.message) for e in events] == [
        ("status", "\u00c9tape \U0001f34c"),
        ("complete", "Generation complete"),
    ]
    assert events[-1].generation.id == "gen_2"


async def test_a_junk_line_inside_a_multi_line_event_does_not_hide_the_json_line(make_client):
    api = FakeAPI([b"data: keep-alive\n" + complete(generationId="g")])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert events[-1].generation.image_urls == ("https://cdn.test/a.png",)


async def test_an_error_event_raises_generation_failed_with_the_servers_message(make_client):
    api = FakeAPI(
        [
            status(10, generationId="gen_err"),
            sse(
                {
                    "type": "error",
                    "message": "Generation failed",
                    "data": {"success": False, "error": "Upstream model overloaded"},
                }
            ),
            status(99),
        ]
    )
    client = await make_client(api)
    seen = []
    with pytest.raises(GenerationFailedError, match="Upstream model overloaded") as info:
        await progress_until_failure(client.stream("p"), seen)
    assert seen == [10]
    assert info.value.generation_id == "gen_err"
    assert "gen_err" in str(info.value)
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_complete_event_with_success_false_is_a_failure(make_client):
    api = FakeAPI([sse({"type": "complete", "message": "Blocked", "data": {"success": False}})])
    client = await make_client(api)
    with pytest.raises(GenerationFailedError, match="Blocked") as info:
        await collect(client.stream("p"))
    assert info.value.generation_id is None


async def test_a_json_error_before_the_stream_is_a_typed_error_not_a_parse_failure(make_client):
    api = FakeAPI(httpx.Response(402, json={"error": "Insufficient credits"}))
    client = await make_client(api)
    with pytest.raises(InsufficientCreditsError, match="Insufficient credits"):
        await collect(client.stream("p"))
    assert client.governor_stats().active == 0


async def test_a_429_before_the_stream_starts_is_retried_after_retry_after(make_client):
    clock = FakeClock()
    api = FakeAPI(
        httpx.Response(
            429,
            headers={"Retry-After": "2"},
            json={"error": "Too many", "type": "concurrency_limit", "limit": 1, "active": 1},
        ),
        [status(5), complete(generationId="g429")],
    )
    client = await make_client(api, clock=clock)
    events = await collect(client.stream("p"))
    assert events[-1].generation.id == "g429"
    assert clock.sleeps == [2.0]
    assert len(api.bodies) == 2


async def test_a_200_that_is_not_an_event_stream_is_an_unexpected_response(make_client):
    api = FakeAPI(httpx.Response(200, html="<html>Proxy says hello</html>"))
    client = await make_client(api)
    with pytest.raises(UnexpectedResponseError, match="text/event-stream") as info:
        async with client.stream("p"):
            pass
    assert "Proxy says hello" in info.value.body
    assert client.governor_stats().active == 0


async def test_a_cut_after_an_id_is_finished_by_polling(make_client):
    api = FakeAPI(
        [status(10, generationId="gen_cut"), status(60)],  # EOF: no complete
        polls=[poll_body("gen_cut", "processing"), poll_body("gen_cut")],
    )
    client = await make_client(api, max_concurrency=1)
    events = await collect(client.stream("p"))
    assert [e.type for e in events] == ["status", "status", "complete"]
    last = events[-1]
    assert last.generation.image_urls == ("https://cdn.test/polled.png",)
    assert last.generation.created_at is not None
    assert (last.raw_progress, last.progress) == (100, 100)
    polls = [r for r in api.requests if r.method == "GET"]
    assert [r.url.params["id"] for r in polls] == ["gen_cut", "gen_cut"]
    # The stream's slot was given back before polling: only the poll itself was active.
    assert api.active_during_poll == [1, 1]
    assert api.closed == 1


async def test_an_id_inside_data_of_any_event_makes_the_stream_resumable(make_client):
    api = FakeAPI(
        [sse({"type": "status", "progress": 1, "data": {"generationId": "gen_data"}})],
        polls=[poll_body("gen_data")],
    )
    client = await make_client(api)
    stream = client.stream("p")
    events = await collect(stream)
    assert events[-1].generation.id == "gen_data"
    assert stream.generation_id == "gen_data"


@pytest.mark.parametrize(
    "failure", [httpx.ReadError("connection reset"), httpx.RemoteProtocolError("incomplete")]
)
async def test_a_dropped_connection_after_an_id_is_finished_by_polling(make_client, failure):
    api = FakeAPI([status(10, generationId="gen_drop"), failure], polls=[poll_body("gen_drop")])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert events[-1].type == "complete"
    assert events[-1].generation.id == "gen_drop"


async def test_a_poll_that_finds_a_failure_raises_generation_failed(make_client):
    api = FakeAPI(
        [status(10, generationId="gen_f")],
        polls=[poll_body("gen_f", "failed", error="Safety filter")],
    )
    client = await make_client(api)
    with pytest.raises(GenerationFailedError, match="Safety filter"):
        await collect(client.stream("p"))


async def test_the_poll_after_a_cut_honours_the_poll_policy_timeout(make_client):
    api = FakeAPI(
        [status(10, generationId="gen_slow")],
        polls=[poll_body("gen_slow", "processing")] * 50,
    )
    client = await make_client(api, poll_policy=PollPolicy(timeout=10.0))
    with pytest.raises(JobTimeoutError) as info:
        await collect(client.stream("p"))
    assert info.value.generation_id == "gen_slow"


async def test_a_cut_before_any_id_raises_connection_error_saying_it_may_still_run(make_client):
    api = FakeAPI([status(10), status(20), httpx.ReadError("reset")])
    client = await make_client(api)
    seen = []
    with pytest.raises(APIConnectionError, match="may still be running") as info:
        await progress_until_failure(client.stream("p"), seen)
    assert seen == [10, 20]
    assert info.value.may_have_been_charged
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert [r.method for r in api.requests] == ["POST"]


async def test_a_clean_eof_before_complete_without_id_raises_connection_error(make_client):
    api = FakeAPI([status(10)])
    client = await make_client(api)
    with pytest.raises(APIConnectionError, match="may still be running"):
        await collect(client.stream("p"))


async def test_a_silent_stream_is_treated_as_cut_after_the_idle_timeout(make_client):
    api = FakeAPI([status(10, generationId="gen_idle"), STALL], polls=[poll_body("gen_idle")])
    client = await make_client(api)
    events = await collect(client.stream("p", idle_timeout=0.05))
    assert api.stalled.is_set()
    assert events[-1].generation.id == "gen_idle"
    assert api.closed == 1


async def test_a_silent_stream_without_an_id_raises_connection_error_from_the_idle_cut(
    make_client,
):
    api = FakeAPI([status(10), STALL])
    client = await make_client(api)
    with pytest.raises(APIConnectionError, match="may still be running") as info:
        await collect(client.stream("p", idle_timeout=0.05))
    assert isinstance(info.value.__cause__, StreamIdleError)
    assert api.closed == 1


async def test_an_oversized_event_raises_and_closes_the_response(make_client):
    api = FakeAPI(
        [status(1, generationId="gen_big"), b"data: " + b"x" * 5000 + b"\n\n", complete()]
    )
    client = await make_client(api)
    with pytest.raises(SSETooLargeError, match="gen_big"):
        await collect(client.stream("p", max_event_size=1000))
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_complete_event_is_the_result_even_with_an_oversized_line_in_the_same_read(
    make_client,
):
    big_comment = b": " + b"c" * 2000 + b"\n"
    api = FakeAPI([status(1), complete(generationId="gen_ok") + big_comment])
    client = await make_client(api)
    events = await collect(client.stream("p", max_event_size=1000))
    assert events[-1].type == "complete"
    assert events[-1].generation.id == "gen_ok"
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_an_id_in_the_same_read_as_an_oversized_line_still_gives_the_resume_hint(
    make_client,
):
    api = FakeAPI([status(1, generationId="gen_same") + b"data: " + b"x" * 5000 + b"\n\n"])
    client = await make_client(api)
    with pytest.raises(SSETooLargeError, match=r"client\.job\('gen_same'\)"):
        await collect(client.stream("p", max_event_size=1000))
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_complete_event_without_urls_is_fetched_by_polling_when_the_id_is_known(
    make_client,
):
    api = FakeAPI(
        [sse({"type": "complete", "data": {"success": True, "generationId": "gen_nourl"}})],
        polls=[poll_body("gen_nourl")],
    )
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert events[-1].generation.image_urls == ("https://cdn.test/polled.png",)


async def test_a_complete_event_without_urls_or_id_names_the_field(make_client):
    api = FakeAPI([sse({"type": "complete", "data": {"success": True}})])
    client = await make_client(api)
    with pytest.raises(UnexpectedResponseError) as info:
        await collect(client.stream("p"))
    assert info.value.field == "imageUrls"


async def test_a_complete_event_without_any_id_still_gives_the_images(make_client):
    api = FakeAPI([complete()])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert events[-1].generation.image_urls == ("https://cdn.test/a.png",)
    assert events[-1].generation.id == ""
    assert events[-1].generation_id is None


async def test_the_response_is_closed_before_the_complete_event_is_handed_over(make_client):
    api = FakeAPI([status(1), complete(generationId="g")])
    client = await make_client(api, max_concurrency=1)
    async for event in client.stream("p"):
        if event.type == "complete":
            assert api.closed == 1
            assert client.governor_stats().active == 0


async def test_a_thousand_abandoned_loops_leak_no_connection_or_slot(make_client):
    api = FakeAPI([status(1, generationId="g"), status(2), complete()])
    client = await make_client(api, max_concurrency=1)
    for _ in range(1000):
        async for event in client.stream("p"):
            assert event.progress == 1
            break
    events = await collect(client.stream("p"))
    assert events[-1].type == "complete"
    assert api.opened == 1001
    await anyio.lowlevel.checkpoint()
    assert api.closed == 1001
    assert client.governor_stats().active == 0


async def test_async_with_sends_on_enter_and_closes_on_early_exit(make_client):
    api = FakeAPI([status(1, generationId="g_ctx"), status(2), complete()])
    client = await make_client(api, max_concurrency=1)
    async with client.stream("p") as events:
        assert api.opened == 1
        assert client.governor_stats().active == 1
        async for event in events:
            assert event.progress == 1
            break
        assert events.generation_id == "g_ctx"
        # Not closed yet: the stream is still ours to continue.
        rest = [e.progress async for e in events]
        assert rest == [2, 100]
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_async_with_raises_status_errors_on_enter(make_client):
    api = FakeAPI(httpx.Response(402, json={"error": "Insufficient credits"}))
    client = await make_client(api)
    entered = False
    with pytest.raises(InsufficientCreditsError):
        async with client.stream("p"):
            entered = True
    assert not entered


async def test_an_exception_in_the_consumer_closes_the_stream(make_client):
    api = FakeAPI([status(1), status(2), complete()])
    client = await make_client(api, max_concurrency=1)

    async def buggy_consumer():
        async with client.stream("p") as events:
            async for _ in events:
                raise KeyError("consumer bug")

    with pytest.raises(KeyError):
        await buggy_consumer()
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_cancelling_a_consumer_mid_stream_closes_the_response(make_client):
    api = FakeAPI([status(1), STALL])
    client = await make_client(api, max_concurrency=1)
    got = []

    async def consume():
        await progress_until_failure(client.stream("p", idle_timeout=None), got)

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await api.stalled.wait()
        group.cancel_scope.cancel()
    assert got == [1]
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_dropped_stream_object_is_closed_by_garbage_collection(make_client):
    api = FakeAPI([status(1), status(2), complete()])
    client = await make_client(api, max_concurrency=1)
    stream = client.stream("p")
    first = await anext(stream)
    assert isinstance(first, ProgressEvent)
    del stream
    gc.collect()
    await anyio.lowlevel.checkpoint()
    await anyio.lowlevel.checkpoint()
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_aclose_before_iterating_sends_nothing_and_iterating_after_yields_nothing(
    make_client,
):
    api = FakeAPI([complete()])
    client = await make_client(api)
    stream = client.stream("p")
    await stream.aclose()
    await stream.aclose()
    assert await collect(stream) == []
    assert api.requests == []


async def test_aclose_from_a_watchdog_task_ends_the_consumers_loop_quietly_and_frees_all(
    make_client,
):
    api = FakeAPI([status(1, generationId="g_watch"), STALL])
    client = await make_client(api, max_concurrency=1)
    stream = client.stream("p", idle_timeout=None)
    got = []
    first = anyio.Event()

    async def consume():
        async for event in stream:
            got.append(event.progress)
            first.set()
        got.append("loop ended")

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await api.stalled.wait()  # the stream is read up to where the server stalls
        await first.wait()  # and the consumer is inside __anext__, waiting for more
        await stream.aclose()
        # aclose() returns once the response is closed and the slot given back.
        assert api.closed == 1
        assert client.governor_stats().active == 0
    assert got == [1, "loop ended"]
    # The close was deliberate: no polling for the result, though the id was known.
    assert [r.method for r in api.requests] == ["POST"]
    await stream.aclose()  # still harmless to repeat
    assert [e async for e in stream] == []


async def test_aclose_from_another_task_while_the_stream_waits_for_a_slot(make_client):
    api = FakeAPI([status(1), STALL])
    client = await make_client(api, max_concurrency=1)
    waiting = client.stream("p", idle_timeout=None)
    got = []

    async def consume():
        got.extend([e async for e in waiting])
        got.append("loop ended")

    async with client.stream("p", idle_timeout=None), anyio.create_task_group() as group:
        group.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        assert client.governor_stats().waiting == 1
        await waiting.aclose()
        assert client.governor_stats().waiting == 0
        assert client.governor_stats().active == 1  # the first stream's, still open
    assert got == ["loop ended"]
    assert api.opened == 1
    assert client.governor_stats().active == 0


def test_aclose_from_a_watchdog_task_ends_the_loop_under_trio_too():
    trio = pytest.importorskip("trio")

    async def main():
        api = FakeAPI([status(1, generationId="g"), STALL])
        http = httpx.AsyncClient(transport=httpx.MockTransport(api.handler))
        async with AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, max_concurrency=1
        ) as client:
            stream = client.stream("p", idle_timeout=None)
            got = []
            first = trio.Event()

            async def consume():
                async for event in stream:
                    got.append(event.progress)
                    first.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await api.stalled.wait()
                await first.wait()
                await stream.aclose()
            assert got == [1]
            assert client.governor_stats().active == 0
        await http.aclose()
        return api

    api = trio.run(main)
    assert api.closed == 1
    assert [r.method for r in api.requests] == ["POST"]


async def test_async_with_on_a_closed_stream_raises_a_clear_error_and_sends_nothing(
    make_client,
):
    api = FakeAPI([complete()])
    client = await make_client(api)
    stream = client.stream("p")
    await stream.aclose()
    with pytest.raises(RuntimeError, match="stream is closed"):
        async with stream:
            pass
    assert api.requests == []
    used = client.stream("p")
    async with used as events:
        assert [e.type async for e in events] == ["complete"]
    with pytest.raises(RuntimeError, match="stream is closed"):
        async with used:
            pass
    assert api.opened == 1


async def test_stream_options_are_validated(make_client):
    client = await make_client(FakeAPI([complete()]))
    with pytest.raises(ValueError):
        client.stream("p", idle_timeout=0)
    with pytest.raises(ValueError):
        client.stream("p", max_event_size=0)
    with pytest.raises(ValueError):
        client.stream("   ")


def test_abandoned_loops_are_closed_under_trio_too():
    trio = pytest.importorskip("trio")

    async def main():
        api = FakeAPI([status(1, generationId="g"), complete()])
        http = httpx.AsyncClient(transport=httpx.MockTransport(api.handler))
        async with AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, max_concurrency=1
        ) as client:
            for _ in range(50):
                async for _event in client.stream("p"):
                    break
            events = [e async for e in client.stream("p")]
            assert events[-1].type == "complete"
            await trio.lowlevel.checkpoint()
            assert client.governor_stats().active == 0
        await http.aclose()
        return api

    # Trio closes an abandoned async generator too, and by design also warns about it
    # (ResourceWarning, hidden by default). Ours is named, and httpx's own nested body
    # generators under it (encode/httpx#3686); nothing else of ours is left behind.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        api = trio.run(main)
    assert api.opened == 51
    assert api.closed == 51
    names = {str(w.message).split("'")[1] for w in caught}
    assert "nanobanana._stream._run" in names
    assert not {n for n in names if n.startswith("nanobanana.") and n != "nanobanana._stream._run"}


def test_a_stream_read_to_its_end_under_trio_leaves_nothing_for_the_finalizer():
    trio = pytest.importorskip("trio")

    async def main():
        api = FakeAPI([status(1, generationId="g"), complete()])
        http = httpx.AsyncClient(transport=httpx.MockTransport(api.handler))
        async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
            events = [e async for e in client.stream("p")]
            await trio.lowlevel.checkpoint()
        await http.aclose()
        return events

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        events = trio.run(main)
        gc.collect()
    assert events[-1].type == "complete"
    assert [str(w.message) for w in caught] == []


async def test_many_distinct_status_events_each_keep_their_own_values(make_client):
    api = FakeAPI([b"".join(status(i % 101, f"step {i}") for i in range(600)) + complete()])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert [e.message for e in events[:-1]] == [f"step {i}" for i in range(600)]
    assert [e.raw_progress for e in events[:-1]] == [i % 101 for i in range(600)]
    assert events[200].progress == 100
    assert events[200].is_heartbeat


# -- a stream's slot follows the server, not the caller --------------------------------


async def test_a_stream_kept_after_break_frees_its_slot_once_the_server_has_ended_it(
    make_client,
):
    gate = anyio.Event()
    api = FakeAPI(
        [status(10, generationId="g_kept"), gate, status(60), complete()],
        polls=[poll_body("g_kept"), {"data": {"credits": 7}}],
    )
    client = await make_client(api, max_concurrency=1)
    stream = client.stream("p", idle_timeout=None)
    async for event in stream:
        assert event.progress == 10
        break
    await api.stalled.wait()
    await anyio.wait_all_tasks_blocked()
    # The server is still sending: its count of requests in flight holds the stream.
    assert client.governor_stats().active == 1
    assert api.closed == 0
    gate.set()  # the server sends the rest and ends the stream
    await anyio.wait_all_tasks_blocked()
    assert api.closed == 1
    assert client.governor_stats().active == 0
    # So the next call goes out at once, the stream still unclosed in its variable.
    assert await client.credits() == 7
    # What was read ahead is still there for the loop to go on with.
    rest = [event async for event in stream]
    assert [e.progress for e in rest] == [60, 100]
    assert rest[-1].generation.model == "nanobanan-2"
    await stream.aclose()


MODELS = {"data": [{"name": "nano-banana", "displayName": "Nano Banana", "creditsCost": 1}]}


def charged(gid, credits_used):
    body = poll_body(gid)
    body["data"]["creditsUsed"] = credits_used
    return body


@pytest.mark.parametrize(
    ("last", "answer", "spent"),
    [
        (complete(), charged("g_paid", 3), 3),  # what the GET after it says was charged
        (complete(), httpx.Response(500, json={"error": "boom"}), 1),  # else the estimate
        (sse({"type": "error", "message": "Generation failed"}), None, 1),  # spent too
    ],
    ids=["complete", "complete-get-failed", "error"],
)
async def test_a_stream_kept_after_break_settles_its_reservation_once_the_server_has_ended_it(
    make_client, last, answer, spent
):
    gate = anyio.Event()
    polls = [MODELS] if answer is None else [MODELS, answer]
    api = FakeAPI([status(10, generationId="g_paid"), gate, status(60), last], polls=polls)
    client = await make_client(api, max_credits=10)
    stream = client.stream("p", idle_timeout=None)
    async for _ in stream:
        break
    await api.stalled.wait()
    await anyio.wait_all_tasks_blocked()
    stats = client.stats()
    assert (stats.credits_reserved, stats.credits_spent) == (1, 0)  # still generating
    gate.set()  # the server sends the rest and ends the stream
    await anyio.wait_all_tasks_blocked()
    # Settled, with the stream still unclosed in its variable.
    stats = client.stats()
    assert (stats.credits_reserved, stats.credits_spent) == (0, spent)
    assert (stats.credits_remaining, stats.maybe_charged) == (10 - spent, 0)
    # Reading on, or closing, settles nothing twice.
    with contextlib.suppress(GenerationFailedError):
        async for _ in stream:
            pass
    await stream.aclose()
    assert client.stats() == stats


async def test_a_stream_cut_and_kept_after_break_keeps_its_reservation_until_closed(make_client):
    gate = anyio.Event()
    api = FakeAPI([status(10, generationId="g_cut"), gate], polls=[MODELS])
    client = await make_client(api, max_credits=10)
    stream = client.stream("p", idle_timeout=None)
    async for _ in stream:
        break
    await api.stalled.wait()
    gate.set()  # the connection ends with no last event: the generation may go on
    await anyio.wait_all_tasks_blocked()
    assert client.governor_stats().active == 0
    assert client.stats().credits_reserved == 1  # its cost is not known yet
    await stream.aclose()
    stats = client.stats()
    assert (stats.credits_reserved, stats.credits_spent, stats.maybe_charged) == (0, 1, 0)


async def test_a_stream_dropped_while_open_is_closed_and_warns(make_client):
    api = FakeAPI([status(1, generationId="g_drop"), STALL])
    client = await make_client(api, max_concurrency=1)
    stream = client.stream("p", idle_timeout=None)
    assert (await anext(stream)).progress == 1
    await api.stalled.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del stream
        gc.collect()
        await anyio.wait_all_tasks_blocked()  # the event loop's finalizer closes it
        gc.collect()
    assert [w.category for w in caught] == [ResourceWarning]
    assert "generation g_drop was dropped without being closed" in str(caught[0].message)
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_stream_closed_by_hand_or_read_to_its_end_never_warns(make_client):
    api = FakeAPI([status(1, generationId="g"), STALL], [status(1), complete()])
    client = await make_client(api, max_concurrency=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = client.stream("p", idle_timeout=None)
        await anext(stream)
        await stream.aclose()
        del stream
        stream = client.stream("p")
        assert [e.type async for e in stream] == ["status", "complete"]
        del stream
        gc.collect()
        await anyio.wait_all_tasks_blocked()
    assert [str(w.message) for w in caught] == []


async def test_a_cancelled_stream_keeps_its_slot_until_its_connection_is_closed(make_client):
    api = FakeAPI([status(1), STALL])
    api.close_gate = anyio.Event()
    client = await make_client(api, max_concurrency=1)
    got = anyio.Event()
    consumer = anyio.CancelScope()

    async def consume():
        with consumer:
            async for _ in client.stream("p", idle_timeout=None):
                got.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await got.wait()
        await api.stalled.wait()
        consumer.cancel()
        await api.closing.wait()
        await anyio.wait_all_tasks_blocked()
        # The close is under way: the server still counts the request, so does the
        # client (a slot freed now would send the next request to a 429).
        assert client.governor_stats().active == 1
        api.close_gate.set()
    assert api.closed == 1
    assert client.governor_stats().active == 0


async def test_a_cancelled_stream_whose_close_hangs_frees_its_slot_after_a_bound(
    make_client, monkeypatch
):
    monkeypatch.setattr("nanobanana._responses.STREAM_CLOSE_TIMEOUT", 0.05)
    api = FakeAPI([status(1), STALL])
    api.close_gate = anyio.Event()  # never set: the close would hang forever
    client = await make_client(api, max_concurrency=1)
    with anyio.move_on_after(0.05):
        async for _ in client.stream("p", idle_timeout=None):
            pass
    await anyio.wait_all_tasks_blocked()
    assert api.closing.is_set()
    assert client.governor_stats().active == 0


# -- a stream's result is as complete as a polled one -----------------------------------


async def test_the_complete_result_is_completed_with_one_get_on_the_streams_own_slot(
    make_client, clock
):
    gate = anyio.Event()
    api = FakeAPI(
        [status(1, generationId="g_full"), gate, complete()],
        [complete(generationId="g_next")],
        polls=[poll_body("g_full"), poll_body("g_next")],
    )
    client = await make_client(api, max_concurrency=1, clock=clock)
    results = []

    async def run(stream):
        results.extend([event.generation async for event in stream if event.generation])

    async with anyio.create_task_group() as group:
        group.start_soon(run, client.stream("p", model="nanobanan-2", idle_timeout=None))
        await api.stalled.wait()
        group.start_soon(run, client.stream("q"))
        await anyio.wait_all_tasks_blocked()
        assert client.governor_stats().waiting == 1  # the second stream queues
        gate.set()
    first, second = results
    polled = Generation.from_json(poll_body("g_full")["data"])
    assert (first.model, first.credits_used, first.created_at) == (
        polled.model,
        polled.credits_used,
        polled.created_at,
    )
    assert first.expires_at == polled.created_at + timedelta(days=15)
    assert first.image_urls == ("https://cdn.test/a.png",)  # the stream's own
    assert second.id == "g_next"
    assert second.created_at is not None
    # The GET went out on the first stream's slot, before the queued stream: no queue.
    assert [(r.method, r.url.params.get("id")) for r in api.requests] == [
        ("POST", None),
        ("GET", "g_full"),
        ("POST", None),
        ("GET", "g_next"),
    ]
    assert api.active_during_poll == [1, 1]
    assert client.governor_stats().max_active == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(429, json={"error": "busy"}, headers={"Retry-After": "1"}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"data": {"id": "other", "processingStatus": "completed"}}),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["500", "429", "not-json", "another-id", "connect", "timeout"],
)
async def test_a_failed_get_after_complete_loses_nothing_and_is_not_retried(
    make_client, clock, answer
):
    api = FakeAPI([status(1), complete(generationId="g_f")], polls=[answer])
    client = await make_client(api, clock=clock)
    asked = datetime.fromtimestamp(clock.time(), tz=timezone.utc)
    events = await collect(client.stream("p", model="m"))
    generation = events[-1].generation
    assert (generation.id, generation.image_urls) == ("g_f", ("https://cdn.test/a.png",))
    assert (generation.model, generation.created_at) == ("m", None)  # what the stream said
    assert generation.expires_at == asked + timedelta(days=15)  # counted from the request
    assert [r.method for r in api.requests] == ["POST", "GET"]
    assert clock.sleeps == []
    assert client.governor_stats().active == 0


async def test_the_get_after_complete_is_counted_and_logged_as_every_request(make_client, caplog):
    api = FakeAPI([status(1), complete(generationId="g_c")], polls=[poll_body("g_c")])
    client = await make_client(api)
    with caplog.at_level(logging.DEBUG, logger="nanobanana"):
        events = await collect(client.stream("p"))
    assert events[-1].generation.credits_used == 1  # (from the GET)
    assert client.stats().requests == {"POST /generate": 1, "GET /generate": 1}
    assert [(r.event, r.method, r.path, r.status, r.generation_id) for r in caplog.records] == [
        ("response", "POST", "/generate", 200, None),
        ("response", "GET", "/generate", 200, "g_c"),
    ]


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        (httpx.Response(429, json={"error": "busy"}), ("response", 429, None)),
        (httpx.ConnectError("refused"), ("error", None, "ConnectError")),
    ],
    ids=["429", "connect"],
)
async def test_a_failed_get_after_complete_is_counted_and_logged_once(
    make_client, caplog, answer, logged
):
    api = FakeAPI([complete(generationId="g_x")], polls=[answer])
    client = await make_client(api)
    with caplog.at_level(logging.DEBUG, logger="nanobanana"):
        await collect(client.stream("p"))
    stats = client.stats()
    assert stats.requests == {"POST /generate": 1, "GET /generate": 1}
    assert (stats.rate_limited, stats.retries) == (int(logged[1] == 429), {})  # not retried
    got = [(r.event, r.method, r.status, r.error, r.generation_id) for r in caplog.records]
    event, status_code, error = logged
    assert got[1:] == [
        (event, "GET", status_code, error, "g_x"),
        ("stream_result_unused", "GET", None, error, "g_x"),
    ]


async def test_a_get_after_complete_that_hangs_is_given_up_after_a_bound(make_client, monkeypatch):
    monkeypatch.setattr("nanobanana._pump.RESULT_TIMEOUT", 0.05)
    hang = anyio.Event()

    async def handler(request):
        if request.method == "GET":
            await hang.wait()
        return await api.handler(request)

    api = FakeAPI([complete(generationId="g_h")])
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
        events = await collect(client.stream("p"))
        assert client.governor_stats().active == 0
    await http.aclose()
    assert events[-1].generation.id == "g_h"
    assert events[-1].generation.created_at is None


async def test_no_get_is_sent_when_no_event_named_the_generation(make_client):
    api = FakeAPI([status(1), complete()])
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert events[-1].generation.id == ""
    assert [r.method for r in api.requests] == ["POST"]


# -- what a failed stream says --------------------------------------------------------


async def test_a_stream_cut_before_any_id_says_what_was_asked_and_when(make_client, clock):
    api = FakeAPI([status(1), httpx.ReadError("reset")])
    client = await make_client(api, clock=clock)
    asked = datetime.fromtimestamp(clock.time(), tz=timezone.utc)
    with pytest.raises(APIConnectionError, match="may have been charged") as info:
        await collect(client.stream("a fig", model="nanobanan-2"))
    error = info.value
    assert (error.prompt, error.model, error.mode) == ("a fig", "nanobanan-2", "stream")
    assert error.requested_at == asked
    assert error.generation_id is None


async def test_an_oversized_event_after_an_id_carries_the_id_and_the_request(make_client):
    api = FakeAPI([status(1, generationId="g_big"), sse("x" * 5000)])
    client = await make_client(api)
    with pytest.raises(SSETooLargeError, match="g_big") as info:
        await collect(client.stream("a kiwi", max_event_size=1000))
    assert (info.value.generation_id, info.value.prompt) == ("g_big", "a kiwi")


async def test_reading_ahead_of_a_consumer_that_is_away_is_bounded(make_client):
    sent = []

    class Counted(Body):
        async def __aiter__(self):
            async for chunk in super().__aiter__():
                sent.append(len(chunk))
                yield chunk

    statuses = [status(i % 100, f"step {i} of a long stream") for i in range(3000)]
    api = FakeAPI()
    api.handler_body = Counted(api, [*statuses, complete()])

    async def handler(request):
        api.requests.append(request)
        if request.method == "GET":
            return httpx.Response(404)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=api.handler_body
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
        stream = client.stream("p", idle_timeout=None)
        assert (await anext(stream)).message == "step 0 of a long stream"
        await anyio.wait_all_tasks_blocked()
        # The reader waits for room: some tens of kilobytes ahead, not the whole stream.
        assert 100 < len(sent) < 1500
        assert sum(sent) < 200 * 1024
        assert client.governor_stats().active == 1
        rest = [event async for event in stream]
        assert [e.message for e in rest[:-1]] == [
            f"step {i} of a long stream" for i in range(1, 3000)
        ]
        assert rest[-1].type == "complete"
    await http.aclose()


async def test_a_status_that_says_complete_or_error_does_not_end_the_stream(make_client):
    api = FakeAPI(
        [
            status(10, "50% complete, no error so far", generationId="g_w"),
            status(90, "almost complete") + complete() + status(95, "after the end"),
        ],
        polls=[poll_body("g_w")],
    )
    client = await make_client(api)
    events = await collect(client.stream("p"))
    assert [e.message for e in events] == [
        "50% complete, no error so far",
        "almost complete",
        "Generation complete",
    ]
    assert events[-1].generation.created_at is not None
