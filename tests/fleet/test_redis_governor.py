"""The Redis governor in one process, against a real redis-server and the simulator."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest
import redis.asyncio

from nanobanana import AsyncNanoBanana, PollPolicy
from nanobanana.fleet import RedisGovernor
from nanobanana.testing import Simulator
from redis_support import free_port


@pytest.fixture
async def peek(redis_server):
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def keys_of(peek, namespace):
    return sorted(k.decode() for k in await peek.keys(f"{namespace}:*"))


async def queued_in_redis(peek, prefix, count):
    """Wait until Redis's queue holds ``count`` waiters (polled: it lives in Redis)."""
    with anyio.fail_after(10):
        while await peek.zcard(prefix + "queue") != count:
            await asyncio.sleep(0.01)


async def test_keys_are_namespaced_by_a_hash_never_the_key_with_a_cluster_hash_tag(
    redis_server, fleet_namespace, peek
):
    with Simulator(concurrency_limit=2, generation_time=0.05) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace)
        async with sim.client(governor=governor) as client:
            await asyncio.gather(*(client.generate(f"p{i}") for i in range(4)))
            keys = await keys_of(peek, fleet_namespace)
            values = [str(await peek.dump(key)) for key in keys]  # all Redis holds of ours
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        base_url = sim.base_url
    assert keys
    assert all(key.startswith(prefix) for key in keys)
    assert prefix.count("{") == 1
    assert prefix.endswith("}:")  # one hash tag: one Redis Cluster slot for the fleet
    assert sim.api_key not in "".join(keys) + "".join(values)
    # Another key, or another base URL, is another fleet.
    assert governor.key_prefix(api_key="nb_other", base_url=base_url) != prefix
    assert governor.key_prefix(api_key=sim.api_key, base_url="http://x/api/v1") != prefix
    assert "nb_test_key" not in repr(governor)


async def test_two_clients_share_one_limit_and_leave_nothing_behind(
    redis_server, fleet_namespace, peek
):
    with Simulator(concurrency_limit=1, generation_time=0.05) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace)
        async with sim.client(governor=governor) as one, sim.client(governor=governor) as two:
            await asyncio.gather(*(c.generate(f"p{i}") for i in range(3) for c in (one, two)))
            assert (two.governor_stats().limit, two.governor_stats().known) == (1, True)
            assert two.governor_stats().shared is True
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
    # Together they probed one step above the default of 1, once: its 429 said 1.
    assert sim.peak_in_flight() <= 2
    assert [r.status for r in sim.requests].count(429) <= 1
    assert await peek.zcard(prefix + "leases") == 0
    assert await peek.zcard(prefix + "queue") == 0


async def test_cancelling_waiters_and_holders_takes_no_slot_with_it(
    redis_server, fleet_namespace, peek
):
    with Simulator(concurrency_limit=1) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace)
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        async with sim.client(governor=governor) as client:
            with sim.hold():
                tasks = [asyncio.create_task(client.generate(f"p{i}")) for i in range(5)]
                await sim.wait_for_async(lambda: sim.in_flight() == 1)
                # The second one stands in Redis's queue (the others wait for its turn).
                await queued_in_redis(peek, prefix, 1)
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert await peek.zcard(prefix + "leases") == 0
            assert await peek.zcard(prefix + "queue") == 0
            stats = client.governor_stats()
            assert (stats.active, stats.waiting) == (0, 0)
            assert (await client.generate("after")).status == "completed"


async def test_a_stream_holds_its_shared_slot_until_it_is_closed(
    redis_server, fleet_namespace, peek
):
    with Simulator(concurrency_limit=1, generation_time=0.2) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace)
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        async with sim.client(governor=governor) as client:
            async with client.stream("a stream") as events:
                assert await peek.zcard(prefix + "leases") == 1
                async for _ in events:
                    pass
            assert await peek.zcard(prefix + "leases") == 0


async def test_unreachable_redis_falls_back_with_one_warning_and_loses_no_call(caplog):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Simulator(concurrency_limit=2, generation_time=0.02) as sim:
        governor = RedisGovernor(url, timeout=0.5, retry_interval=0.05)
        with caplog.at_level(logging.WARNING, logger="nanobanana"):
            async with sim.client(governor=governor) as client:
                results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(6)))
                stats = client.governor_stats()
    assert len(results) == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert stats.shared is False
    assert sim.peak_in_flight() <= 3  # this process's own governor kept the limit


async def test_a_redis_that_never_answers_does_not_hang_a_call(caplog):
    # A listening socket that accepts and never answers: every call times out.
    writers = []

    async def mute(reader, writer):
        writers.append(writer)
        await reader.read(1 << 20)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with Simulator() as sim:
            governor = RedisGovernor(f"redis://127.0.0.1:{port}/0", timeout=0.2)
            async with sim.client(governor=governor) as client:
                generation = await asyncio.wait_for(client.generate("x"), 10)
        assert generation.status == "completed"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def test_a_governor_url_needs_a_redis_scheme():
    with pytest.raises(ValueError, match="redis://"):
        AsyncNanoBanana(api_key="nb_x", governor="http://localhost:6379")
    with pytest.raises(TypeError, match="RedisGovernor"):
        AsyncNanoBanana(api_key="nb_x", governor=42)
    with pytest.raises(ValueError, match="lease"):
        RedisGovernor("redis://localhost", lease=0)


async def test_the_environment_variable_chooses_the_redis_governor(
    monkeypatch, redis_server, fleet_namespace
):
    monkeypatch.setenv("NANOBANANA_REDIS_URL", redis_server.url)
    with Simulator() as sim:
        async with sim.client() as client:
            await client.credits()
            assert client.governor_stats().shared is True
        async with sim.client(governor="local") as client:
            await client.credits()
            assert client.governor_stats().shared is False


def test_under_trio_the_client_admits_in_its_own_process(redis_server, caplog):
    import trio  # noqa: PLC0415

    async def main(sim):
        async with sim.client(governor=redis_server.url) as client:
            generation = await client.generate("on trio")
            return generation, client.governor_stats()

    with Simulator() as sim, caplog.at_level(logging.WARNING, logger="nanobanana"):
        generation, stats = trio.run(main, sim)
    assert generation.status == "completed"
    assert stats.shared is False
    assert ["needs asyncio" in r.getMessage() for r in caplog.records] == [True]


async def test_async_jobs_are_admitted_in_the_process_while_redis_is_away(caplog):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    quick = PollPolicy(first_delay=0.05, max_interval=0.1, jitter=0.0)
    with Simulator(max_async_tasks=2, generation_time=0.1) as sim:
        governor = RedisGovernor(url, timeout=0.5, retry_interval=0.05)
        with caplog.at_level(logging.WARNING, logger="nanobanana"):
            async with sim.client(governor=governor, poll_policy=quick) as client:

                async def one(i):
                    job = await client.submit(f"p{i}")
                    return await job.wait()

                results = await asyncio.gather(*(one(i) for i in range(6)))
                stats = client.governor_stats()
    assert len({g.id for g in results}) == 6
    assert [r.status for r in sim.requests].count(503) == 1  # the cap, learned here
    assert (stats.shared, stats.task_limit, stats.tasks) == (False, 2, 0)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


class HeldRenewals:
    """Holds each RENEW between the renewer's list of leases and Redis (as a slow pool may)."""

    def __init__(self, link, monkeypatch):
        self.taken = asyncio.Event()  # a renewal has its list of leases
        self.go = asyncio.Event()
        self.done = asyncio.Event()  # it reached Redis and came back
        run = link.run

        async def held(name, keys, args):
            if name != "RENEW":
                return await run(name, keys, args)
            self.taken.set()
            await self.go.wait()
            try:
                return await run(name, keys, args)
            finally:
                self.done.set()

        monkeypatch.setattr(link, "run", held)


async def test_a_renewal_that_reaches_redis_after_the_release_does_not_revive_the_slot(
    redis_server, fleet_namespace, peek, monkeypatch
):
    # As /tmp/audit-11/renew_race.py: RENEW re-added every lease it named, so a release
    # that overtook it left a ghost slot for a whole lease (with limit 1, a stalled fleet).
    with Simulator(concurrency_limit=1) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace, lease=0.3)
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        async with sim.client(governor=governor) as client:
            fleet = client._governor
            renewals = HeldRenewals(fleet._link, monkeypatch)
            slot = await fleet.acquire(holds=True)
            await renewals.taken.wait()  # the renewer named the lease, and is on its way
            await fleet.release(slot)  # the release reaches Redis first
            assert await peek.zcard(prefix + "leases") == 0
            renewals.go.set()
            await renewals.done.wait()
            assert await peek.zcard(prefix + "leases") == 0
            assert await peek.zcard(prefix + "granted") == 0


async def test_a_lease_gone_without_a_release_is_counted_again_by_its_renewal(
    redis_server, fleet_namespace, peek, monkeypatch
):
    # A Redis that restarted empty lost the leases of the requests still in flight: the
    # renewal counts them again, so the fleet does not send past the limit (and learn too
    # low a limit from the 429s).
    with Simulator(concurrency_limit=1) as sim:
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace, lease=0.3)
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        async with sim.client(governor=governor) as client:
            fleet = client._governor
            renewals = HeldRenewals(fleet._link, monkeypatch)
            slot = await fleet.acquire(holds=True)
            await renewals.taken.wait()
            await peek.delete(prefix + "leases", prefix + "granted")  # as an empty restart
            renewals.go.set()
            await renewals.done.wait()
            assert [m.decode() for m in await peek.zrange(prefix + "leases", 0, -1)] == [slot.lease]
            assert await peek.zcard(prefix + "granted") == 1
            await fleet.release(slot)
            assert await peek.zcard(prefix + "leases") == 0
