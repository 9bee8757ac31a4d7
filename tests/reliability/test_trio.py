"""The end-to-end essentials on trio: the library is anyio-based and must work there too.

On trio the client sends through httpx's own transport (httpcore on anyio's trio
backend): our fast `AsyncioTransport` is built on asyncio protocols. Everything above
the transport (the governor, retries, streams, polling, downloads) is the same code.

Each test is a plain function that calls `trio.run`, so pytest-asyncio (auto mode)
leaves it alone and anyio's pytest plugin is not needed.
"""

from __future__ import annotations

import gc
import logging
import warnings

import pytest
import trio
import trio.testing
from reliability_support import SECRET_KEY, assert_no_leaks, drain, fast_client, pool_state

from nanobanana import (
    APIConnectionError,
    DownloadError,
    GenerationStatus,
    NanoBananaError,
)
from nanobanana._download import image_extension
from nanobanana._sse import SSETooLargeError
from nanobanana.testing import Simulator, render_image


def run(main, *args, ours_allowed=frozenset()):
    """`trio.run(main, *args)`, then the async generators garbage collected by trio.

    Trio closes an abandoned async generator and, by design, warns about it
    (ResourceWarning, hidden by default). httpx's and httpcore's nested body
    generators are left to that finalizer whenever a body is not read to its end
    (encode/httpx#3686); of ours, only the names in `ours_allowed` may appear.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = trio.run(main, *args)
        gc.collect()
    names = {str(w.message).split("'")[1] for w in caught if "'" in str(w.message)}
    assert {n for n in names if not n.startswith(("httpx.", "httpcore."))} <= ours_allowed, names
    return result


@pytest.fixture
def sim():
    with Simulator(
        seed=5, credits=10_000, concurrency_limit=3, retry_after="0", stream_event_ids=True
    ) as s:
        yield s


def test_every_call_works_on_trio_through_httpx_transport(sim, tmp_path):
    async def main():
        async with fast_client(sim) as client:
            assert "nano-banana" in {m.name for m in await client.models()}
            assert await client.credits() == 10_000
            generation = await client.generate("trio sync", quantity=2)
            assert generation.status is GenerationStatus.COMPLETED
            events = await drain(client.stream("trio stream"))
            assert events[-1].type == "complete"
            assert [e.progress for e in events] == sorted(e.progress for e in events)
            job = await client.submit("trio async")
            done = await job.wait(timeout=10)
            assert done.id == job.id
            paths = await client.download(generation, tmp_path)
            assert [image_extension(p.read_bytes()[:16]) for p in paths] == ["png", "png"]
            assert pool_state(client).kind == "httpcore"
            assert_no_leaks(client)
        return events[-1].generation

    streamed = run(main)
    assert sim.generation(streamed.id).status == "completed"
    assert len([e for e in sim.ledger if e.kind == "charge"]) == 3


def test_the_governor_keeps_the_account_limit_under_a_nursery_fan_out(sim):
    results = []

    async def one(client, i):
        results.append(await client.generate(f"fan-out {i} [slow=0.02]"))

    async def main():
        async with fast_client(sim) as client:
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, client, i)
            stats = client.governor_stats()
            assert (stats.limit, stats.known) == (3, True)
            assert_no_leaks(client)

    run(main)
    assert len({g.id for g in results}) == 30
    assert sim.max_in_flight() == 3
    posts = [r.status for r in sim.requests if r.method == "POST"]
    # Learning the limit costs the one probe that overshoots (retried, uncharged).
    assert posts.count(429) <= 2
    assert len([e for e in sim.ledger if e.kind == "charge"]) == 30


def test_trio_cancel_scopes_leave_no_slot_or_connection_and_the_client_goes_on(sim, tmp_path):
    async def main():
        async with fast_client(sim) as client:
            # 1. move_on_after around a sync generate held by the server.
            with sim.hold():
                with trio.move_on_after(5) as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.generate, "held")
                        await sim.wait_for_async(lambda: sim.in_flight() == 1)
                        nursery.cancel_scope.cancel()
                assert not scope.cancelled_caught  # the nursery's own scope caught it
                assert_no_leaks(client)
            # 2. fail_after around a stream that is still running.
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.1):
                    await drain(client.stream("slow stream [slow=2]"))
            assert_no_leaks(client)
            # 3. A cancelled job.wait() (between polls, or during one).
            job = await client.submit("slow job [slow=2]")
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(job.wait)
                    # Cancelled once it is polling (it polls every 10-20 ms).
                    await sim.wait_for_async(
                        lambda: any(
                            r.method == "GET" and r.generation_id == job.id for r in sim.requests
                        )
                    )
                    scope.cancel()
            assert scope.cancelled_caught
            assert_no_leaks(client)
            # 4. A nursery of 60 calls of every kind, cancelled mid-flight.
            generation = await client.generate("to download")
            with trio.move_on_after(0.15):
                async with trio.open_nursery() as nursery:
                    for i in range(15):
                        nursery.start_soon(client.generate, f"storm {i} [slow=0.1]")
                        nursery.start_soon(drain, client.stream(f"storm s{i} [slow=0.1]"))
                        nursery.start_soon(client.download, generation, tmp_path / str(i))
                        nursery.start_soon(client.get_generation, generation.id)
            assert_no_leaks(client)
            await sim.wait_for_async(lambda: sim.in_flight() == 0, timeout=10)
            # The same client serves every kind of call afterwards.
            assert (await client.generate("after")).status is GenerationStatus.COMPLETED
            assert (await drain(client.stream("after stream")))[-1].type == "complete"
            assert (await (await client.submit("after job")).wait(timeout=10)).image_urls
            assert_no_leaks(client)

    run(main)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_faults_are_retried_or_typed_on_trio(sim, tmp_path):
    async def main():
        async with fast_client(sim) as client:
            sim.inject("429", path="/generate")
            sim.inject("503", path="/generate", retry_after="0")
            job = await client.submit("busy then fine")
            sim.inject("reset_before", method="GET", path="/generate")
            sim.inject("500", method="GET", path="/generate")
            assert (await job.wait(timeout=10)).status is GenerationStatus.COMPLETED
            # A stream cut after an event carried the id is finished by polling.
            sim.inject("sse_cut", after_events=2)
            events = await drain(client.stream("cut"))
            assert events[-1].generation.status is GenerationStatus.COMPLETED
            # Cut before any id: a typed error that says it may have been charged.
            sim.inject("sse_cut", after_events=1, with_id=False)
            with pytest.raises(APIConnectionError, match="may have been charged"):
                await drain(client.stream("cut early"))
            sim.inject("sse_oversize", size=2 * 1024 * 1024)
            with pytest.raises(SSETooLargeError):
                await drain(client.stream("oversize"))
            generation = await client.generate("image")
            sim.inject("cdn_html")  # a page answered 200 passes like a 5xx: retried
            (path,) = await client.download(generation, tmp_path)
            assert image_extension(path.read_bytes()[:16]) == "png"
            # Cut short without a Content-Length: chunked (httpcore's h11 refuses the
            # body) or ended by a close (the PNG's end shows it): retried, saved whole.
            whole = render_image("image", 0, size=sim.config.image_size)
            for preset in ("cdn_cut_chunked", "cdn_cut_close"):
                sim.inject(preset)
                (path,) = await client.download(generation, tmp_path)
                assert path.read_bytes() == whole, preset
            sim.inject("cdn_stall")
            with pytest.raises(DownloadError, match="timeout"):
                await client.download(generation, tmp_path / "stalled", timeout=0.2)
            assert list((tmp_path / "stalled").iterdir()) == []
            sim.inject("cdn_410")
            with pytest.raises(DownloadError, match="410"):
                await client.download(generation, tmp_path)
            assert_no_leaks(client)

    run(main)
    kinds = [e.kind for e in sim.ledger]
    # job (after a refunded 503), two cut streams, the oversize one, the image.
    assert kinds.count("charge") - kinds.count("refund") == 5


def test_the_key_is_in_no_log_record_on_trio(sim, caplog):
    sim.add_account(SECRET_KEY, credits=10, concurrency_limit=2)
    caplog.set_level(logging.DEBUG)
    for name in ("nanobanana", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)

    async def main():
        async with fast_client(sim, api_key=SECRET_KEY) as client:
            sim.inject("429", path="/credits")
            await client.credits()
            await drain(client.stream("p"))

    run(main)
    assert any(r.name.startswith("httpcore") for r in caplog.records)  # really logged
    formatter = logging.Formatter()
    texts = [formatter.format(r) + repr(r.__dict__) for r in caplog.records]
    assert [t for t in texts if SECRET_KEY in t] == []


def test_a_stream_abandoned_as_trio_run_ends_is_closed_quietly(sim, caplog):
    # trio closes the async generators still alive when trio.run ends one at a time,
    # in no particular order: an inner generator closed before the outer one's
    # `async with` must not turn into "generator didn't stop after athrow()".
    caplog.set_level(logging.ERROR, logger="trio.async_generator_errors")

    async def main(client):
        async for _ in client.stream("abandoned"):
            break

    for _ in range(20):
        client = fast_client(sim)
        run(main, client, ours_allowed={"nanobanana._stream._run"})
        trio.run(client.aclose)  # under trio, a later run can close it
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    sim.wait_for(lambda: sim.in_flight() == 0)


def test_errors_on_trio_are_ours(sim):
    async def main():
        async with fast_client(sim, api_key="nb_wrong_key_on_trio") as client:
            with pytest.raises(NanoBananaError) as info:
                await client.credits()
            assert_no_leaks(client)
        return info.value

    error = run(main)
    assert type(error).__name__ == "AuthenticationError"


def test_the_spend_cap_and_stats_hold_on_trio(sim):
    from nanobanana import BudgetExceededError  # noqa: PLC0415

    async def main():
        results: list[object] = []
        async with fast_client(sim, max_credits=5, max_concurrency=3) as client:

            async def one(i: int) -> None:
                try:
                    results.append(await client.generate(f"banana {i}", quantity=2))
                except BudgetExceededError as exc:
                    results.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
            assert sum(isinstance(r, BudgetExceededError) for r in results) == 1
            # Cancelled while its request is out: it may have been charged.
            with sim.hold(), trio.move_on_after(5) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.generate, "held")
                    await sim.wait_for_async(lambda: sim.in_flight() == 1)
                    scope.cancel()
            stats = client.stats()
        assert (stats.credits_spent, stats.credits_remaining, stats.maybe_charged) == (5, 0, 1)
        assert stats.requests["POST /generate"] == 3

    run(main)


def test_a_stream_kept_after_break_frees_its_slot_when_the_server_ends_it_on_trio():
    # The stream's reader runs as a trio system task: the server's end is seen there.
    with Simulator(concurrency_limit=1, generation_time=0.3, retry_after="0") as sim:

        async def main():
            # A known limit: learning it would probe one step up, which costs a 429.
            async with fast_client(sim, max_concurrency=1) as client:
                stream = client.stream("kept on trio")
                async for event in stream:
                    assert event.type == "status"
                    break
                assert await client.credits() == 99  # the slot came back by itself
                rest = [event async for event in stream]
                await stream.aclose()
                assert_no_leaks(client)
                return rest[-1].generation

        generation = run(main)
        assert generation.created_at is not None  # completed with one GET, on trio too
        assert [r.status for r in sim.requests if r.status == 429] == []


def test_a_stream_dropped_open_on_trio_warns_and_frees_its_slot():
    with Simulator(concurrency_limit=1, generation_time=5.0, retry_after="0") as sim:

        async def main():
            async with fast_client(sim) as client:
                stream = client.stream("dropped on trio")
                await stream.__anext__()
                del stream
                gc.collect()
                await trio.testing.wait_all_tasks_blocked()
                with trio.fail_after(2):  # well before the generation would end it (5 s)
                    assert await client.credits() == 99
                assert_no_leaks(client)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            trio.run(main)
            gc.collect()
    ours = [str(w.message) for w in caught if "was dropped without being closed" in str(w.message)]
    assert len(ours) == 1
