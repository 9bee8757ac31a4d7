"""Several OS processes share one key through a real redis-server, against the simulator.

The simulator serves over a loopback socket from a thread of the test process; the
workers (``fleet_worker.py``) are separate Python processes that share admission
through Redis. ``Simulator.peak_in_flight`` counts every request of the key the
server was handling at once, the ones it refused included.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio
from fleet_support import start_fleet

from nanobanana.fleet import RedisGovernor
from nanobanana.testing import Simulator
from redis_support import RedisServer


def statuses(sim, method="POST"):
    return [r.status for r in sim.requests if r.method == method and r.origin == "api"]


async def learn_the_limit(sim, redis_url, namespace, limit=2):
    """One client meets a 429 that states the limit: the whole fleet knows it from then."""
    sim.inject("429", method="POST", path="/generate", retry_after="0.01")
    async with sim.client(governor=RedisGovernor(redis_url, namespace=namespace)) as client:
        await client.generate("learn")
        assert (client.governor_stats().limit, client.governor_stats().known) == (limit, True)


async def test_eight_processes_sharing_a_key_never_pass_its_limit(redis_server, fleet_namespace):
    with Simulator(concurrency_limit=2, generation_time=0.1, credits=1000) as sim:
        await learn_the_limit(sim, redis_server.url, fleet_namespace)
        args = (sim.base_url, redis_server.url, fleet_namespace, "sync", "3")
        workers = await asyncio.to_thread(start_fleet, 8, *args)
        results = [await asyncio.to_thread(w.result) for w in workers]
        reports = [report for report, _ in results]
        assert [r["completed"] for r in reports] == [3] * 8
        assert all(r["errors"] == [] for r in reports)
        assert "".join(log for _, log in results) == ""  # Redis never seemed away
        assert sim.peak_in_flight() == 2  # never more than the limit at the server
        assert statuses(sim).count(429) == 1  # the one that stated the limit
        assert statuses(sim).count(200) == 25


async def test_four_processes_learning_the_limit_together_overshoot_by_one_step_at_most(
    redis_server, fleet_namespace
):
    with Simulator(concurrency_limit=2, generation_time=0.1, credits=1000) as sim:
        args = (sim.base_url, redis_server.url, fleet_namespace, "sync", "3")
        workers = await asyncio.to_thread(start_fleet, 4, *args)
        reports = [(await asyncio.to_thread(w.result))[0] for w in workers]
        assert [r["completed"] for r in reports] == [3] * 4
        assert sim.peak_in_flight() <= 3  # one probe above the limit, stated by its 429
        assert statuses(sim).count(429) <= 1
        prefix = RedisGovernor(redis_server.url, namespace=fleet_namespace).key_prefix(
            api_key=sim.api_key, base_url=sim.base_url
        )
    peek = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        learned = await peek.hgetall(prefix + "conf")
    finally:
        await peek.aclose()
    assert (learned["limit"], learned["known"]) == ("2", "1")  # the fleet learned it


async def test_async_jobs_of_several_processes_share_the_server_s_task_cap(
    redis_server, fleet_namespace
):
    with Simulator(max_async_tasks=3, generation_time=0.2, credits=1000) as sim:
        args = (sim.base_url, redis_server.url, fleet_namespace, "async", "3")
        workers = await asyncio.to_thread(start_fleet, 3, *args)
        reports = [(await asyncio.to_thread(w.result))[0] for w in workers]
        assert [r["completed"] for r in reports] == [3] * 3
        assert statuses(sim).count(503) <= 1  # the first says the cap; then nobody meets one
        assert statuses(sim).count(200) == 9
        assert all(r["stats"]["task_limit"] in (3, None) for r in reports)


async def test_a_killed_process_s_slots_come_back_within_one_lease(redis_server, fleet_namespace):
    with Simulator(concurrency_limit=2, credits=1000) as sim:
        await learn_the_limit(sim, redis_server.url, fleet_namespace)
        hold = sim.hold()
        args = (sim.base_url, redis_server.url, fleet_namespace, "sync", "2", "1.0")
        [doomed] = await asyncio.to_thread(start_fleet, 1, *args)
        await sim.wait_for_async(lambda: sim.in_flight() == 2, timeout=20)
        await asyncio.to_thread(doomed.kill)  # kill -9 while it holds both slots
        await sim.wait_for_async(lambda: sim.in_flight() == 0, timeout=20)
        hold.release()
        governor = RedisGovernor(redis_server.url, namespace=fleet_namespace, lease=1.0)
        prefix = governor.key_prefix(api_key=sim.api_key, base_url=sim.base_url)
        peek = redis.asyncio.Redis.from_url(redis_server.url)
        async with sim.client(governor=governor) as client:
            before = len(sim.requests)
            task = asyncio.create_task(client.generate("after the kill"))
            # It stands in Redis's queue, behind the two leases of the dead process.
            await sim.wait_for_async(lambda: client.governor_stats().waiting == 1)
            while not await peek.zcard(prefix + "queue"):
                await asyncio.sleep(0.01)
            assert await peek.zcard(prefix + "leases") == 2
            assert len(sim.requests) == before
            generation = await asyncio.wait_for(task, 10)  # the leases ran out
        await peek.aclose()
        assert generation.status == "completed"
        assert sim.peak_in_flight() == 2


async def test_redis_restarted_mid_run_loses_no_call(fleet_namespace):
    # Three rounds of 6 generations per worker: Redis up; Redis killed mid-round (the
    # workers fall back to their own governors, 429s are waited out); Redis back, empty.
    redis = RedisServer().start()
    try:
        with Simulator(concurrency_limit=2, generation_time=0.1, credits=1000) as sim:
            args = (sim.base_url, redis.url, fleet_namespace, "sync", "6", "2.0", "3")
            workers = await asyncio.to_thread(start_fleet, 3, *args)
            first = [await asyncio.to_thread(w.round_report) for w in workers]
            assert all(r["stats"]["shared"] for r in first)
            done = statuses(sim).count(200)
            for worker in workers:
                worker.go()
            await sim.wait_for_async(lambda: statuses(sim).count(200) >= done + 3, timeout=20)
            await asyncio.to_thread(redis.stop)  # with requests in flight
            second = [await asyncio.to_thread(w.round_report) for w in workers]
            assert not any(r["stats"]["shared"] for r in second)
            await asyncio.to_thread(redis.start)  # an empty Redis: leases, limit all gone
            for worker in workers:
                worker.go()
            results = [await asyncio.to_thread(w.result) for w in workers]
    finally:
        redis.stop()
    for report in [*first, *second, *(report for report, _ in results)]:
        assert (report["completed"], report["errors"]) == (6, [])
    for report, log in results:
        # One warning for the outage, then back to Redis.
        assert log.count("is unreachable") == 1, log
        assert log.count("is shared again") == 1, log
        assert report["stats"]["shared"] is True, log
    assert statuses(sim).count(200) == 54


PER_WORKER = 4


async def test_no_worker_starves(redis_server, fleet_namespace):
    # First come first served across processes: with one slot and four workers asking
    # at once, they take turns, rather than one process taking the slot again and again.
    # A worker keeps its place only if its next request is in Redis's queue before the
    # one granted after its own has been served: a generation's time. At 0.05 s a
    # worker descheduled that long on a busy machine lost its turn; 0.15 s is room
    # enough, and 4 each instead of 5 keeps the run about as short (2.4 s of serving).
    with Simulator(concurrency_limit=1, generation_time=0.15, credits=1000) as sim:
        await learn_the_limit(sim, redis_server.url, fleet_namespace, limit=1)
        args = (sim.base_url, redis_server.url, fleet_namespace, "sync", str(PER_WORKER))
        workers = await asyncio.to_thread(start_fleet, 4, *args)
        reports = [(await asyncio.to_thread(w.result))[0] for w in workers]
        prompts = [
            sim.generation(r.generation_id).prompt
            for r in sim.requests
            if r.method == "POST" and r.status == 200
        ]
        served = [p.split()[1] for p in prompts if p.startswith("worker")]
    assert [r["completed"] for r in reports] == [PER_WORKER] * 4
    assert sim.peak_in_flight() == 1
    assert len(served) == 4 * PER_WORKER
    # Once all four are in line, no worker gets more than a turn ahead of another:
    # they take turns (round robin), whoever asked first.
    joined = next(n for n in range(len(served)) if len(set(served[: n + 1])) == 4)
    for n in range(joined + 1, len(served) + 1):
        counts = Counter(served[:n])
        assert max(counts.values()) - min(counts.values()) <= 2, served
    window = Counter(served[joined : joined + 8])
    assert max(window.values()) - min(window.values()) <= 1, served
