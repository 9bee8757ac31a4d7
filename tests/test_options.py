"""client.with_options(): other defaults for some calls, everything else shared."""

import asyncio

import httpx
import pytest
import respx

from nanobanana import (
    AsyncNanoBanana,
    BudgetExceededError,
    InternalServerError,
    NanoBananaError,
    PollPolicy,
    RetryPolicy,
)
from support import API, KEY

SYNC_OK = {
    "success": True,
    "generationId": "gen_1",
    "imageUrls": ["https://cdn.test/a.png"],
    "creditsUsed": 1,
    "remainingCredits": 99,
}
MODELS = {"data": [{"name": "nano-banana", "displayName": "Nano Banana", "creditsCost": 1}]}


@respx.mock
async def test_a_copy_shares_the_pool_governor_catalogue_and_counters(client):
    copy = client.with_options(timeout=5)
    assert copy is not client
    assert isinstance(copy, AsyncNanoBanana)
    assert copy.http_client is client.http_client
    assert copy._governor is client._governor
    assert copy._catalogue is client._catalogue
    assert copy._ledger is client._ledger  # no max_credits given: the same ledger
    respx.get(f"{API}/credits").respond(json={"data": {"credits": 3}})
    await copy.credits()
    await client.credits()
    assert client.stats() == copy.stats()
    assert client.stats().requests == {"GET /credits": 2}


@respx.mock
async def test_only_the_options_given_change(client):
    patient = client.with_options(max_retries=7)
    assert patient.retry_policy.attempts == 8
    assert patient.retry_policy.wait_max == client.retry_policy.wait_max
    assert patient.poll_policy is client.poll_policy
    assert patient._timeout is client._timeout
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    await patient.credits()
    assert route.calls.last.request.extensions["timeout"]["read"] >= 120  # still the default
    hasty = patient.with_options(timeout=2.5)
    assert hasty.retry_policy.attempts == 8  # kept from the copy it was made from
    await hasty.credits()
    assert route.calls.last.request.extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }
    await client.credits()  # the original is untouched
    assert route.calls.last.request.extensions["timeout"]["read"] >= 120
    assert client.retry_policy.attempts == 4


@respx.mock
async def test_a_copys_max_retries_governs_its_calls_only(client, clock):
    # A 500 is counted against max_retries (a 429 or 503 is waited out with patience).
    route = respx.get(f"{API}/credits").respond(500, json={"error": "down"})
    with pytest.raises(InternalServerError):
        await client.with_options(max_retries=0).credits()
    assert route.call_count == 1
    assert clock.sleeps == []
    with pytest.raises(InternalServerError):
        await client.credits()  # the client's own 3 retries
    assert route.call_count == 5
    assert client.stats().retries == {"5xx": 3}


async def test_timeout_none_means_no_timeout_and_policies_can_be_replaced(client):
    policy = RetryPolicy(attempts=2, wait_initial=0.1)
    polls = PollPolicy(first_delay=0.5)
    copy = client.with_options(timeout=None, retry_policy=policy, poll_policy=polls)
    assert copy.retry_policy is policy
    assert copy.poll_policy is polls
    assert copy._requester._extensions["timeout"] == httpx.Timeout(None).as_dict()
    both = client.with_options(retry_policy=policy, max_retries=5)
    assert both.retry_policy.attempts == 6
    assert both.retry_policy.wait_initial == 0.1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"timeout": "10"}, TypeError),
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, TypeError),
        ({"max_credits": -5}, ValueError),
        ({"retry_policy": 3}, TypeError),
        ({"poll_policy": "fast"}, TypeError),
    ],
)
def test_bad_options_are_refused_when_the_copy_is_made(client, options, error):
    with pytest.raises(error):
        client.with_options(**options)


@respx.mock
async def test_closing_a_copy_leaves_the_pool_and_the_client_working(client):
    respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    async with client.with_options(timeout=3) as copy:
        await copy.credits()
    assert copy.is_closed
    assert not client.http_client.is_closed
    with pytest.raises(NanoBananaError, match="closed"):
        await copy.credits()
    assert await client.credits() == 1
    await copy.aclose()  # twice is harmless


@respx.mock
async def test_closing_the_client_closes_its_copies():
    respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    client = AsyncNanoBanana(api_key=KEY, base_url=API)
    copy = client.with_options(max_retries=1)
    grandchild = copy.with_options(timeout=1)
    await grandchild.credits()
    await client.aclose()
    assert client.http_client.is_closed
    for closed in (copy, grandchild):
        assert closed.is_closed
        with pytest.raises(NanoBananaError, match="closed"):
            await closed.credits()


async def test_a_copy_never_warns_about_a_pool_it_does_not_own(client, recwarn):
    copy = client.with_options(timeout=1)
    del copy
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


async def test_copies_are_bound_to_the_event_loop_of_the_client():
    client = AsyncNanoBanana(api_key=KEY, base_url="http://127.0.0.1:9/api/v1", max_retries=0)
    copy = client.with_options(timeout=1)
    with pytest.raises(NanoBananaError):  # binds the shared loop, then fails to connect
        await client.credits()

    def other_loop():
        async def use():
            with pytest.raises(NanoBananaError, match="another event loop"):
                await copy.credits()

        asyncio.run(use())

    await asyncio.to_thread(other_loop)
    await client.aclose()


@respx.mock
async def test_a_copys_max_credits_narrows_the_shared_cap(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate").respond(json=SYNC_OK)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, max_credits=3) as client:
        small = client.with_options(max_credits=1)
        await small.generate("a")
        with pytest.raises(BudgetExceededError) as info:
            await small.generate("b")
        assert (info.value.remaining, info.value.max_credits) == (0, 1)
        # The copy's spending counts against the client's cap too.
        assert client.stats().credits_remaining == 2
        assert small.stats().credits_remaining == 0
        # A copy cannot lift a cap: None adds none of its own, the others still apply.
        unlimited = small.with_options(max_credits=None)
        with pytest.raises(BudgetExceededError):
            await unlimited.generate("c")
        wider = client.with_options(max_credits=100)
        await wider.generate("d")
        await wider.generate("e")
        with pytest.raises(BudgetExceededError) as info:
            await wider.generate("f")
        assert info.value.max_credits == 3
        assert client.stats().credits_spent == 3
    assert route.call_count == 3


@respx.mock
async def test_a_copy_of_an_uncapped_client_can_have_a_cap(client):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").respond(json=SYNC_OK)
    capped = client.with_options(max_credits=1)
    await capped.generate("a")
    with pytest.raises(BudgetExceededError):
        await capped.generate("b")
    await client.generate("c")  # the client itself has no cap
    assert client.stats().credits_spent == 2
    assert client.stats().credits_remaining is None
