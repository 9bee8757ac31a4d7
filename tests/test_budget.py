"""The spend cap: estimates, reservations that concurrent calls cannot overrun, settling."""

import asyncio
import json

import httpx
import pytest
import respx

from nanobanana import (
    APIConnectionError,
    AsyncNanoBanana,
    BadRequestError,
    BudgetExceededError,
    ContentSafetyError,
    InsufficientCreditsError,
    InternalServerError,
    NanoBananaError,
    RateLimitError,
    ServerBusyError,
    UnknownModelError,
)
from nanobanana._budget import Ledger, estimate_cost
from support import API, KEY

MODELS = {
    "data": [
        {"name": "nano-banana", "displayName": "Nano Banana", "creditsCost": 1},
        {"name": "nanobanan-2", "displayName": "Nano Banana 2", "creditsCost": 2},
        {"name": "pricey", "displayName": "Pricey", "creditsCost": 5},
    ]
}


def sync_ok(credits_used=1, generation_id="gen_1"):
    return {
        "success": True,
        "generationId": generation_id,
        "imageUrls": ["https://cdn.test/a.png"],
        "creditsUsed": credits_used,
        "remainingCredits": 99,
    }


def capped(clock, max_credits, **kwargs):
    return AsyncNanoBanana(
        api_key=KEY, base_url=API, clock=clock, max_credits=max_credits, **kwargs
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 1),  # the documented default model, at its catalogue price
        ({"selectedModel": "nanobanan-2"}, 2),
        ({"quantity": 3}, 3),
        # "1-backend limit (default max 4)": an account's limit may be higher, and the
        # estimate is never below what may be charged, so the whole quantity counts.
        ({"quantity": 9}, 9),
        ({"quantity": 0}, 1),  # the lower bound, 1, is the docs' own
        ({"selectedModel": "nanobanan-2", "quantity": 4}, 8),
        ({"referenceImageUrls": ["https://i/1"]}, 1),  # the first image is in the price
        ({"referenceImageUrls": ["https://i/1", "https://i/2", "https://i/3"]}, 3),
        # "extra-image fees are included in the unit cost", which quantity multiplies
        ({"selectedModel": "pricey", "referenceImageUrls": ["a", "b"], "quantity": 2}, 12),
        ({"mode": "stream", "quantity": 4}, 1),  # streams make one image
        ({"mode": "stream", "selectedModel": "pricey", "referenceImageUrls": ["a", "b"]}, 6),
    ],
)
def test_the_estimate_follows_the_overview_docs(body, expected):
    costs = {"nano-banana": 1, "nanobanan-2": 2, "pricey": 5}
    assert estimate_cost(costs, body) == expected


def test_without_the_default_model_in_the_catalogue_a_call_naming_none_costs_the_dearest():
    # The live catalogue lacks nano-banana (api-reference-agent-notes): the server's
    # default is then unknown, and may be the dearest model it lists.
    costs = {"gemini-2.5-flash-image": 1, "nanobanan-2-2k": 3, "nanobanan-2": 2}
    assert estimate_cost(costs, {"quantity": 2}) == 6
    assert estimate_cost(costs, {"referenceImageUrls": ["a", "b"]}) == 4


def test_the_default_model_listed_in_the_catalogue_costs_its_catalogue_price():
    assert estimate_cost({"nano-banana": 3, "pricey": 5}, {}) == 3
    assert estimate_cost({"nano-banana": 0, "pricey": 5}, {"quantity": 2}) == 0


def test_an_empty_catalogue_cannot_price_the_default_model():
    with pytest.raises(UnknownModelError, match=r"lists no model.*nothing was sent") as info:
        estimate_cost({}, {"prompt": "x"})
    assert info.value.known == ()


def test_an_unknown_model_cannot_be_estimated():
    with pytest.raises(UnknownModelError, match=r"Unknown model 'nope'.*nano-banana") as info:
        estimate_cost({"nano-banana": 1}, {"selectedModel": "nope"})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, NanoBananaError)
    assert (info.value.model, info.value.known) == ("nope", ("nano-banana",))


@respx.mock
async def test_estimate_credits_fetches_the_catalogue_once(client):
    models = respx.get(f"{API}/models").respond(json=MODELS)
    assert await client.estimate_credits() == 1
    assert await client.estimate_credits(model="nanobanan-2", quantity=2) == 4
    urls = ["https://i.test/1.png", "https://i.test/2.png"]
    assert await client.estimate_credits(model="pricey", reference_image_urls=urls) == 6
    assert models.call_count == 1


@respx.mock
async def test_estimate_credits_checks_its_arguments_as_generate_does(client):
    models = respx.get(f"{API}/models").respond(json=MODELS)
    with pytest.raises(ValueError, match="quantity"):
        await client.estimate_credits(quantity=0)
    with pytest.raises(TypeError):
        await client.estimate_credits(reference_image_urls="https://i.test/1.png")
    assert not models.called


@respx.mock
async def test_a_model_missing_from_the_kept_catalogue_is_looked_up_once_more(client):
    models = respx.get(f"{API}/models")
    models.side_effect = [
        httpx.Response(200, json=MODELS),
        httpx.Response(
            200,
            json={"data": [*MODELS["data"], {"name": "brand-new", "creditsCost": 7}]},
        ),
        httpx.Response(200, json=MODELS),
    ]
    assert await client.estimate_credits() == 1
    assert await client.estimate_credits(model="brand-new") == 7  # newer than the cache
    assert models.call_count == 2
    with pytest.raises(UnknownModelError, match="Unknown model 'gone'"):
        await client.estimate_credits(model="gone")
    assert models.call_count == 3


@respx.mock
async def test_an_empty_catalogue_is_looked_up_once_more_before_the_default_is_refused(client):
    models = respx.get(f"{API}/models")
    models.side_effect = [
        httpx.Response(200, json={"data": []}),
        httpx.Response(200, json={"data": [{"name": "solo", "creditsCost": 2}]}),
    ]
    assert await client.estimate_credits() == 2
    assert models.call_count == 2


@respx.mock
async def test_without_the_default_model_a_capped_call_naming_none_reserves_the_dearest(clock):
    catalogue = [{"name": "cheap", "creditsCost": 1}, {"name": "dear", "creditsCost": 3}]
    models = respx.get(f"{API}/models").respond(json={"data": catalogue})
    generate = respx.post(f"{API}/generate")
    generate.side_effect = [httpx.Response(200, json=sync_ok(n)) for n in (3, 1)]
    async with capped(clock, 5) as client:
        await client.generate("x")  # reserved 3, and the server said 3
        with pytest.raises(BudgetExceededError) as info:
            await client.generate("y")
        assert (info.value.needed, info.value.remaining) == (3, 2)
        await client.generate("z", model="cheap")
    assert generate.call_count == 2
    assert models.call_count == 1  # a catalogue without the default is not refetched


@respx.mock
async def test_an_unknown_model_under_a_cap_is_refused_before_sending(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    generate = respx.post(f"{API}/generate").respond(json=sync_ok())
    async with capped(clock, 5) as client:
        with pytest.raises(UnknownModelError, match="nothing was sent"):
            await client.generate("x", model="nope")
        assert client.stats().credits_reserved == 0
    assert not generate.called


@respx.mock
async def test_concurrent_first_estimates_fetch_the_catalogue_once(client):
    models = respx.get(f"{API}/models").respond(json=MODELS)
    estimates = await asyncio.gather(*(client.estimate_credits() for _ in range(20)))
    assert estimates == [1] * 20
    assert models.call_count == 1


@respx.mock
async def test_a_client_without_a_cap_never_fetches_the_catalogue(client):
    models = respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").respond(json=sync_ok(credits_used=3))
    await client.generate("a cat")
    assert not models.called
    assert client.stats().credits_spent == 3  # what the server reported
    assert client.stats().credits_remaining is None


@respx.mock
async def test_a_generation_over_the_cap_raises_and_sends_nothing(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    generate = respx.post(f"{API}/generate").respond(json=sync_ok(credits_used=3))
    async with capped(clock, 3) as client:
        with pytest.raises(BudgetExceededError) as info:
            await client.generate("a cat", quantity=4)
        assert (info.value.needed, info.value.remaining, info.value.max_credits) == (4, 3, 3)
        assert "nothing was sent" in str(info.value)
        assert isinstance(info.value, NanoBananaError)
        assert not generate.called
        await client.generate("a cat", quantity=3)  # exactly the cap is allowed
        assert client.stats().credits_remaining == 0
        with pytest.raises(BudgetExceededError) as info:
            await client.generate("one more")
        assert (info.value.needed, info.value.remaining) == (1, 0)
    assert generate.call_count == 1


@respx.mock
async def test_what_the_server_reports_is_counted_not_the_estimate(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").respond(json=sync_ok(credits_used=3))
    async with capped(clock, 10) as client:
        await client.generate("estimated at 1")
        stats = client.stats()
    assert (stats.credits_spent, stats.credits_reserved, stats.credits_remaining) == (3, 0, 7)


@respx.mock
async def test_a_safety_refusal_counts_the_credits_it_spent(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").respond(
        json={
            "success": False,
            "warning": True,
            "generationId": "gen_w",
            "message": "Content safety check failed",
            "creditsUsed": 2,
            "remainingCredits": 98,
        }
    )
    async with capped(clock, 10) as client:
        with pytest.raises(ContentSafetyError):
            await client.generate("x")
        assert client.stats().credits_spent == 2


@respx.mock
async def test_concurrent_calls_cannot_overrun_the_cap_together(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    started = asyncio.Event()
    go = asyncio.Event()

    async def slow(request):
        started.set()
        await go.wait()
        return httpx.Response(200, json=sync_ok())

    generate = respx.post(f"{API}/generate").mock(side_effect=slow)
    async with capped(clock, 3, max_concurrency=10) as client:
        calls = [asyncio.ensure_future(client.generate(f"p{i}")) for i in range(10)]
        await started.wait()
        while sum(call.done() for call in calls) < 7:
            await asyncio.sleep(0)
        # Three are reserved (in flight or queued), and the other seven were refused.
        refused = [call for call in calls if call.done()]
        assert len(refused) == 7
        assert all(isinstance(call.exception(), BudgetExceededError) for call in refused)
        assert client.stats().credits_reserved == 3
        go.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        stats = client.stats()
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert generate.call_count == 3
    assert (stats.credits_spent, stats.credits_reserved, stats.credits_remaining) == (3, 0, 0)


def _refusal(status):
    bodies = {
        400: {"error": "Missing prompt"},
        402: {"error": "Insufficient credits"},
        429: {"error": "Too many", "type": "concurrency_limit", "limit": 1, "active": 1},
        503: {"error": "Server is busy", "type": "server_busy", "activeTasks": 10},
    }
    return httpx.Response(status, json=bodies[status], headers={"Retry-After": "1"})


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (402, InsufficientCreditsError),
        (429, RateLimitError),
        (503, ServerBusyError),
    ],
)
@respx.mock
async def test_a_refusal_that_charged_nothing_releases_the_reservation(clock, status, error):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate").mock(return_value=_refusal(status))
    async with capped(clock, 2, max_retries=1) as client:
        with pytest.raises(error):
            await client.submit("x", quantity=2)
        stats = client.stats()
    assert route.called
    assert (stats.credits_spent, stats.credits_reserved, stats.credits_remaining) == (0, 0, 2)
    assert stats.maybe_charged == 0


@respx.mock
async def test_a_reservation_held_through_429_retries_is_settled_once(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate")
    route.side_effect = [_refusal(429), _refusal(503), httpx.Response(200, json=sync_ok(2))]
    async with capped(clock, 2) as client:
        await client.generate("x", quantity=2)
        stats = client.stats()
    assert route.call_count == 3
    assert (stats.credits_spent, stats.credits_remaining, stats.maybe_charged) == (2, 0, 0)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.Response(500, json={"error": "boom"}), InternalServerError),
        (httpx.ReadTimeout("slow"), APIConnectionError),
        (httpx.RemoteProtocolError("Server disconnected"), APIConnectionError),
    ],
)
@respx.mock
async def test_an_ambiguous_outcome_keeps_the_estimate_as_spent(clock, failure, error):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").mock(side_effect=[failure])
    async with capped(clock, 5) as client:
        with pytest.raises(error) as info:
            await client.generate("x", model="nanobanan-2")
        stats = client.stats()
    assert info.value.may_have_been_charged
    assert (stats.credits_spent, stats.credits_remaining, stats.maybe_charged) == (2, 3, 1)


@respx.mock
async def test_a_connect_error_that_never_left_releases_the_reservation(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").mock(side_effect=httpx.ConnectError("refused"))
    async with capped(clock, 5, max_retries=1) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.generate("x")
        stats = client.stats()
    assert not info.value.may_have_been_charged
    assert (stats.credits_spent, stats.credits_remaining, stats.maybe_charged) == (0, 5, 0)


@respx.mock
async def test_cancelled_while_queued_releases_and_cancelled_on_the_wire_keeps(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    arrived = asyncio.Event()

    async def hang(request):
        arrived.set()
        await asyncio.Event().wait()  # until cancelled

    respx.post(f"{API}/generate").mock(side_effect=hang)
    async with capped(clock, 5, max_concurrency=1) as client:
        first = asyncio.ensure_future(client.generate("on the wire"))
        await arrived.wait()
        second = asyncio.ensure_future(client.generate("queued", quantity=2))
        while client.stats().queued == 0:
            await asyncio.sleep(0)
        assert client.stats().credits_reserved == 3
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        stats = client.stats()
        assert (stats.credits_reserved, stats.credits_remaining, stats.maybe_charged) == (1, 4, 0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        stats = client.stats()
    # The request was out: it may have been accepted, so its estimate stays spent.
    assert (stats.credits_spent, stats.credits_reserved, stats.maybe_charged) == (1, 0, 1)
    assert stats.credits_remaining == 4


@respx.mock
async def test_a_failed_catalogue_fetch_reserves_nothing_and_is_retried_next_time(clock):
    models = respx.get(f"{API}/models")
    models.side_effect = [
        httpx.Response(404, json={"error": "x"}),
        httpx.Response(200, json=MODELS),
    ]
    generate = respx.post(f"{API}/generate").respond(json=sync_ok())
    async with capped(clock, 5) as client:
        with pytest.raises(NanoBananaError):
            await client.generate("x")
        assert client.stats().credits_reserved == 0
        assert not generate.called
        await client.generate("x")
    assert models.call_count == 2


@respx.mock
async def test_submit_is_charged_as_generate_is(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    respx.post(f"{API}/generate").respond(
        json={
            "success": True,
            "async": True,
            "generationId": "gen_a",
            "message": "Generation started.",
            "creditsUsed": 4,
            "remainingCredits": 96,
        }
    )
    async with capped(clock, 4) as client:
        job = await client.submit("x", model="nanobanan-2", quantity=2)
        assert job.id == "gen_a"
        assert client.stats().credits_spent == 4
        with pytest.raises(BudgetExceededError):
            await client.submit("y")


@respx.mock
async def test_the_request_sent_is_unchanged_by_the_cap(clock):
    respx.get(f"{API}/models").respond(json=MODELS)
    route = respx.post(f"{API}/generate").respond(json=sync_ok())
    async with capped(clock, 9) as client:
        await client.generate("a cat", quantity=2)
    assert json.loads(route.calls.last.request.content) == {
        "prompt": "a cat",
        "mode": "sync",
        "quantity": 2,
    }


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (True, TypeError), (2.5, TypeError), ("5", TypeError)]
)
def test_a_bad_max_credits_is_refused_at_construction(value, error):
    with pytest.raises(error, match="max_credits"):
        AsyncNanoBanana(api_key=KEY, base_url=API, max_credits=value)


def test_a_cap_of_zero_allows_only_free_generations():
    ledger = Ledger.root(0)
    with pytest.raises(BudgetExceededError):
        ledger.charge(1)
    charge = ledger.charge(0)
    charge.finish()
    assert (ledger.spent, ledger.reserved, ledger.remaining()) == (0, 0, 0)


def test_a_copys_cap_narrows_and_the_root_counts_everything():
    root = Ledger.root(10)
    copy = root.narrow(3)
    assert copy.remaining() == 3
    assert root.narrow(None) is root
    charge = copy.charge(2)
    charge.trace.accepted = True
    charge.finish()
    assert (root.spent, root.remaining(), copy.remaining()) == (2, 8, 1)
    with pytest.raises(BudgetExceededError) as info:
        copy.charge(2)
    assert (info.value.remaining, info.value.max_credits) == (1, 3)
    wide = root.narrow(100)
    root.charge(8).finish()  # reserved, never sent: released
    assert wide.remaining() == 8
    for _ in range(8):
        done = root.charge(1)
        done.trace.accepted = True
        done.finish()
    with pytest.raises(BudgetExceededError) as info:
        wide.charge(1)  # the copy's wider cap does not widen the client's
    assert info.value.max_credits == 10


@respx.mock
async def test_cancelled_while_fetching_the_catalogue_reserves_nothing_and_frees_the_lock(clock):
    arrived = asyncio.Event()
    fetches = 0

    async def hang_once(request):
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            arrived.set()
            await asyncio.Event().wait()
        return httpx.Response(200, json=MODELS)

    respx.get(f"{API}/models").mock(side_effect=hang_once)
    generate = respx.post(f"{API}/generate").respond(json=sync_ok())
    async with capped(clock, 5) as client:
        first = asyncio.ensure_future(client.generate("x"))
        await arrived.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        stats = client.stats()
        assert (stats.credits_reserved, stats.maybe_charged, stats.in_flight) == (0, 0, 0)
        await client.generate("y")  # the catalogue is fetched again, by this call
    assert fetches == 2
    assert generate.call_count == 1
