"""The Redis governor when Redis stops answering: calls fall back, none waits in line for it.

A Redis that stops answering (a frozen host, a mute socket) costs a timeout per call
made to it. Calls queued behind the one that found out must not each pay their own:
they fall back to this process's governor at once. The tests count the timeouts paid
(the link's failures, or the connections a mute server accepted), not the wall clock.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from nanobanana._admission._redis_link import Link
from nanobanana._clock import SystemClock
from nanobanana.fleet import RedisGovernor
from nanobanana.testing import Simulator
from redis_support import RedisServer

CALLS = 20


def count_failures(client, monkeypatch):
    """The link's failed Redis calls (each one waited up to a timeout, or failed at once)."""
    link = client._governor._link
    failures: list[str] = []
    failed = link._failed

    def counted(exc):
        failures.append(type(exc).__name__)
        return failed(exc)

    monkeypatch.setattr(link, "_failed", counted)
    return failures


async def test_calls_queued_behind_a_mute_redis_fall_back_without_a_timeout_each(monkeypatch):
    # A listening socket that accepts and never answers: each Redis call made to it
    # takes a connection of its own (the one before was cut by the timeout) and waits
    # for the whole timeout. Queued calls each paid one for ACQUIRE and one for the
    # ABANDON that cleaned up after it, one after another: 40 connections, 8 s here.
    accepted = []

    async def mute(reader, writer):
        accepted.append(writer)
        await reader.read(1 << 20)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with Simulator(concurrency_limit=2, generation_time=0.02, credits=1000) as sim:
            # Tried again only after a minute: within this test, Redis is tried once.
            governor = RedisGovernor(
                f"redis://127.0.0.1:{port}/0", timeout=0.2, retry_interval=60.0
            )
            async with sim.client(governor=governor) as client:
                failures = count_failures(client, monkeypatch)
                results = await asyncio.gather(
                    *(client.generate(f"p{i}") for i in range(CALLS)), return_exceptions=True
                )
                stats = client.governor_stats()
        assert [getattr(r, "status", r) for r in results] == ["completed"] * CALLS
        assert stats.shared is False
        # One ACQUIRE timed out; its ABANDON ran in the background. Nothing else went
        # to Redis: the 19 others fell back as soon as they had the turn.
        assert failures == ["TimeoutError"] * len(failures)
        assert 1 <= len(failures) <= 2
        assert len(accepted) <= 2
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_redis_frozen_mid_run_costs_the_queued_calls_no_timeout_each(
    monkeypatch, fleet_namespace
):
    # As /tmp/audit-11/stall.py: 20 gathered calls, 2 of them holding shared slots and
    # one waiting in Redis's queue when Redis is SIGSTOPped. Before the fix each queued
    # call paid ACQUIRE's timeout and ABANDON's one after another (68.8 s at timeout=2
    # for what took 2.3 s with Redis up).
    server = RedisServer().start()
    try:
        with Simulator(concurrency_limit=2, generation_time=0.2, credits=1000) as sim:
            governor = RedisGovernor(
                server.url, namespace=fleet_namespace, timeout=0.5, retry_interval=60.0
            )
            async with sim.client(governor=governor) as client:
                await client.generate("learn the limit")
                failures = count_failures(client, monkeypatch)
                tasks = [asyncio.create_task(client.generate(f"p{i}")) for i in range(CALLS)]
                await sim.wait_for_async(lambda: sim.in_flight() == 2)
                assert client.governor_stats().shared is True
                server.freeze()
                try:
                    results = await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    server.thaw()
                stats = client.governor_stats()
    finally:
        server.stop()
    assert [getattr(r, "status", r) for r in results] == ["completed"] * CALLS
    assert stats.shared is False
    # The call waiting in Redis's queue finds it frozen; the two holders' releases and
    # the renewals go on in the background. A handful at most, not 2 per queued call.
    assert 1 <= len(failures) <= 6, failures  # (and a renewal, on a slow machine)


@pytest.mark.parametrize("owned", [False, True])
async def test_redis_answering_again_drops_idle_connections_only_of_a_pool_of_ours(
    redis_server, fleet_namespace, owned
):
    # A borrowed redis.asyncio.Redis is its owner's: its idle connections stay
    # connected. Our own pool drops them (they are dead after a restart).
    client = redis.asyncio.Redis.from_url(redis_server.url)
    link = Link(
        client=client,
        owned=owned,
        where="test",
        timeout=2.0,
        retry_interval=0.01,
        clock=SystemClock(),
    )
    prefix = f"{fleet_namespace}:{{x}}:"
    keys = [prefix + name for name in ("leases", "granted", "queue", "alive", "seq", "conf")]
    try:
        await client.ping()
        [idle] = client.connection_pool._available_connections
        link._failed(OSError("gone"))  # an outage; the next call answers
        assert link.down
        await link.run("LEARN", [*keys, prefix + "cool"], [prefix, 2, 1000])
        assert not link.down
        assert idle.is_connected is not owned
    finally:
        await client.aclose()
