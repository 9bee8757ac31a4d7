import asyncio
import json
import logging
import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import respx

import nanobanana
from nanobanana import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncNanoBanana,
    AuthenticationError,
    BadRequestError,
    ContentSafetyError,
    GenerationStatus,
    InsufficientCreditsError,
    InternalServerError,
    MissingAPIKeyError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerBusyError,
    UnexpectedResponseError,
)
from support import API, KEY

SYNC_OK = {
    "success": True,
    "generationId": "gen_1",
    "imageUrls": ["https://cdn.test/a.png"],
    "creditsUsed": 1,
    "remainingCredits": 99,
}


@respx.mock
async def test_models_needs_no_key_and_ignores_unknown_fields(monkeypatch):
    for name in ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    route = respx.get(f"{API}/models").respond(
        json={
            "data": [
                {
                    "name": "nanobanan-2",
                    "displayName": "Nano Banana 2",
                    "creditsCost": 2,
                    "supportsImageInput": True,
                    "supportsAspectRatio": True,
                    "requiresPro": False,
                    "brandNewField": {"x": 1},
                }
            ]
        }
    )
    async with AsyncNanoBanana(base_url=API) as client:
        models = await client.models()
    assert models == [
        nanobanana.Model(
            name="nanobanan-2",
            display_name="Nano Banana 2",
            credits_cost=2,
            supports_image_input=True,
            supports_aspect_ratio=True,
            requires_pro=False,
        )
    ]
    assert "authorization" not in route.calls.last.request.headers


@respx.mock
async def test_a_missing_required_field_names_the_field(client):
    respx.get(f"{API}/models").respond(json={"data": [{"displayName": "x", "creditsCost": 1}]})
    with pytest.raises(UnexpectedResponseError, match="'name'") as info:
        await client.models()
    assert info.value.field == "name"


@respx.mock
async def test_credits_sends_the_bearer_key_and_our_user_agent(client):
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 42}})
    assert await client.credits() == 42
    headers = route.calls.last.request.headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["user-agent"].startswith(f"nanobanana/{nanobanana.__version__}")


async def test_a_missing_key_is_a_clear_error_at_the_first_call_that_needs_one(monkeypatch):
    for name in ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    async with AsyncNanoBanana(base_url=API) as client:
        with pytest.raises(MissingAPIKeyError, match="NANOBANANA_API_KEY"):
            await client.credits()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"NANOBANANA_API_KEY": "nb_a", "NANO_BANANA_API_KEY": "nb_b", "NB_API_KEY": "nb_c"},
            "nb_a",
        ),
        ({"NANO_BANANA_API_KEY": "nb_b", "NB_API_KEY": "nb_c"}, "nb_b"),
        ({"NB_API_KEY": "nb_c"}, "nb_c"),
    ],
)
@respx.mock
async def test_key_comes_from_the_environment_in_documented_order(monkeypatch, env, expected):
    for name in ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    async with AsyncNanoBanana(base_url=API) as client:
        await client.credits()
    assert route.calls.last.request.headers["authorization"] == f"Bearer {expected}"


def test_base_url_comes_from_the_environment_then_the_default(monkeypatch):
    for name in ("NANOBANANA_BASE_URL", "NANO_BANANA_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert _closed(AsyncNanoBanana()).base_url == "https://www.nananobanana.com/api/v1"
    monkeypatch.setenv("NANO_BANANA_BASE_URL", "http://127.0.0.1:9/api/v1/")
    assert _closed(AsyncNanoBanana()).base_url == "http://127.0.0.1:9/api/v1"
    monkeypatch.setenv("NANOBANANA_BASE_URL", "http://localhost:8/x")
    assert _closed(AsyncNanoBanana()).base_url == "http://localhost:8/x"
    assert _closed(AsyncNanoBanana(base_url="https://a.test/v1")).base_url == "https://a.test/v1"


def _closed(client):
    client._closed = True  # never used: nothing to close, no ResourceWarning
    return client


@pytest.mark.parametrize("bad", ["ftp://x/api", "not a url", "https://x/api?key=1", "/relative"])
def test_an_invalid_base_url_is_a_value_error(bad):
    with pytest.raises(ValueError, match="base_url"):
        AsyncNanoBanana(api_key="nb_x", base_url=bad)


def test_default_read_timeout_allows_slow_sync_generations():
    client = _closed(AsyncNanoBanana(api_key="nb_x"))
    assert client.http_client.timeout.read >= 120


def test_repr_never_shows_the_key():
    client = _closed(AsyncNanoBanana(api_key=KEY))
    assert KEY not in repr(client)
    assert "api_key=set" in repr(client)


@respx.mock
async def test_generate_sends_the_documented_body_and_returns_a_completed_generation(client):
    route = respx.post(f"{API}/generate").respond(json=SYNC_OK)
    generation = await client.generate(
        "a cat",
        model="nanobanan-2",
        reference_image_urls=["https://img.test/1.png", "https://img.test/2.png"],
        aspect_ratio="16:9",
        quantity=2,
    )
    assert json.loads(route.calls.last.request.content) == {
        "prompt": "a cat",
        "mode": "sync",
        "selectedModel": "nanobanan-2",
        "referenceImageUrls": ["https://img.test/1.png", "https://img.test/2.png"],
        "aspectRatio": "16:9",
        "quantity": 2,
    }
    assert generation.id == "gen_1"
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.image_urls == ("https://cdn.test/a.png",)
    assert (generation.credits_used, generation.remaining_credits) == (1, 99)
    assert (generation.prompt, generation.model) == ("a cat", "nanobanan-2")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompt": ""}, ValueError),
        ({"prompt": "   "}, ValueError),
        ({"prompt": 5}, TypeError),
        ({"prompt": "x", "reference_image_urls": "https://one.test/a.png"}, TypeError),
        ({"prompt": "x", "reference_image_urls": ["file:///etc/passwd"]}, ValueError),
        ({"prompt": "x", "quantity": 0}, ValueError),
        ({"prompt": "x", "quantity": True}, TypeError),
        ({"prompt": "x", "quantity": 1.5}, TypeError),
        ({"prompt": "x", "model": ""}, TypeError),
        ({"prompt": "x", "aspect_ratio": 16}, TypeError),
    ],
)
@respx.mock
async def test_bad_arguments_fail_before_anything_is_sent(client, kwargs, error):
    route = respx.post(f"{API}/generate").respond(json=SYNC_OK)
    prompt = kwargs.pop("prompt")
    with pytest.raises(error):
        await client.generate(prompt, **kwargs)
    assert not route.called


@respx.mock
async def test_content_safety_warning_raises_with_the_generation_id_and_credits(client):
    respx.post(f"{API}/generate").respond(
        json={
            "success": False,
            "warning": True,
            "generationId": "gen_w",
            "message": "Content safety check failed",
            "creditsUsed": 1,
            "remainingCredits": 98,
        }
    )
    with pytest.raises(ContentSafetyError, match="Content safety check failed") as info:
        await client.generate("x")
    assert info.value.generation_id == "gen_w"
    assert (info.value.credits_used, info.value.remaining_credits) == (1, 98)


@respx.mock
async def test_a_sync_answer_with_images_but_no_success_field_is_a_result(client):
    respx.post(f"{API}/generate").respond(
        json={"generationId": "gen_s", "imageUrls": ["https://cdn.test/1.png"]}
    )
    generation = await client.generate("x")
    assert generation.image_urls == ("https://cdn.test/1.png",)


@respx.mock
async def test_a_sync_answer_with_neither_success_nor_images_may_have_been_charged(client):
    respx.post(f"{API}/generate").respond(json={"generationId": "gen_s"})
    with pytest.raises(UnexpectedResponseError, match="imageUrls") as info:
        await client.generate("x")
    assert info.value.may_have_been_charged


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "Missing prompt"}, BadRequestError),
        (401, {"error": "Invalid API key"}, AuthenticationError),
        (402, {"error": "Insufficient credits"}, InsufficientCreditsError),
        (403, {"error": "API access not enabled"}, PermissionDeniedError),
        (404, {"error": "Not found"}, NotFoundError),
    ],
)
@respx.mock
async def test_client_errors_raise_their_class_at_once(client, clock, status, body, error):
    route = respx.get(f"{API}/credits").respond(status, json=body)
    with pytest.raises(error, match=body["error"]) as info:
        await client.credits()
    assert route.call_count == 1
    assert clock.sleeps == []
    assert info.value.status_code == status
    assert info.value.body == body
    assert KEY not in str(info.value)


@respx.mock
async def test_an_html_error_page_still_yields_the_right_class(client):
    respx.get(f"{API}/credits").respond(
        502, html="<html><body><h1>502 Bad Gateway</h1></body></html>"
    )
    with pytest.raises(InternalServerError, match="502") as info:
        await client.credits()
    assert "<html>" in info.value.body


@respx.mock
async def test_429_on_generate_waits_retry_after_then_resends(client, clock):
    route = respx.post(f"{API}/generate")
    route.side_effect = [
        httpx.Response(
            429,
            json={"error": "Too many", "type": "concurrency_limit", "limit": 1, "active": 1},
            headers={"Retry-After": "3", "X-RateLimit-Limit": "1", "X-RateLimit-Active": "1"},
        ),
        httpx.Response(200, json=SYNC_OK),
    ]
    generation = await client.generate("x")
    assert generation.id == "gen_1"
    assert route.call_count == 2
    assert clock.sleeps == [3.0]


@respx.mock
async def test_429s_are_waited_out_until_patience_runs_out_then_the_error_says_so(clock):
    route = respx.post(f"{API}/generate").respond(
        429,
        json={"error": "Too many", "type": "concurrency_limit", "limit": 2, "active": 2},
        headers={"Retry-After": "1"},
    )
    policy = nanobanana.RetryPolicy(attempts=1, patience=5.0)  # no retries of failures
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, retry_policy=policy) as c:
        with pytest.raises(RateLimitError) as info:
            await c.generate("x")
    # Refused at t = 0, 1, 2, 3, 4, 5: a sixth wait would end past the 5 s of patience.
    assert route.call_count == 6
    assert clock.sleeps == [1.0] * 5
    assert (info.value.retry_after, info.value.limit, info.value.active) == (1.0, 2, 2)
    assert (info.value.waited, info.value.refusals) == (5.0, 6)
    assert "Gave up after waiting 5 s for capacity through 6 refusals" in str(info.value)


@respx.mock
async def test_max_retries_zero_still_waits_out_refusals(clock):
    route = respx.post(f"{API}/generate")
    route.side_effect = [
        httpx.Response(429, json={"error": "busy", "limit": 1}, headers={"Retry-After": "2"}),
        httpx.Response(429, json={"error": "busy", "limit": 1}, headers={"Retry-After": "2"}),
        httpx.Response(200, json=SYNC_OK),
    ]
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, max_retries=0) as c:
        assert (await c.generate("x")).id == "gen_1"
        assert c.retry_policy.patience == 600.0  # the documented default: ten minutes
    assert clock.sleeps == [2.0, 2.0]


@respx.mock
async def test_500_on_generate_is_never_resent_and_says_it_may_have_been_charged(client, clock):
    route = respx.post(f"{API}/generate").respond(500, json={"error": "boom"})
    with pytest.raises(InternalServerError, match="may have been charged") as info:
        await client.generate("x")
    assert route.call_count == 1
    assert info.value.may_have_been_charged is True
    assert clock.sleeps == []


def clock_time(clock):
    return datetime.fromtimestamp(clock.time(), tz=timezone.utc)


@pytest.mark.parametrize(
    ("answer", "error", "seen_id"),
    [
        (httpx.Response(500, json={"error": "boom"}), InternalServerError, None),
        (
            httpx.Response(500, json={"error": "failed", "generationId": "gen_500"}),
            InternalServerError,
            "gen_500",
        ),
        (httpx.ReadTimeout("slow"), APITimeoutError, None),
        (httpx.RemoteProtocolError("Server disconnected"), APIConnectionError, None),
        (httpx.Response(200, text="<html>ok</html>"), UnexpectedResponseError, None),
        (httpx.Response(200, json={"generationId": "gen_x"}), UnexpectedResponseError, "gen_x"),
    ],
    ids=["500", "500-with-id", "read-timeout", "dropped", "not-json", "no-images"],
)
@respx.mock
async def test_a_generate_that_may_have_been_charged_says_what_was_asked_and_when(
    client, clock, answer, error, seen_id
):
    respx.post(f"{API}/generate").mock(side_effect=[answer])
    asked = clock_time(clock)
    with pytest.raises(error) as info:
        await client.generate("a lemon", model="nanobanan-2", quantity=2)
    exc = info.value
    assert exc.may_have_been_charged is True
    assert (exc.prompt, exc.model, exc.mode) == ("a lemon", "nanobanan-2", "sync")
    assert exc.requested_at == asked
    assert exc.generation_id == seen_id


@respx.mock
async def test_a_submit_that_may_have_been_charged_says_so_too(client, clock):
    respx.post(f"{API}/generate").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={"success": True})]
    )
    for _ in range(2):
        with pytest.raises(NanoBananaError) as info:
            await client.submit("a pear")
        assert info.value.may_have_been_charged is True
        assert (info.value.prompt, info.value.model, info.value.mode) == ("a pear", None, "async")
        assert info.value.requested_at == clock_time(clock)


@respx.mock
async def test_an_error_that_charged_nothing_carries_the_request_too_but_says_not_charged(client):
    respx.post(f"{API}/generate").respond(402, json={"error": "Insufficient credits"})
    with pytest.raises(InsufficientCreditsError) as info:
        await client.generate("a plum")
    assert info.value.may_have_been_charged is False
    assert info.value.prompt == "a plum"


@respx.mock
async def test_a_sync_result_expires_15_days_after_the_request_at_the_earliest(client, clock):
    respx.post(f"{API}/generate").respond(json=SYNC_OK)
    asked = clock_time(clock)
    generation = await client.generate("x")
    assert generation.created_at is None  # a sync answer has no createdAt
    assert generation.expires_at == asked + timedelta(days=15)


@respx.mock
async def test_read_timeout_on_generate_is_never_resent(client):
    route = respx.post(f"{API}/generate").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError, match="may have been charged") as info:
        await client.generate("x")
    assert route.call_count == 1
    assert info.value.may_have_been_charged is True
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


@respx.mock
async def test_connection_dropped_after_sending_generate_is_never_resent(client):
    route = respx.post(f"{API}/generate").mock(
        side_effect=httpx.RemoteProtocolError("Server disconnected without sending a response.")
    )
    with pytest.raises(APIConnectionError, match="may have been charged"):
        await client.generate("x")
    assert route.call_count == 1


@respx.mock
async def test_connect_error_on_generate_is_resent_because_nothing_left(client, clock):
    route = respx.post(f"{API}/generate")
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, json=SYNC_OK)]
    assert (await client.generate("x")).id == "gen_1"
    assert route.call_count == 2
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= client.retry_policy.wait_initial


@respx.mock
async def test_503_on_submit_waits_retry_after_and_resends(client, clock):
    route = respx.post(f"{API}/generate")
    route.side_effect = [
        httpx.Response(
            503,
            json={"error": "Server is busy", "type": "server_busy", "activeTasks": 10},
            headers={"Retry-After": "5"},
        ),
        httpx.Response(
            200,
            json={
                "success": True,
                "async": True,
                "generationId": "gen_a",
                "message": "Generation started.",
                "creditsUsed": 1,
                "remainingCredits": 9,
            },
        ),
    ]
    job = await client.submit("x")
    assert job.id == "gen_a"
    assert (job.credits_used, job.remaining_credits) == (1, 9)
    assert clock.sleeps == [5.0]
    assert json.loads(route.calls.last.request.content)["mode"] == "async"


@respx.mock
async def test_503_without_retry_after_backs_off_with_jitter_until_patience_runs_out(clock):
    respx.post(f"{API}/generate").respond(
        503, json={"error": "busy", "type": "server_busy", "activeTasks": 7}
    )
    policy = nanobanana.RetryPolicy(attempts=1, patience=20.0)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, retry_policy=policy) as c:
        with pytest.raises(ServerBusyError) as info:
            await c.submit("x")
        # Our own jobs did not fill the cap (7): others' load, waited out, and no job kept.
        assert (c.governor_stats().tasks, c.governor_stats().task_limit) == (0, 7)
    assert info.value.active_tasks == 7
    assert info.value.refusals == len(clock.sleeps) + 1
    assert sum(clock.sleeps) == pytest.approx(20.0, abs=0.001)  # the last wait ends at it
    for n, wait in enumerate(clock.sleeps, start=1):
        assert 0 <= wait <= min(30.0, 0.5 * 2 ** (n - 1))


@respx.mock
@pytest.mark.parametrize("seed", range(5))
async def test_a_backoff_past_patience_is_cut_to_it_for_a_last_attempt(clock, seed):
    route = respx.post(f"{API}/generate").respond(503, json={"error": "busy", "activeTasks": 7})
    policy = nanobanana.RetryPolicy(attempts=1, patience=1.5, wait_initial=1.0)
    async with AsyncNanoBanana(
        api_key=KEY, base_url=API, clock=clock, retry_policy=policy, rng=random.Random(seed)
    ) as c:
        with pytest.raises(ServerBusyError) as info:
            await c.generate("x")
    # It gave up after 0.87 to 1.41 s when the next jittered wait would pass 1.5 s; now
    # that wait ends at 1.5 s, and the call tries once more there.
    assert sum(clock.sleeps) == pytest.approx(1.5)
    assert route.call_count == len(clock.sleeps) + 1 == info.value.refusals
    assert info.value.waited == pytest.approx(1.5)


@respx.mock
async def test_gets_retry_5xx_and_read_errors(client, clock):
    route = respx.get(f"{API}/credits")
    route.side_effect = [
        httpx.Response(500, json={"error": "x"}),
        httpx.ReadError("reset"),
        httpx.Response(200, json={"data": {"credits": 3}}),
    ]
    assert await client.credits() == 3
    assert route.call_count == 3
    assert len(clock.sleeps) == 2


@respx.mock
async def test_patience_stops_waiting_before_a_wait_that_would_pass_it(clock):
    respx.get(f"{API}/credits").respond(
        429, json={"error": "busy", "limit": 1, "active": 1}, headers={"Retry-After": "50"}
    )
    policy = nanobanana.RetryPolicy(attempts=10, patience=60.0)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, retry_policy=policy) as c:
        with pytest.raises(RateLimitError):
            await c.credits()
    assert clock.sleeps == [50.0]  # a second 50 s wait would pass the 60 s of patience


@respx.mock
async def test_retry_budget_in_time_stops_retrying_failures_before_a_long_wait(clock):
    respx.get(f"{API}/credits").respond(500, json={"error": "down"})
    policy = nanobanana.RetryPolicy(attempts=10, wait_initial=40.0, wait_max=40.0, timeout=60.0)
    async with AsyncNanoBanana(
        api_key=KEY, base_url=API, clock=clock, retry_policy=policy, rng=random.Random(3)
    ) as c:
        with pytest.raises(InternalServerError):
            await c.credits()
    assert sum(clock.sleeps) <= 60.0
    assert len(clock.sleeps) < 9


@respx.mock
async def test_unparseable_success_body_is_a_typed_error(client):
    respx.get(f"{API}/credits").respond(200, html="<html>proxy login</html>")
    with pytest.raises(UnexpectedResponseError, match="not JSON"):
        await client.credits()


@respx.mock
async def test_get_generation_parses_the_poll_shape(client):
    route = respx.get(f"{API}/generate", params={"id": "gen_9"}).respond(
        json={
            "data": {
                "id": "gen_9",
                "prompt": "p",
                "outputImageUrls": None,
                "modelUsed": "nano-banana",
                "processingStatus": "failed",
                "errorMessage": "Generation failed due to server error",
                "creditsUsed": 1,
                "createdAt": "2025-01-01T00:00:00.000Z",
            }
        }
    )
    generation = await client.get_generation("gen_9")
    assert route.called
    assert generation.status is GenerationStatus.FAILED
    assert generation.image_urls == ()
    assert generation.error_message == "Generation failed due to server error"
    assert generation.created_at is not None
    assert generation.created_at.year == 2025
    assert generation.remaining_credits is None


async def test_close_twice_is_harmless_and_calls_after_close_fail_clearly():
    client = AsyncNanoBanana(api_key=KEY, base_url=API)
    await client.aclose()
    await client.aclose()
    assert client.is_closed
    with pytest.raises(NanoBananaError, match="closed"):
        await client.credits()


@respx.mock
async def test_a_borrowed_http_client_is_used_and_not_closed():
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    async with httpx.AsyncClient() as http:
        async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
            await client.credits()
        assert not http.is_closed
    assert route.called


@respx.mock
async def test_debug_logs_one_line_per_request_and_retry_without_the_key(client, caplog):
    route = respx.get(f"{API}/credits")
    route.side_effect = [
        httpx.Response(429, json={"error": "busy", "limit": 1}, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"data": {"credits": 5}}),
    ]
    with caplog.at_level(logging.DEBUG, logger="nanobanana"):
        await client.credits()
    messages = [r.getMessage() for r in caplog.records if r.name == "nanobanana"]
    assert len(messages) == 3
    assert "GET /credits -> 429" in messages[0]
    assert "retrying GET /credits in 1.00 s after 429" in messages[1]
    assert "GET /credits -> 200" in messages[2]
    assert all(KEY not in m for m in messages)


@respx.mock
async def test_the_key_is_in_no_exception_text_or_repr(client):
    respx.get(f"{API}/credits").respond(401, json={"error": f"bad key {KEY[:5]}"})
    with pytest.raises(APIStatusError) as info:
        await client.credits()
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)
    assert KEY not in repr(info.value.response.request.headers)


async def test_a_client_used_from_a_second_event_loop_fails_clearly():
    client = AsyncNanoBanana(api_key=KEY, base_url="http://127.0.0.1:9/api/v1", max_retries=0)
    with pytest.raises(APIConnectionError):  # first loop: binds the client
        await client.credits()

    def other_loop():
        async def use():
            with pytest.raises(NanoBananaError, match="another event loop"):
                await client.credits()

        asyncio.run(use())

    await asyncio.to_thread(other_loop)
    await client.aclose()


@respx.mock
async def test_governor_keeps_an_account_limit_of_two_with_few_429s():
    limit = 2
    in_flight = 0
    peak = 0
    rejected = 0

    async def handler(request):
        nonlocal in_flight, peak, rejected
        if in_flight >= limit:
            rejected += 1
            return httpx.Response(
                429,
                json={
                    "error": "Too many",
                    "type": "concurrency_limit",
                    "limit": limit,
                    "active": in_flight,
                },
                headers={"Retry-After": "0"},
            )
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            in_flight -= 1
        return httpx.Response(200, json=SYNC_OK)

    respx.post(f"{API}/generate").mock(side_effect=handler)
    async with AsyncNanoBanana(api_key=KEY, base_url=API) as client:
        results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(20)))
        stats = client.governor_stats()
    assert len(results) == 20
    assert rejected <= 3
    assert peak == limit  # the limit was then used fully
    assert (stats.limit, stats.known, stats.active, stats.waiting) == (2, True, 0, 0)


def test_public_names_match_the_documented_api():
    documented = {
        "AsyncNanoBanana",
        "Generation",
        "GenerationStatus",
        "ProgressEvent",
        "Model",
        "Job",
        "NanoBananaError",
        "APIConnectionError",
        "APITimeoutError",
        "APIStatusError",
        "BadRequestError",
        "AuthenticationError",
        "InsufficientCreditsError",
        "PermissionDeniedError",
        "NotFoundError",
        "RateLimitError",
        "InternalServerError",
        "ServerBusyError",
        "GenerationFailedError",
        "ContentSafetyError",
        "JobTimeoutError",
        "BatchResult",  # the production surface (client.batch())
    }
    assert documented <= set(nanobanana.__all__)
    for name in nanobanana.__all__:
        assert hasattr(nanobanana, name)
        obj = getattr(nanobanana, name)
        if isinstance(obj, type):
            assert obj.__module__ == "nanobanana"


def test_error_tree_matches_the_documented_hierarchy():
    n = nanobanana
    assert issubclass(n.APITimeoutError, n.APIConnectionError)
    for cls in (
        n.BadRequestError,
        n.AuthenticationError,
        n.InsufficientCreditsError,
        n.PermissionDeniedError,
        n.NotFoundError,
        n.RateLimitError,
        n.InternalServerError,
        n.ServerBusyError,
    ):
        assert issubclass(cls, n.APIStatusError)
    for cls in (
        n.APIConnectionError,
        n.APIStatusError,
        n.GenerationFailedError,
        n.ContentSafetyError,
        n.JobTimeoutError,
    ):
        assert issubclass(cls, n.NanoBananaError)


@respx.mock
async def test_a_borrowed_http_client_gets_our_generous_timeout_unless_told_otherwise():
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    async with httpx.AsyncClient() as http:  # httpx's own default: 5 s
        async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
            await client.credits()
        assert route.calls.last.request.extensions["timeout"]["read"] >= 120
        async with AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, timeout=7.0
        ) as client:
            await client.credits()
        assert route.calls.last.request.extensions["timeout"]["read"] == 7.0


@respx.mock
async def test_a_borrowed_http_client_keeps_the_timeout_its_owner_chose():
    route = respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    chosen = httpx.Timeout(1.0, connect=0.5)
    async with httpx.AsyncClient(timeout=chosen) as http:
        async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
            await client.credits()
            assert route.calls.last.request.extensions["timeout"] == chosen.as_dict()
            # A copy keeps it too, unless it is given its own.
            await client.with_options(max_retries=0).credits()
            assert route.calls.last.request.extensions["timeout"] == chosen.as_dict()
            await client.with_options(timeout=9.0).credits()
            assert route.calls.last.request.extensions["timeout"]["read"] == 9.0
        async with AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, timeout=None
        ) as client:
            await client.credits()
        assert route.calls.last.request.extensions["timeout"]["read"] is None


@respx.mock
async def test_the_charge_warning_follows_a_full_stop(client):
    respx.post(f"{API}/generate").respond(500, json={"error": "Internal server error"})
    with pytest.raises(InternalServerError) as info:
        await client.generate("x")
    assert "Internal server error. The generation may have been charged" in str(info.value)


@respx.mock
async def test_closing_the_client_under_a_call_in_flight_is_a_typed_error(client, clock):
    async def close_then_drop(request):
        await client.aclose()
        raise httpx.ReadError("connection closed")

    route = respx.get(f"{API}/credits").mock(side_effect=close_then_drop)
    with pytest.raises(APIConnectionError, match="client was closed"):
        await client.credits()  # a GET: retried, but not on a closed client
    assert route.call_count == 1
    assert client.governor_stats().active == 0


@pytest.mark.parametrize("header", ["x-ratelimit-limit", "x-ratelimit-active"])
@respx.mock
async def test_digits_outside_ascii_in_rate_limit_headers_are_ignored(client, clock, header):
    # httpx reads header bytes as Latin-1: b"\xb2" is "²", which str.isdigit() accepts
    # and int() refuses.
    respx.get(f"{API}/credits").mock(
        side_effect=[
            httpx.Response(429, json={"error": "busy"}, headers=[(header.encode(), b"\xb2")]),
            httpx.Response(
                200, json={"data": {"credits": 7}}, headers=[(header.encode(), b"\xb9")]
            ),
        ]
    )
    assert await client.credits() == 7


@respx.mock
async def test_a_500_naming_its_generation_lets_the_caller_find_it(client):
    respx.post(f"{API}/generate").mock(
        return_value=httpx.Response(500, json={"error": "Upstream failed.", "generationId": "g_9"})
    )
    with pytest.raises(InternalServerError) as info:
        await client.generate("p")
    assert info.value.generation_id == "g_9"
    assert info.value.may_have_been_charged
    assert ".." not in str(info.value)
    assert str(info.value).startswith("500 Internal Server Error: Upstream failed. ")


@respx.mock
async def test_an_exception_text_ending_in_a_full_stop_gets_no_second_one(client):
    respx.get(f"{API}/credits").mock(side_effect=httpx.ConnectError("Connection refused."))
    client._requester.retry = nanobanana.RetryPolicy(attempts=1)
    with pytest.raises(APIConnectionError) as info:
        await client.credits()
    assert str(info.value) == "GET /credits failed: ConnectError: Connection refused."


@respx.mock
async def test_errors_keep_a_copy_of_the_request_without_the_key(client):
    respx.get(f"{API}/credits").mock(
        side_effect=[httpx.Response(401, text=f"bad key {KEY}"), httpx.ConnectError("down")]
    )
    client._requester.retry = nanobanana.RetryPolicy(attempts=1)
    with pytest.raises(AuthenticationError) as status_error:
        await client.credits()
    with pytest.raises(APIConnectionError) as connection_error:
        await client.credits()
    requests = [
        status_error.value.response.request,
        connection_error.value.request,
        connection_error.value.__cause__.request,
    ]
    for request in requests:
        assert request.headers["authorization"] == "Bearer [api key]"
        assert request.url == f"{API}/credits"
    assert KEY not in status_error.value.response.text


def test_a_polled_generation_expires_15_days_after_it_was_created():
    data = {"id": "g", "processingStatus": "completed", "createdAt": "2025-01-01T10:00:00.000Z"}
    generation = nanobanana.Generation.from_json(data)
    assert generation.expires_at == datetime(2025, 1, 16, 10, tzinfo=timezone.utc)
    # A createdAt without an offset is UTC too, so that it compares with aware times.
    naive = nanobanana.Generation.from_json({**data, "createdAt": "2025-01-01T10:00:00"})
    assert naive.created_at == generation.created_at
    assert naive.expires_at == generation.expires_at
    unknown = nanobanana.Generation.from_json({**data, "createdAt": "yesterday"})
    assert (unknown.created_at, unknown.expires_at) == (None, None)


@respx.mock
async def test_requests_of_one_path_share_one_parsed_url_and_params_still_apply(client):
    # httpx parses a URL given as text on every request; ours is parsed once per path
    # (Request() wraps it in a new httpx.URL that shares the parsed parts).
    build = client._requester._build
    first, second = (
        build("GET", "/credits", json_body=None, params=None, auth=True) for _ in range(2)
    )
    assert first.url._uri_reference is second.url._uri_reference
    assert str(first.url) == f"{API}/credits"
    poll = respx.get(f"{API}/generate").respond(
        200, json={"data": {"id": "g1", "processingStatus": "processing"}}
    )
    await client.get_generation("g1")
    await client.get_generation("g2")
    assert [str(call.request.url) for call in poll.calls] == [
        f"{API}/generate?id=g1",
        f"{API}/generate?id=g2",
    ]
