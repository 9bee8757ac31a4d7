"""The spend cap and stats end to end: over a socket, against the simulator's own ledger."""

import asyncio

import pytest

from nanobanana import (
    BudgetExceededError,
    GenerationFailedError,
    InternalServerError,
    PollPolicy,
)
from nanobanana.testing import SimModel, Simulator

FAST_POLLS = PollPolicy(first_delay=0.02, max_interval=0.05, jitter=0.0)
REFS = ["https://img.test/1.png", "https://img.test/2.png", "https://img.test/3.png"]


def charged(sim: Simulator) -> int:
    """What the simulator's ledger says the account paid, refunds deducted."""
    return sum(e.amount if e.kind == "charge" else -e.amount for e in sim.ledger)


async def test_the_estimate_is_what_the_simulator_charges_in_every_mode():
    async with Simulator(credits=1000) as sim, sim.client(max_credits=1000) as client:
        cases = [
            ("sync", {}),
            ("sync", {"model": "nanobanan-2", "quantity": 3}),
            ("async", {"model": "nanobanan-2-2k", "reference_image_urls": REFS}),
            ("async", {"quantity": 2, "reference_image_urls": REFS[:2]}),
            ("stream", {"model": "seedream-5.0-2k", "quantity": 4}),  # streams make one
        ]
        for mode, options in cases:
            before = charged(sim)
            estimate = await client.estimate_credits(**options) if mode != "stream" else 2
            if mode == "sync":
                await client.generate("a banana", **options)
            elif mode == "async":
                await client.submit("a banana", **options)
            else:
                async with client.stream("a banana", **options) as events:
                    async for _event in events:
                        pass
            assert charged(sim) - before == estimate, (mode, options)
        stats = client.stats()
    assert stats.credits_spent == charged(sim)
    assert stats.credits_reserved == 0
    assert stats.maybe_charged == stats.uncounted_charges == 0


async def test_a_quantity_past_the_documented_limit_is_reserved_whole():
    # "range 1-backend limit (default max 4)": an account may be allowed more.
    with Simulator(credits=100, max_quantity=8) as sim:
        async with sim.client(max_credits=5) as client:
            with pytest.raises(BudgetExceededError) as info:
                await client.generate("six bananas", quantity=6)
            assert (info.value.needed, info.value.remaining) == (6, 5)
            await client.generate("five bananas", quantity=5)
            stats = client.stats()
        assert [g.quantity for g in sim.generations] == [5]  # the six were never sent
    assert stats.credits_spent == charged(sim) == 5


async def test_a_quantity_the_server_clamps_is_settled_at_what_it_charged():
    with Simulator(credits=100) as sim:  # the default limit: 4
        async with sim.client(max_credits=9) as client:
            assert await client.estimate_credits(quantity=9) == 9
            generation = await client.generate("nine bananas?", quantity=9)
            stats = client.stats()
    assert len(generation.image_urls) == 4
    assert stats.credits_spent == charged(sim) == 4
    assert (stats.credits_reserved, stats.credits_remaining) == (0, 5)


async def test_without_the_default_model_a_call_naming_none_reserves_the_dearest_price():
    # As the live catalogue: no nano-banana, and the server's default is not said.
    models = [
        SimModel(name="gemini-2.5-flash-image", display_name="Gemini", credits_cost=1),
        SimModel(name="nanobanan-2-2k", display_name="2K", credits_cost=3),
    ]
    with Simulator(credits=100, models=models, default_model="nanobanan-2-2k") as sim:
        async with sim.client(max_credits=5) as client:
            await client.generate("a banana")
            with pytest.raises(BudgetExceededError) as info:
                await client.generate("another banana")
            assert (info.value.needed, info.value.remaining) == (3, 2)
            stats = client.stats()
    assert stats.credits_spent == charged(sim) == 3


async def test_concurrent_generations_never_spend_past_the_cap():
    with Simulator(credits=100, concurrency_limit=3, generation_time=0.05) as sim:
        async with sim.client(max_credits=5, max_concurrency=3) as client:
            results = await asyncio.gather(
                *(client.generate(f"banana {i}") for i in range(12)), return_exceptions=True
            )
            stats = client.stats()
        refused = [r for r in results if isinstance(r, BudgetExceededError)]
        assert len(refused) == 7
        assert all(isinstance(r, BudgetExceededError) or r.id for r in results)
        assert charged(sim) == 5
        assert stats.credits_spent == 5
        assert stats.requests["POST /generate"] == 5
        assert sim.max_in_flight() <= 3


async def test_a_stream_over_the_cap_is_never_opened():
    with Simulator(credits=100) as sim:
        async with sim.client(max_credits=1) as client:
            with pytest.raises(BudgetExceededError):
                async with client.stream("a banana", model="nanobanan-2"):
                    pass
            with pytest.raises(BudgetExceededError):
                async for _event in client.stream("a banana", reference_image_urls=REFS):
                    pass
        assert not [r for r in sim.requests if r.method == "POST"]


async def test_failed_and_ambiguous_generations_count_what_they_may_have_cost():
    with Simulator(credits=100) as sim:
        async with sim.client(max_credits=20, poll_policy=FAST_POLLS) as client:
            with pytest.raises(GenerationFailedError):  # an error event: charged
                async for _event in client.stream("a banana [fail]", model="nanobanan-2"):
                    pass
            sim.inject("500_after_charge")
            with pytest.raises(InternalServerError):
                await client.generate("a banana", quantity=3)
            stats = client.stats()
    assert charged(sim) == 5
    assert (stats.credits_spent, stats.credits_remaining, stats.maybe_charged) == (5, 15, 1)


async def test_stats_count_what_the_simulator_saw():
    with Simulator(credits=100, retry_after="0", busy_retry_after="0") as sim:
        sim.inject("429", path="/generate", times=2)
        sim.inject("503", path="/generate", mode="async")
        async with sim.client(poll_policy=FAST_POLLS) as client:
            await client.generate("a banana")
            job = await client.submit("a banana")
            await job.wait(timeout=30)
            stats = client.stats()
    seen = {}
    for record in sim.requests:
        endpoint = f"{record.method} {record.path.removeprefix('/api/v1')}"
        seen[endpoint] = seen.get(endpoint, 0) + 1
    cdn = [endpoint for endpoint in seen if endpoint.startswith("GET /img")]
    assert not cdn
    assert dict(stats.requests) == seen
    assert (stats.rate_limited, stats.server_busy) == (2, 1)
    assert dict(stats.retries) == {"429": 2, "503": 1}
    assert stats.credits_spent == charged(sim) == 2
