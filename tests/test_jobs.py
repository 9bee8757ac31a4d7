import random

import anyio
import httpx
import pytest
import respx

from nanobanana import (
    APIConnectionError,
    AsyncNanoBanana,
    AuthenticationError,
    GenerationFailedError,
    GenerationStatus,
    InternalServerError,
    JobTimeoutError,
    NotFoundError,
    PollPolicy,
    RetryPolicy,
)
from support import API, KEY


def poll(status, urls=None, error=None):
    data = {
        "id": "gen_1",
        "prompt": "p",
        "outputImageUrls": urls,
        "modelUsed": "nano-banana",
        "processingStatus": status,
        "creditsUsed": 1,
        "createdAt": "2025-01-01T00:00:00.000Z",
    }
    if error:
        data["errorMessage"] = error
    return httpx.Response(200, json={"data": data})


SUBMITTED = httpx.Response(
    200,
    json={
        "success": True,
        "async": True,
        "generationId": "gen_1",
        "message": "started",
        "creditsUsed": 1,
        "remainingCredits": 9,
    },
)

NO_JITTER = PollPolicy(jitter=0.0)


@respx.mock
async def test_wait_polls_on_the_policy_schedule_until_completed(client, clock):
    respx.post(f"{API}/generate").mock(return_value=SUBMITTED)
    route = respx.get(f"{API}/generate", params={"id": "gen_1"})
    route.side_effect = [
        poll("processing"),
        poll("processing"),
        poll("completed", ["https://cdn.test/1.png"]),
    ]
    job = await client.submit("p")
    generation = await job.wait(poll_policy=NO_JITTER)
    assert generation.status is GenerationStatus.COMPLETED
    assert generation.image_urls == ("https://cdn.test/1.png",)
    assert route.call_count == 3
    assert clock.sleeps == [2.0, 3.0, 3.0]


def test_default_schedule_is_never_chattier_than_the_docs_by_more_than_one_poll():
    # Docs (async mode): first poll after 5 s, then every 3 s.
    delays = PollPolicy(jitter=0.0).delays(random.Random(0))
    t, ours = 0.0, []
    for _ in range(60):
        t += next(delays)
        ours.append(t)
    docs = [5.0 + 3.0 * i for i in range(60)]
    for horizon in range(1, 180):
        assert sum(p <= horizon for p in ours) <= sum(p <= horizon for p in docs) + 1
    assert ours[0] < docs[0]  # a quick job is noticed sooner


def test_jitter_only_lengthens_delays():
    policy = PollPolicy(jitter=0.5)
    delays = policy.delays(random.Random(3))
    first = next(delays)
    rest = [next(delays) for _ in range(50)]
    assert 2.0 <= first <= 3.0
    assert all(3.0 <= d <= 4.5 for d in rest)


@respx.mock
async def test_wait_on_a_resumed_job_polls_at_once(client, clock):
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=poll("completed", ["https://cdn.test/1.png"])
    )
    generation = await client.job("gen_1").wait()
    assert generation.id == "gen_1"
    assert clock.sleeps == [0.0]


@respx.mock
async def test_wait_counts_time_already_spent_since_submitting(client, clock):
    respx.post(f"{API}/generate").mock(return_value=SUBMITTED)
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(return_value=poll("completed", []))
    job = await client.submit("p")
    clock.advance(1.5)
    await job.wait(poll_policy=NO_JITTER)
    assert clock.sleeps == [0.5]


@respx.mock
async def test_failed_generation_raises_with_its_message_and_id(client):
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=poll("failed", error="Generation failed due to server error")
    )
    with pytest.raises(GenerationFailedError, match="server error") as info:
        await client.job("gen_1").wait()
    assert info.value.generation_id == "gen_1"


@respx.mock
async def test_wait_times_out_with_the_id_to_resume(client, clock):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=poll("processing")
    )
    start = clock.monotonic()
    with pytest.raises(JobTimeoutError, match="gen_1") as info:
        await client.job("gen_1").wait(timeout=10, poll_policy=NO_JITTER)
    assert info.value.generation_id == "gen_1"
    assert clock.monotonic() - start == pytest.approx(10.0)
    assert route.call_count == 5  # a resumed job polls at once, then at 3, 6, 9 and 10
    assert clock.sleeps == [0.0, 3.0, 3.0, 3.0, 1.0]


@respx.mock
async def test_wait_honours_retry_after_on_429_between_polls(client, clock):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"})
    route.side_effect = [
        httpx.Response(
            429, json={"error": "busy", "limit": 1, "active": 1}, headers={"Retry-After": "4"}
        ),
        poll("completed", ["https://cdn.test/1.png"]),
    ]
    generation = await client.job("gen_1").wait(poll_policy=NO_JITTER)
    assert generation.status is GenerationStatus.COMPLETED
    assert clock.sleeps == [0.0, 4.0]


@respx.mock
async def test_a_retry_after_beyond_the_deadline_ends_the_wait_as_a_timeout(client, clock):
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "30"})
    )
    with pytest.raises(JobTimeoutError):
        await client.job("gen_1").wait(timeout=10)
    assert clock.sleeps == [0.0]  # did not sleep 30 s past a 10 s deadline


@respx.mock
async def test_policy_timeout_applies_when_wait_gets_none(clock):
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(return_value=poll("processing"))
    policy = PollPolicy(jitter=0.0, timeout=7.0)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, poll_policy=policy) as c:
        with pytest.raises(JobTimeoutError):
            await c.job("gen_1").wait()
    assert sum(clock.sleeps) == pytest.approx(7.0)


def test_job_repr_shows_the_id_but_not_the_client():
    client = AsyncNanoBanana(api_key=KEY, base_url=API)
    client._closed = True
    text = repr(client.job("gen_77"))
    assert "gen_77" in text
    assert KEY not in text


@pytest.mark.parametrize("bad", ["", "   ", None, 5])
def test_job_rejects_an_empty_id(bad):
    client = AsyncNanoBanana(api_key=KEY, base_url=API)
    client._closed = True
    with pytest.raises(ValueError):
        client.job(bad)


def rate_limited(retry_after="1"):
    return httpx.Response(
        429, json={"error": "busy", "limit": 1, "active": 1}, headers={"Retry-After": retry_after}
    )


PASSING_FAILURES = {
    "429": rate_limited,
    "503": lambda: httpx.Response(503, json={"error": "busy", "type": "server_busy"}),
    "500": lambda: httpx.Response(500, json={"error": "oops"}),
    "connect": lambda: httpx.ConnectError("refused"),
    "read timeout": lambda: httpx.ReadTimeout("slow"),
}


@pytest.mark.parametrize("failure", PASSING_FAILURES)
@respx.mock
async def test_a_wait_outlasts_more_failed_polls_than_one_call_retries(client, clock, failure):
    # Ten failures in a row: more than the 4 attempts of one call, fewer than the wait's
    # 600 s allow. The wait goes on polling; only the deadline would end it.
    route = respx.get(f"{API}/generate", params={"id": "gen_1"})
    route.side_effect = [PASSING_FAILURES[failure]() for _ in range(10)] + [
        poll("completed", ["https://cdn.test/1.png"])
    ]
    generation = await client.job("gen_1").wait(poll_policy=NO_JITTER)
    assert generation.status is GenerationStatus.COMPLETED
    assert route.call_count == 11
    assert client.governor_stats().active == 0


@respx.mock
async def test_after_a_poll_refused_with_retry_after_the_next_poll_waits_that_long(client, clock):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"})
    route.side_effect = [rate_limited("7") for _ in range(4)] + [poll("completed", [])]
    # No retries and no patience: every 429 reaches the wait.
    client._requester.retry = RetryPolicy(attempts=1, patience=0)
    await client.job("gen_1").wait(poll_policy=NO_JITTER)
    assert route.call_count == 5
    assert clock.sleeps == [0.0, 7.0, 7.0, 7.0, 7.0]  # never the 3 s schedule


@respx.mock
async def test_a_wait_that_keeps_failing_ends_at_its_deadline_with_the_last_error(client, clock):
    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=httpx.Response(500, json={"error": "oops"})
    )
    with pytest.raises(JobTimeoutError) as info:
        await client.job("gen_1").wait(timeout=30, poll_policy=NO_JITTER)
    assert isinstance(info.value.__cause__, InternalServerError)
    assert sum(clock.sleeps) == pytest.approx(30.0)


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (404, NotFoundError)])
@respx.mock
async def test_a_poll_refused_for_good_ends_the_wait_at_once(client, clock, status, error):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=httpx.Response(status, json={"error": "no"})
    )
    with pytest.raises(error):
        await client.job("gen_1").wait()
    assert route.call_count == 1


@respx.mock
async def test_wait_with_timeout_zero_polls_once_and_returns_a_finished_job(client, clock):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=poll("completed", ["https://cdn.test/1.png"])
    )
    generation = await client.job("gen_1").wait(timeout=0)
    assert generation.image_urls == ("https://cdn.test/1.png",)
    assert route.call_count == 1


@respx.mock
async def test_wait_with_timeout_zero_on_a_running_job_polls_once_then_times_out(client, clock):
    route = respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(
        return_value=poll("processing")
    )
    with pytest.raises(JobTimeoutError):
        await client.job("gen_1").wait(timeout=0)
    assert route.call_count == 1


@respx.mock
async def test_a_poll_the_server_never_answers_ends_at_the_deadline(clock):
    # The fake clock says how long the wait may last; the hung poll is cut by a real
    # timer at that time (0.2 s here), not after the 180 s read timeout and its retries.
    polls = []

    async def hang(request):
        polls.append(request)
        await anyio.sleep_forever()

    respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(side_effect=hang)
    policy = PollPolicy(jitter=0.0, grace=0.05)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock) as client:
        with pytest.raises(JobTimeoutError), anyio.fail_after(10):
            await client.job("gen_1").wait(timeout=0.2, poll_policy=policy)
        assert len(polls) == 1
        assert client.governor_stats().active == 0


@respx.mock
async def test_closing_the_client_during_a_wait_ends_it_with_a_typed_error(client, clock):
    async def close_then_drop(request):
        await client.aclose()
        raise httpx.ReadError("connection closed")

    route = respx.get(f"{API}/generate", params={"id": "gen_1"}).mock(side_effect=close_then_drop)
    with pytest.raises(APIConnectionError, match="client was closed"):
        await client.job("gen_1").wait()
    assert route.call_count == 1


@pytest.mark.parametrize(
    "policy",
    [
        lambda: PollPolicy(max_interval=0),
        lambda: PollPolicy(first_delay=-1),
        lambda: PollPolicy(growth=0.5),
        lambda: PollPolicy(timeout=-5),
        lambda: PollPolicy(grace=0),
        lambda: RetryPolicy(wait_initial=-1),
        lambda: RetryPolicy(timeout=-1),
    ],
)
def test_policies_refuse_values_that_would_poll_in_a_loop_or_sleep_backwards(policy):
    with pytest.raises(ValueError):
        policy()
