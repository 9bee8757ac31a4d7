"""client.stats(): counters of requests, retries, refusals, credits and queueing."""

import asyncio
import copy
import pickle
import threading

import attrs
import httpx
import pytest
import respx

from nanobanana import ClientStats, RateLimitError, ServerBusyError
from support import API

SYNC_OK = {
    "success": True,
    "generationId": "gen_1",
    "imageUrls": ["https://cdn.test/a.png"],
    "creditsUsed": 2,
    "remainingCredits": 98,
}
POLL = {
    "data": {
        "id": "gen_1",
        "processingStatus": "completed",
        "outputImageUrls": ["https://cdn.test/a.png"],
        "creditsUsed": 2,
    }
}


async def test_a_new_client_has_counted_nothing(client):
    stats = client.stats()
    assert isinstance(stats, ClientStats)
    assert stats == ClientStats(
        requests={},
        retries={},
        rate_limited=0,
        server_busy=0,
        credits_spent=0,
        credits_reserved=0,
        credits_remaining=None,
        maybe_charged=0,
        uncounted_charges=0,
        time_queued=0.0,
        in_flight=0,
        queued=0,
    )


async def test_a_snapshot_is_frozen_and_later_calls_do_not_change_it(client):
    stats = client.stats()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.rate_limited = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.requests["GET /credits"] = 1  # type: ignore[index]


@respx.mock
async def test_a_snapshot_pickles_and_deep_copies_equal_and_still_read_only(client):
    # Users ship stats to other processes (multiprocessing, Celery): they must pickle.
    respx.get(f"{API}/credits").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json={"data": {"credits": 1}}),
        ]
    )
    await client.credits()
    stats = client.stats()
    assert stats.requests == {"GET /credits": 2}
    assert stats.retries == {"connect": 1}
    unpickled = pickle.loads(pickle.dumps(stats))  # noqa: S301 - our own bytes
    for copied in (unpickled, copy.deepcopy(stats), copy.copy(stats)):
        assert copied == stats
        assert copied.requests == {"GET /credits": 2}
        assert hash(copied) == hash(stats)
        with pytest.raises(TypeError):
            copied.requests["GET /credits"] = 3  # type: ignore[index]
        with pytest.raises(AttributeError):
            copied.retries.clear()  # type: ignore[attr-defined]
    assert repr(stats.requests) == "FrozenCounts({'GET /credits': 2})"


def test_stats_built_from_plain_dicts_are_read_only_and_pickle_too():
    stats = ClientStats(
        requests={"POST /generate": 1},
        retries={},
        rate_limited=0,
        server_busy=0,
        credits_spent=0,
        credits_reserved=0,
        credits_remaining=None,
        maybe_charged=0,
        uncounted_charges=0,
        time_queued=0.0,
        in_flight=0,
        queued=0,
    )
    with pytest.raises(TypeError):
        stats.requests["POST /generate"] = 2  # type: ignore[index]
    assert pickle.loads(pickle.dumps(stats)) == stats  # noqa: S301 - our own bytes


@respx.mock
async def test_requests_are_counted_by_endpoint_each_attempt_once(client):
    respx.get(f"{API}/models").respond(json={"data": []})
    respx.get(f"{API}/credits").mock(
        side_effect=[
            httpx.Response(500, json={"error": "x"}),
            httpx.Response(200, json={"data": {"credits": 1}}),
        ]
    )
    respx.post(f"{API}/generate").respond(json=SYNC_OK)
    respx.get(f"{API}/generate").respond(json=POLL)
    await client.models()
    await client.credits()
    await client.generate("a")
    await client.generate("b")
    await client.get_generation("gen_1")
    assert client.stats().requests == {
        "GET /models": 1,
        "GET /credits": 2,
        "POST /generate": 2,
        "GET /generate": 1,
    }
    assert client.stats().credits_spent == 4


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (httpx.Response(429, json={"error": "busy"}, headers={"Retry-After": "1"}), "429"),
        (httpx.Response(503, json={"error": "busy"}), "503"),
        (httpx.Response(502, text="bad gateway"), "5xx"),
        (httpx.ConnectError("refused"), "connect"),
        (httpx.ReadError("reset"), "network"),
    ],
)
@respx.mock
async def test_retries_are_counted_by_reason(client, failure, reason):
    respx.get(f"{API}/credits").mock(
        side_effect=[failure, failure, httpx.Response(200, json={"data": {"credits": 1}})]
    )
    await client.credits()
    assert client.stats().retries == {reason: 2}


@respx.mock
async def test_429s_and_503s_are_counted_also_when_patience_runs_out(clock, client):
    # Refusals are waited out until the policy's patience runs out (2 s: one retry).
    policy = attrs.evolve(client.retry_policy, patience=2.0)
    client._requester.retry = client.retry_policy = policy
    respx.get(f"{API}/credits").respond(
        429, json={"error": "busy", "limit": 1}, headers={"Retry-After": "2"}
    )
    respx.post(f"{API}/generate").respond(
        503, json={"error": "busy", "activeTasks": 10}, headers={"Retry-After": "2"}
    )
    with pytest.raises(RateLimitError):
        await client.credits()
    with pytest.raises(ServerBusyError):
        await client.submit("x")
    stats = client.stats()
    assert (stats.rate_limited, stats.server_busy) == (2, 2)
    assert stats.retries == {"429": 1, "503": 1}
    assert stats.credits_spent == 0  # refusals charge nothing


@respx.mock
async def test_time_queued_in_flight_and_queued_come_from_the_governor(client, clock):
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def held(request):
        arrived.set()
        await release.wait()
        return httpx.Response(200, json={"data": {"credits": 1}})

    respx.get(f"{API}/credits").mock(side_effect=held)
    first = asyncio.ensure_future(client.credits())  # the account limit starts at 1
    await arrived.wait()
    second = asyncio.ensure_future(client.credits())
    while client.stats().queued == 0:
        await asyncio.sleep(0)
    stats = client.stats()
    assert (stats.in_flight, stats.queued) == (1, 1)
    clock.advance(4.5)  # the second waits 4.5 s for its slot
    release.set()
    await asyncio.gather(first, second)
    stats = client.stats()
    assert (stats.in_flight, stats.queued) == (0, 0)
    # The 4.5 s, plus any naps the queued request took on the fake clock (the governor
    # looks again now and then while it waits: those move a fake clock too).
    assert stats.time_queued == pytest.approx(4.5 + sum(clock.sleeps))


@respx.mock
async def test_stats_can_be_read_from_another_thread_while_requests_run(client):
    respx.get(f"{API}/credits").respond(json={"data": {"credits": 1}})
    stop = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def reader():
        try:
            while not stop.is_set():
                seen.append(sum(client.stats().requests.values()))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await asyncio.gather(*(client.credits() for _ in range(200)))
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
    assert not failures
    assert seen == sorted(seen)  # counters only grow
    assert client.stats().requests == {"GET /credits": 200}
