"""client.stream() against the simulator over a real socket, with its stream faults."""

import gc
import warnings
from datetime import timedelta

import anyio
import attrs
import pytest

from nanobanana import (
    APIConnectionError,
    GenerationFailedError,
    GenerationStatus,
    PollPolicy,
    UnexpectedResponseError,
)
from nanobanana._sse import SSETooLargeError
from nanobanana.testing import Simulator

FAST_POLLS = PollPolicy(first_delay=0.0, max_interval=0.02, jitter=0.0, timeout=10.0)


@pytest.fixture
async def sim():
    async with Simulator(credits=2000, concurrency_limit=5, heartbeat_interval=15.0) as sim:
        yield sim


@pytest.fixture
async def client(sim):
    async with sim.client(poll_policy=FAST_POLLS) as client:
        yield client


def charges(sim):
    return [entry for entry in sim.ledger if entry.kind == "charge"]


def generate_posts(sim):
    return [r for r in sim.requests if r.method == "POST" and r.path.endswith("/generate")]


def polls(sim):
    return [r for r in sim.requests if r.method == "GET" and r.path.endswith("/generate")]


async def logged(sim, select, count):
    # The simulator logs a request once its answer has ended, which can be just after
    # the client has read it: wait for the log to catch up.
    await sim.wait_for_async(lambda: len(select(sim)) >= count)
    return select(sim)


async def test_a_stream_yields_rising_progress_and_a_full_generation(sim, client):
    events = [event async for event in client.stream("a banana on the moon")]
    assert [e.type for e in events][-1] == "complete"
    assert all(e.type == "status" for e in events[:-1])
    progress = [e.progress for e in events]
    assert progress == sorted(progress)
    generation = events[-1].generation
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.id == charges(sim)[0].generation_id
    assert len(generation.image_urls) == 1
    assert generation.image_urls[0].startswith(sim.cdn_base_url)
    assert generation.prompt == "a banana on the moon"
    assert [r.mode for r in await logged(sim, generate_posts, 1)] == ["stream"]
    assert client.governor_stats().active == 0


async def test_heartbeats_after_progress_are_flagged_and_never_lower_progress(sim, client):
    sim.inject("sse_heartbeats", count=2)
    events = [event async for event in client.stream("p")]
    beats = [e for e in events if e.is_heartbeat]
    assert beats
    assert all(e.raw_progress == 0 and e.progress > 0 for e in beats)
    maxima = [e.progress for e in events]
    assert maxima == sorted(maxima)
    assert events[-1].type == "complete"


async def test_junk_lines_are_skipped(sim, client):
    sim.inject("sse_junk", count=6)
    events = [event async for event in client.stream("p")]
    assert events[-1].type == "complete"
    assert {e.message for e in events[:-1]} <= {
        "Starting generation...",
        "Generating image...",
        "Processing...",
        "Finishing...",
    }


async def test_bytes_split_inside_lines_and_utf8_characters_parse_the_same(sim, client):
    sim.inject("sse_split", chunk_sizes=(1, 2, 3, 5, 7), pause=0.0005)
    events = [event async for event in client.stream("p")]
    assert events[-1].type == "complete"
    assert any("\U0001f34c" in e.message and "\u00e9t\u00e9" in e.message for e in events)
    assert len(events[-1].generation.image_urls) == 1


async def test_a_cut_after_an_id_is_finished_by_polling_without_paying_twice(sim, client):
    sim.inject("sse_cut", after_events=2, with_id=True)
    events = [event async for event in client.stream("p")]
    assert [e.type for e in events] == ["status", "status", "complete"]
    generation = events[-1].generation
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.image_urls
    assert len(charges(sim)) == 1
    assert len(await logged(sim, generate_posts, 1)) == 1
    assert all(f"id={generation.id}" in r.query for r in await logged(sim, polls, 1))


async def test_a_cut_before_any_id_raises_and_does_not_resend(sim, client):
    sim.inject("sse_cut", after_events=1, with_id=False)
    with pytest.raises(APIConnectionError, match="may still be running") as info:
        async for _ in client.stream("p"):
            pass
    assert info.value.may_have_been_charged
    assert len(await logged(sim, generate_posts, 1)) == 1
    assert len(charges(sim)) == 1
    assert client.governor_stats().active == 0


async def test_an_error_event_raises_with_the_servers_message(sim, client):
    with pytest.raises(GenerationFailedError) as info:
        async for _ in client.stream("a banana [fail]"):
            pass
    record = sim.generations[-1]
    assert record.error_message
    assert record.error_message in str(info.value)
    # The simulator's error event carries no id by default (nor does the docs' example).
    assert info.value.generation_id is None


async def test_an_oversized_event_raises_instead_of_growing_memory(sim, client):
    sim.inject("sse_oversize", size=300_000)
    with pytest.raises(SSETooLargeError):
        async for _ in client.stream("p", max_event_size=100_000):
            pass
    assert client.governor_stats().active == 0


async def test_a_429_before_the_stream_is_retried_like_any_429(sim, client):
    sim.inject("429", path="/generate", retry_after=0)
    events = [event async for event in client.stream("p")]
    assert events[-1].type == "complete"
    assert [r.status for r in await logged(sim, generate_posts, 2)] == [429, 200]
    assert len(charges(sim)) == 1


async def test_a_wrong_content_type_is_an_unexpected_response(sim, client):
    sim.inject("wrong_content_type", path="/generate")
    with pytest.raises(UnexpectedResponseError, match="text/event-stream"):
        async with client.stream("p"):
            pass
    assert client.governor_stats().active == 0


async def test_a_silent_stream_is_cut_after_the_idle_timeout_and_polled():
    # Held, the generation sends nothing after its first events but a heartbeat every
    # 15 s: with a 0.2 s idle timeout the client treats the stream as cut, and polls.
    async with Simulator(stream_event_ids=True, heartbeat_interval=15.0) as sim:
        held = sim.hold()

        async def release_after_first_poll():
            await sim.wait_for_async(
                lambda: any(r.method == "GET" for r in sim.requests), timeout=10
            )
            held.release()

        async with sim.client(poll_policy=FAST_POLLS) as client:
            async with anyio.create_task_group() as group:
                group.start_soon(release_after_first_poll)
                events = [e async for e in client.stream("p", idle_timeout=0.2)]
            assert events[-1].type == "complete"
            assert events[-1].generation.image_urls
            assert len(await logged(sim, generate_posts, 1)) == 1
            assert held.released


async def test_a_thousand_abandoned_loops_leave_no_slot_or_connection(sim):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with sim.client(max_concurrency=1) as client:
            for _ in range(1000):
                async for event in client.stream("p"):
                    assert event.type == "status"
                    break
            events = [event async for event in client.stream("p")]
            assert events[-1].type == "complete"
            await anyio.lowlevel.checkpoint()
            stats = client.governor_stats()
            assert stats.active == 0
            assert stats.max_active == 1
        gc.collect()
    assert len(await logged(sim, generate_posts, 1001)) == 1001
    # Each loop left while its stream was still open says so; nothing else warns.
    assert caught
    assert all(w.category is ResourceWarning for w in caught), [str(w.message) for w in caught]
    assert all("was dropped without being closed" in str(w.message) for w in caught)


async def test_a_watchdog_closing_a_stream_another_task_reads_ends_its_loop_and_frees_all():
    async with Simulator(stream_event_ids=True, heartbeat_interval=15.0) as sim:
        sim.hold()  # the generation sends its first events, then only heartbeats
        async with sim.client(max_concurrency=1, poll_policy=FAST_POLLS) as client:
            stream = client.stream("p", idle_timeout=None)
            first = anyio.Event()
            seen = []

            async def consume():
                async for event in stream:
                    seen.append(event.type)
                    first.set()
                seen.append("loop ended")

            async with anyio.create_task_group() as group:
                group.start_soon(consume)
                # The consumer's loop body never awaits: from here on it is inside
                # __anext__, waiting for the next read.
                await first.wait()
                await stream.aclose()
                assert client.governor_stats().active == 0
            assert seen[-1] == "loop ended"
            assert set(seen[:-1]) == {"status"}
            assert stream.generation_id is not None
            pool = client.http_client._transport.stats()
            assert (pool.active, pool.waiting) == (0, 0)
            sim.release_holds()
            # The slot is free and the client goes on.
            events = [event async for event in client.stream("p")]
            assert events[-1].type == "complete"
        # Closed on purpose: no polling for the first result (the second one's is
        # completed with one GET, logged once its answer has gone out).
        await sim.wait_for_async(lambda: polls(sim))
        assert [r.query for r in polls(sim)] == [f"id={events[-1].generation.id}"]
        assert stream.generation_id != events[-1].generation.id


async def test_a_streams_result_is_as_complete_as_a_poll_of_it(sim, client):
    events = [event async for event in client.stream("a complete banana", model="nanobanan-2")]
    streamed = events[-1].generation
    polled = await client.get_generation(streamed.id)
    assert streamed == attrs.evolve(polled, remaining_credits=streamed.remaining_credits)
    assert streamed.model == "nanobanan-2"
    assert streamed.credits_used is not None
    assert streamed.created_at is not None
    assert streamed.expires_at == streamed.created_at + timedelta(days=15)
    # It cost one GET, and no more slots than the stream had.
    assert [r.query for r in await logged(sim, polls, 2)] == [f"id={streamed.id}"] * 2
    assert sim.max_in_flight() == 1


async def test_a_stream_kept_after_break_frees_its_slot_when_the_server_ends_it():
    async with (
        Simulator(concurrency_limit=1, generation_time=0.3, retry_after="0") as sim,
        # A known limit: learning it would probe one step up, which costs a 429.
        sim.client(max_concurrency=1) as client,
    ):
        stream = client.stream("kept in a variable")
        async for event in stream:
            assert event.type == "status"
            break
        # The stream is neither read on nor closed; the next call waits only for the
        # server to end it (the generation takes 0.3 s), not for us.
        assert await client.credits() == 99
        assert client.governor_stats().max_active == 1
        rest = [event async for event in stream]
        assert rest[-1].type == "complete"
        await stream.aclose()
    assert [r.status for r in sim.requests if r.status == 429] == []


async def test_a_cancelled_stream_then_another_request_at_limit_1_meets_no_429():
    async with (
        Simulator(concurrency_limit=1, generation_time=10.0, retry_after="0") as sim,
        sim.client(max_concurrency=1) as client,
    ):
        for i in range(20):
            first = anyio.Event()

            async def consume(scope, prompt, first=first):
                with scope:
                    async for _ in client.stream(prompt):
                        first.set()

            scope = anyio.CancelScope()
            async with anyio.create_task_group() as group:
                group.start_soon(consume, scope, f"cancelled {i}")
                await first.wait()
                scope.cancel()
            await client.credits()  # at once, at the account's limit of 1
    rejected = [r for r in sim.requests if r.status == 429]
    assert rejected == []
