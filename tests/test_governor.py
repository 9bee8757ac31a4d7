import asyncio

import pytest

from nanobanana._governor import Governor


async def test_fixed_limit_admits_exactly_that_many_and_queues_the_rest_fifo():
    gov = Governor(max_concurrency=2, ceiling=100)
    order = []
    release = asyncio.Event()

    async def worker(i):
        await gov.acquire()
        order.append(i)
        try:
            await release.wait()
        finally:
            gov.release()

    tasks = [asyncio.create_task(worker(i)) for i in range(5)]
    while len(order) < 2:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == [0, 1]
    assert gov.stats().active == 2
    assert gov.stats().waiting == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    stats = gov.stats()
    assert (stats.active, stats.waiting, stats.max_active) == (0, 0, 2)


async def test_cancelled_waiter_takes_no_slot_with_it():
    gov = Governor(max_concurrency=1, ceiling=100)
    await gov.acquire()
    waiter = asyncio.create_task(gov.acquire())
    await asyncio.sleep(0)
    assert gov.stats().waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gov.stats().waiting == 0
    gov.release()
    assert gov.stats().active == 0
    await gov.acquire()  # the slot is free again
    assert gov.stats().active == 1


async def test_waiter_cancelled_after_being_handed_a_slot_passes_it_on():
    gov = Governor(max_concurrency=1, ceiling=100)
    await gov.acquire()
    first = asyncio.create_task(gov.acquire())
    second = asyncio.create_task(gov.acquire())
    await asyncio.sleep(0)
    gov.release()  # hands the slot to `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # got the slot that `first` gave back
    assert gov.stats().active == 1
    assert gov.stats().waiting == 0


async def test_unknown_limit_starts_at_the_documented_default_of_one():
    gov = Governor(max_concurrency=None, ceiling=100)
    assert gov.stats().limit == 1
    assert gov.stats().known is False


async def test_learning_a_limit_wakes_waiters_and_stops_probing():
    gov = Governor(max_concurrency=None, ceiling=100)
    await gov.acquire()
    waiters = [asyncio.create_task(gov.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    gov.learn(3)
    await asyncio.gather(*waiters[:2])
    assert gov.stats().active == 3
    gov.on_success()  # known: no probing beyond 3
    assert gov.stats().limit == 3
    for _ in range(3):
        gov.release()
    await waiters[2]
    gov.release()


async def test_probing_raises_the_limit_by_one_per_success_while_requests_wait():
    gov = Governor(max_concurrency=None, ceiling=100)
    await gov.acquire()
    waiters = [asyncio.create_task(gov.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    gov.on_success()
    assert gov.stats().limit == 2
    gov.on_success()
    assert gov.stats().limit == 3
    await asyncio.gather(*waiters[:2])
    assert gov.stats().active == 3
    gov.on_rate_limited()  # overshoot without a stated limit: back off below it
    assert gov.stats().limit == 2
    for _ in range(3):
        gov.release()
    await waiters[2]
    gov.release()


async def test_no_probing_when_nobody_waits():
    gov = Governor(max_concurrency=None, ceiling=100)
    await gov.acquire()
    gov.on_success()
    assert gov.stats().limit == 1
    gov.release()


async def test_user_cap_bounds_the_learned_limit():
    gov = Governor(max_concurrency=2, ceiling=100)
    gov.learn(10)
    assert gov.stats().limit == 2
    gov.learn(1)
    assert gov.stats().limit == 1


def test_max_concurrency_below_one_is_rejected():
    with pytest.raises(ValueError):
        Governor(max_concurrency=0, ceiling=100)
