"""The spend cap before the queues: a reservation is taken before any wait, and returned.

A call that would pass the cap raises at once, sending nothing and waiting for
nothing: not for a request slot (``generate``, ``stream``), nor for room for an async
task (``submit``). A call that waits with its reservation and is cancelled, or whose
wait fails, gives it back.
"""

import asyncio
import json

import httpx
import pytest
import respx

from nanobanana import AsyncNanoBanana, BudgetExceededError
from support import API, KEY

MODELS = {
    "data": [
        {"name": "nano-banana", "displayName": "Nano Banana", "creditsCost": 1},
        {"name": "nanobanan-2", "displayName": "Nano Banana 2", "creditsCost": 2},
    ]
}
ASYNC_OK = {
    "success": True,
    "async": True,
    "generationId": "gen_a",
    "message": "Generation started.",
    "creditsUsed": 1,
    "remainingCredits": 99,
}
SYNC_OK = {
    "success": True,
    "generationId": "gen_s",
    "imageUrls": ["https://cdn.test/a.png"],
    "creditsUsed": 1,
    "remainingCredits": 99,
}


def capped(clock, max_credits, **kwargs):
    return AsyncNanoBanana(
        api_key=KEY, base_url=API, clock=clock, max_credits=max_credits, **kwargs
    )


def hanging_post():
    """``POST /generate`` requests hang until cancelled: the prompts seen, and an event."""
    arrived = asyncio.Event()
    prompts = []

    async def hang(request):
        prompts.append(json.loads(request.content)["prompt"])
        arrived.set()
        await asyncio.Event().wait()

    respx.post(f"{API}/generate").mock(side_effect=hang)
    return prompts, arrived


async def run_stream(client, prompt, **options):
    async with client.stream(prompt, **options) as events:
        async for _event in events:
            pass


CALLS = {
    "generate": lambda client, **options: client.generate("x", **options),
    "stream": lambda client, **options: run_stream(client, "x", **options),
    "submit": lambda client, **options: client.submit("x", **options),
}


async def until(condition, task):
    """Let the loop run until ``condition()`` holds or ``task`` has ended."""
    while not condition() and not task.done():
        await asyncio.sleep(0)


async def cancelled(task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@respx.mock
async def test_a_submit_over_the_cap_raises_at_once_without_queueing_for_room(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    sent, arrived = hanging_post()
    async with capped(clock, 2, max_concurrency=4) as client:
        first = asyncio.ensure_future(client.submit("on the wire"))
        await arrived.wait()  # it holds the only room while the task cap is unknown
        second = asyncio.ensure_future(client.submit("over the cap", quantity=2))
        await until(lambda: client.governor_stats().tasks_waiting > 0, second)
        assert second.done(), "it queued for room before its cost was checked"
        with pytest.raises(BudgetExceededError) as info:
            await second
        assert (info.value.needed, info.value.remaining) == (2, 1)
        assert client.governor_stats().tasks_waiting == 0
        await cancelled(first)
    assert len(sent) == 1


@respx.mock
async def test_a_submit_cancelled_while_queued_for_room_returns_its_reservation(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    sent, arrived = hanging_post()
    async with capped(clock, 5, max_concurrency=4) as client:
        first = asyncio.ensure_future(client.submit("on the wire"))
        await arrived.wait()
        second = asyncio.ensure_future(client.submit("queued", model="nanobanan-2"))
        await until(lambda: client.governor_stats().tasks_waiting > 0, second)
        # Reserved before it queued: a third call already sees the room it takes.
        assert client.stats().credits_reserved == 3
        with pytest.raises(BudgetExceededError):
            await client.submit("third", quantity=3)
        await cancelled(second)
        stats, governor = client.stats(), client.governor_stats()
        assert (stats.credits_reserved, stats.credits_remaining, stats.maybe_charged) == (1, 4, 0)
        # No room kept for it: only the first submit counts, nothing waits.
        assert (governor.tasks, governor.tasks_waiting, governor.active) == (1, 0, 1)
        await cancelled(first)
    assert len(sent) == 1


@respx.mock
async def test_a_submit_whose_wait_for_room_fails_returns_its_reservation(clock, monkeypatch):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate").respond(json=ASYNC_OK)
    async with capped(clock, 5) as client:
        await client.estimate_credits()  # the catalogue, fetched before the wait breaks
        reserved = []

        class Broken:
            async def __aenter__(self):
                reserved.append(client.stats().credits_reserved)
                raise RuntimeError("the task ledger is unreachable")

            async def __aexit__(self, *exc_info):
                return None

        monkeypatch.setattr(client._governor, "reserve_task", lambda poll: Broken())
        with pytest.raises(RuntimeError, match="unreachable"):
            await client.submit("x", quantity=2)
        stats = client.stats()
    assert reserved == [2]  # reserved before the wait
    assert (stats.credits_reserved, stats.credits_spent, stats.maybe_charged) == (0, 0, 0)
    assert not route.called


@respx.mock
async def test_a_submit_cancelled_while_waiting_for_a_job_after_a_503_is_not_charged(clock):
    """A 503 refunded the submit; the polls it makes while it waits for room charge nothing."""
    respx.get(f"{API}/models").respond(json=MODELS)
    busy = httpx.Response(
        503, json={"error": "Server is busy", "type": "server_busy", "activeTasks": 1}
    )
    respx.post(f"{API}/generate").mock(side_effect=[httpx.Response(200, json=ASYNC_OK), busy])
    polled = asyncio.Event()

    def processing(request):
        polled.set()
        data = {"id": "gen_a", "prompt": "x", "processingStatus": "processing"}
        return httpx.Response(200, json={"data": data})

    respx.get(f"{API}/generate").mock(side_effect=processing)
    async with capped(clock, 5) as client:
        await client.submit("first")  # gen_a: our one job fills the cap of 1
        second = asyncio.ensure_future(client.submit("second", quantity=2))
        await until(polled.is_set, second)
        assert not second.done()
        assert client.stats().credits_reserved == 2
        await cancelled(second)
        stats = client.stats()
    assert (stats.credits_spent, stats.credits_reserved, stats.maybe_charged) == (1, 0, 0)


@pytest.mark.parametrize("call", ["generate", "stream"])
@respx.mock
async def test_a_call_over_the_cap_raises_at_once_without_queueing_for_a_slot(clock, call):
    respx.get(f"{API}/models").respond(json=MODELS)
    sent, arrived = hanging_post()
    async with capped(clock, 2, max_concurrency=1) as client:
        first = asyncio.ensure_future(client.generate("holds the only slot"))
        await arrived.wait()
        second = asyncio.ensure_future(CALLS[call](client, quantity=1, model="nanobanan-2"))
        await until(lambda: client.governor_stats().waiting > 0, second)
        assert second.done(), "it queued for a slot before its cost was checked"
        with pytest.raises(BudgetExceededError):
            await second
        await cancelled(first)
    assert len(sent) == 1


@pytest.mark.parametrize("call", ["generate", "stream"])
@respx.mock
async def test_a_call_cancelled_while_queued_for_a_slot_returns_its_reservation(clock, call):
    respx.get(f"{API}/models").respond(json=MODELS)
    sent, arrived = hanging_post()
    async with capped(clock, 5, max_concurrency=1) as client:
        first = asyncio.ensure_future(client.generate("holds the only slot"))
        await arrived.wait()
        second = asyncio.ensure_future(CALLS[call](client, model="nanobanan-2"))
        await until(lambda: client.governor_stats().waiting > 0, second)
        assert client.stats().credits_reserved == 3  # reserved before it queued
        await cancelled(second)
        stats, governor = client.stats(), client.governor_stats()
        assert (stats.credits_reserved, stats.maybe_charged) == (1, 0)
        assert (governor.active, governor.waiting) == (1, 0)
        await cancelled(first)
    assert len(sent) == 1


@pytest.mark.parametrize("call", ["generate", "stream", "submit"])
@respx.mock
async def test_a_call_whose_wait_for_a_slot_fails_returns_its_reservation(clock, monkeypatch, call):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate").respond(json=SYNC_OK)
    async with capped(clock, 5) as client:
        await client.estimate_credits()
        reserved = []

        async def broken(**kwargs):
            reserved.append(client.stats().credits_reserved)
            raise RuntimeError("the governor is unreachable")

        monkeypatch.setattr(client._governor, "acquire", broken)
        with pytest.raises(RuntimeError, match="unreachable"):
            await CALLS[call](client, model="nanobanan-2")
        stats = client.stats()
    assert reserved == [2]
    assert (stats.credits_reserved, stats.credits_spent, stats.maybe_charged) == (0, 0, 0)
    assert not route.called


@respx.mock
async def test_copies_made_with_options_reserve_in_one_ledger(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    sent, arrived = hanging_post()
    async with capped(clock, 4, max_concurrency=4) as client:
        patient = client.with_options(timeout=600)  # no cap of its own: the client's
        small = client.with_options(max_credits=3)
        under_way = asyncio.ensure_future(patient.generate("x", model="nanobanan-2"))
        await arrived.wait()
        # The copy's reservation is the client's, and every copy's, at once.
        assert client.stats().credits_reserved == small.stats().credits_reserved == 2
        assert (client.stats().credits_remaining, small.stats().credits_remaining) == (2, 2)
        with pytest.raises(BudgetExceededError) as info:
            await small.generate("y", quantity=3)  # fits the copy's 3, not the client's 2
        assert (info.value.remaining, info.value.max_credits) == (2, 4)
        with pytest.raises(BudgetExceededError):
            await client.with_options(max_retries=0).generate("z", quantity=3)
        await cancelled(under_way)  # out on the wire: its estimate stays spent
        assert (client.stats().credits_spent, client.stats().maybe_charged) == (2, 1)
        assert small.stats().credits_remaining == 2
    assert len(sent) == 1
