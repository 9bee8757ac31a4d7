"""The client core end to end: through our transport, over a socket, against the simulator."""

import asyncio

import pytest

from nanobanana import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ContentSafetyError,
    GenerationFailedError,
    GenerationStatus,
    InsufficientCreditsError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
)
from nanobanana.testing import Simulator

FAST_POLLS = PollPolicy(first_delay=0.02, max_interval=0.05, jitter=0.0)


@pytest.fixture
def sim():
    with Simulator(credits=100, seed=1) as s:
        yield s


def charges(sim):
    return [e for e in sim.ledger if e.kind == "charge"]


async def test_every_call_works_end_to_end(sim):
    async with sim.client(poll_policy=FAST_POLLS) as client:
        models = await client.models()
        assert "nano-banana" in {m.name for m in models}
        assert await client.credits() == 100

        generation = await client.generate("a banana", quantity=2)
        assert generation.status is GenerationStatus.COMPLETED
        assert len(generation.image_urls) == 2
        assert generation.remaining_credits == 98

        job = await client.submit("an async banana")
        done = await job.wait(timeout=30)
        assert done.id == job.id
        assert done.status is GenerationStatus.COMPLETED
        assert len(done.image_urls) == 1
        assert done.prompt == "an async banana"

        again = await client.get_generation(generation.id)
        assert again.image_urls == generation.image_urls
        assert (await client.job(job.id).refresh()).status is GenerationStatus.COMPLETED
        assert await client.credits() == 97
    assert len(charges(sim)) == 2


@pytest.mark.parametrize(
    ("account", "call", "error"),
    [
        (None, lambda c: c.generate("x", model="no-such-model"), BadRequestError),
        (None, lambda c: c.get_generation("gen_missing"), NotFoundError),
        (None, lambda c: c.generate("x", model="nanobanan2&pro"), PermissionDeniedError),
        ({"credits": 0}, lambda c: c.generate("x"), InsufficientCreditsError),
        ({"api_access": False}, lambda c: c.credits(), PermissionDeniedError),
    ],
)
async def test_api_errors_arrive_as_their_class_and_charge_nothing(sim, account, call, error):
    key = sim.api_key
    if account is not None:
        key = "nb_other_account"
        sim.add_account(key, **account)
    async with sim.client(api_key=key) as client:
        with pytest.raises(error):
            await call(client)
    assert charges(sim) == []


async def test_a_wrong_key_is_an_authentication_error_that_does_not_echo_it(sim):
    async with sim.client(api_key="nb_wrong_secret_value") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.credits()
    assert "nb_wrong_secret_value" not in str(info.value)
    assert len([r for r in sim.requests if r.path.endswith("/credits")]) == 1


async def test_safety_warning_and_failed_generation_through_the_real_protocol(sim):
    async with sim.client(poll_policy=FAST_POLLS) as client:
        with pytest.raises(ContentSafetyError) as info:
            await client.generate("a banana [unsafe]")
        assert info.value.generation_id
        job = await client.submit("a banana [fail]")
        with pytest.raises(GenerationFailedError) as failed:
            await job.wait(timeout=30)
        assert failed.value.generation_id == job.id
    assert len(charges(sim)) == 2  # both charged, neither refunded (async-mode docs)


async def test_429_is_retried_no_sooner_than_retry_after(sim):
    sim.inject("429", path="/generate", retry_after="1")
    async with sim.client() as client:
        generation = await client.generate("x")
    assert generation.status is GenerationStatus.COMPLETED
    posts = [r for r in sim.requests if r.method == "POST"]
    assert [r.status for r in posts] == [429, 200]
    assert posts[1].time - posts[0].end >= 1.0
    assert len(charges(sim)) == 1


async def test_500_after_charge_is_not_resent_and_charged_exactly_once(sim):
    sim.inject("500_after_charge", path="/generate")
    async with sim.client() as client:
        with pytest.raises(InternalServerError, match="may have been charged") as info:
            await client.generate("x")
    assert info.value.may_have_been_charged
    assert len([r for r in sim.requests if r.method == "POST"]) == 1
    assert len(charges(sim)) == 1


async def test_connection_reset_after_charge_is_not_resent(sim):
    sim.inject("reset_after", path="/generate")
    async with sim.client() as client:
        with pytest.raises(APIConnectionError, match="may have been charged"):
            await client.generate("x")
        assert await client.credits() == 99  # the client is still usable
    assert len(charges(sim)) == 1


async def test_connection_reset_before_the_request_was_read_is_not_resent_either(sim):
    # The client cannot tell a reset before reading from one after: it stays safe.
    sim.inject("reset_before", path="/generate")
    async with sim.client() as client:
        with pytest.raises(APIConnectionError):
            await client.generate("x")
    assert charges(sim) == []


async def test_503_busy_is_refunded_and_resent_after_retry_after(sim):
    sim.inject("503", path="/generate", retry_after="0")
    async with sim.client(poll_policy=FAST_POLLS) as client:
        job = await client.submit("x")
        await job.wait(timeout=30)
    kinds = [e.kind for e in sim.ledger]
    assert kinds.count("charge") - kinds.count("refund") == 1


async def test_polls_retry_5xx_and_finish(sim):
    async with sim.client(poll_policy=FAST_POLLS) as client:
        job = await client.submit("x")
        sim.inject("500", method="GET", path="/generate", times=2)
        generation = await job.wait(timeout=30)
    assert generation.status is GenerationStatus.COMPLETED
    assert [r.status for r in sim.requests if r.method == "GET"].count(500) == 2


async def test_gather_of_20_against_an_account_limit_of_2_succeeds_with_few_429s():
    with Simulator(concurrency_limit=2, generation_time=0.02, retry_after="0") as sim:
        async with sim.client() as client:
            results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(20)))
            stats = client.governor_stats()
    assert len({g.id for g in results}) == 20
    statuses = [r.status for r in sim.requests if r.method == "POST"]
    assert statuses.count(429) <= 3
    assert sim.max_in_flight() == 2  # the limit was then used fully
    assert (stats.limit, stats.known, stats.active, stats.waiting) == (2, True, 0, 0)
    assert len(charges(sim)) == 20


async def test_max_concurrency_is_respected_without_any_429():
    with Simulator(concurrency_limit=3, generation_time=0.02) as sim:
        async with sim.client(max_concurrency=3) as client:
            await asyncio.gather(*(client.generate(f"p{i}") for i in range(12)))
    assert all(r.status == 200 for r in sim.requests if r.method == "POST")
    assert sim.max_in_flight() == 3


async def test_cancelling_a_sync_generate_leaves_no_slot_or_connection_behind(sim):
    async with sim.client(max_concurrency=1) as client:
        with sim.hold():
            task = asyncio.create_task(client.generate("held"))
            await sim.wait_for_async(lambda: sim.in_flight() == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = client.governor_stats()
        assert (stats.active, stats.waiting) == (0, 0)
        await sim.wait_for_async(lambda: sim.in_flight() == 0)
        assert (await client.generate("after")).status is GenerationStatus.COMPLETED


async def test_cancelling_queued_calls_frees_the_queue(sim):
    async with sim.client(max_concurrency=1) as client:
        with sim.hold():
            tasks = [asyncio.create_task(client.generate(f"p{i}")) for i in range(10)]
            await sim.wait_for_async(lambda: sim.in_flight() == 1)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        stats = client.governor_stats()
        assert (stats.active, stats.waiting) == (0, 0)
        await sim.wait_for_async(lambda: sim.in_flight() == 0)
        assert await client.credits() == 100 - len(charges(sim))


async def test_rate_limit_error_when_patience_runs_out(sim):
    sim.inject("429", path="/credits", times=None, retry_after="0.01")
    policy = RetryPolicy(attempts=1, patience=0.2)
    async with sim.client(retry_policy=policy) as client:
        with pytest.raises(RateLimitError, match="Gave up after waiting") as info:
            await client.credits()
    assert info.value.limit == 1
    refused = [r for r in sim.requests if r.path.endswith("/credits")]
    assert info.value.refusals == len(refused) > 1


async def test_the_key_is_sent_to_the_api_with_our_user_agent(sim):
    async with sim.client() as client:
        await client.credits()
    (record,) = [r for r in sim.requests if r.path.endswith("/credits")]
    assert record.authorization
    assert record.user_agent.startswith("nanobanana/")


async def test_calls_go_through_the_fast_pool_on_this_event_loop(sim, request):
    # The same suite runs on asyncio and uvloop (tests/e2e/conftest.py); on both the
    # client's own HTTP/1.1 pool carries the requests, not httpcore's.
    loop = asyncio.get_running_loop()
    expected = "uvloop" if request.node.name.endswith("[uvloop]") else "asyncio"
    assert type(loop).__module__.split(".")[0] == expected
    async with sim.client() as client:
        assert await client.credits() == 100
        await client.generate("on this loop")
        transport = client.http_client._transport
        assert transport.dispatch.uses_fast_path()
        assert transport.stats().open == 1
        assert transport.dispatch.httpcore_pool.connections == []
