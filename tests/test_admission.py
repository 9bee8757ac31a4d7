"""The in-process governor: FIFO admission, learning the limit, cool-downs, async tasks."""

import asyncio

import pytest

from nanobanana import FakeClock, NotFoundError
from nanobanana._admission import LocalGovernor
from nanobanana._admission._learning import LimitLearner
from nanobanana._admission._local import RequestGate
from nanobanana._admission._tasks import LocalLedger, TaskGate


class ManualClock:
    """Time that moves only when the test says: a sleep ends when `advance` passes it."""

    def __init__(self):
        self.now = 1000.0
        self._moved = asyncio.Event()

    def time(self):
        return self.now

    def monotonic(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
        self._moved.set()
        self._moved = asyncio.Event()

    async def sleep(self, seconds):
        end = self.now + seconds
        while self.now < end:
            await self._moved.wait()


def gate(max_concurrency=None, clock=None):
    return RequestGate(max_concurrency=max_concurrency, ceiling=100, clock=clock or ManualClock())


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


async def test_fixed_limit_admits_exactly_that_many_and_queues_the_rest_fifo():
    gov = gate(2)
    order = []
    release = asyncio.Event()

    async def worker(i):
        slot = await gov.acquire()
        order.append(i)
        try:
            await release.wait()
        finally:
            gov.release(slot)

    tasks = [asyncio.create_task(worker(i)) for i in range(5)]
    await settle()
    assert order == [0, 1]
    assert (gov.active, gov.waiting) == (2, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (gov.active, gov.waiting, gov.max_active) == (0, 0, 2)


async def test_a_retry_goes_to_the_front_of_the_queue():
    gov = gate(1)
    first = await gov.acquire()
    order = []

    async def worker(name, retry):
        slot = await gov.acquire(retry=retry)
        order.append(name)
        gov.release(slot)

    tasks = [asyncio.create_task(worker("new", False))]
    await settle()
    tasks.append(asyncio.create_task(worker("retry", True)))
    await settle()
    gov.release(first)
    await asyncio.gather(*tasks)
    assert order == ["retry", "new"]


async def test_cancelled_waiter_takes_no_slot_with_it():
    gov = gate(1)
    slot = await gov.acquire()
    waiter = asyncio.create_task(gov.acquire())
    await settle()
    assert gov.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gov.waiting == 0
    gov.release(slot)
    assert gov.active == 0
    await gov.acquire()
    assert gov.active == 1


async def test_waiter_cancelled_after_being_handed_a_slot_passes_it_on():
    gov = gate(1)
    slot = await gov.acquire()
    first = asyncio.create_task(gov.acquire())
    second = asyncio.create_task(gov.acquire())
    await settle()
    gov.release(slot)  # hands the slot to `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert (gov.active, gov.waiting) == (1, 0)


async def test_unknown_limit_starts_at_the_documented_default_of_one():
    gov = LocalGovernor(max_concurrency=None, ceiling=100, clock=FakeClock())
    stats = gov.stats()
    assert (stats.limit, stats.known, stats.tasks, stats.task_limit) == (1, False, 0, None)


async def test_a_stated_limit_wakes_waiters_and_is_never_passed():
    gov = gate()
    slot = await gov.acquire(holds=True)
    waiters = [asyncio.create_task(gov.acquire(holds=True)) for _ in range(3)]
    await settle()
    gov.learn(3)
    await asyncio.gather(*waiters[:2])
    assert gov.active == 3
    slot.succeeded = True
    gov.release(slot)  # known: no probing beyond 3
    assert gov.limit == 3
    await waiters[2]
    assert gov.active == 3


def proves(learner, level, held, waiting=True):
    return learner.proves(level=level, held=held, waiting=waiting)


def test_the_learner_probes_one_proven_step_at_a_time():
    learner = LimitLearner.create(max_concurrency=None, ceiling=100)
    assert (learner.limit, learner.known) == (1, False)
    assert proves(learner, level=1, held=0)  # alone at limit 1: the server held it
    learner.probe()
    assert learner.limit == 2
    # Admitted under the old limit: proves nothing more (a client once had 4 in
    # flight for a limit of 2 because every such success raised it).
    assert not proves(learner, level=1, held=1)
    # At the new level, but beside a request sent too late to be surely held with it.
    assert not proves(learner, level=2, held=0)
    assert proves(learner, level=2, held=1)
    assert not proves(learner, level=2, held=1, waiting=False)  # nobody needs more


def test_a_refusal_without_a_stated_limit_ends_probing_one_below_it():
    learner = LimitLearner.create(max_concurrency=None, ceiling=100)
    learner.probe()
    learner.probe()
    assert learner.own_refusal(3)
    learner.refused(level=3)
    assert (learner.limit, learner.ceiling) == (2, 2)
    assert not proves(learner, level=2, held=1)


def test_a_user_cap_bounds_the_learned_limit_and_a_lower_stated_one_wins():
    learner = LimitLearner.create(max_concurrency=2, ceiling=100)
    assert (learner.limit, learner.known) == (2, True)
    learner.stated(10)
    assert learner.limit == 2
    learner.stated(1)
    assert learner.limit == 1


def test_max_concurrency_below_one_is_rejected():
    with pytest.raises(ValueError):
        LimitLearner.create(max_concurrency=0, ceiling=100)


async def test_fast_requests_never_raise_the_limit():
    # Polls and submits are answered in an instant: many of them "in flight" at the
    # client say nothing of the server's limit (a batch once raised it to 11 for 3).
    clock = ManualClock()
    gov = gate(clock=clock)
    for _ in range(20):
        slot = await gov.acquire(holds=False)
        waiter = asyncio.create_task(gov.acquire())
        await settle()
        slot.succeeded = True
        clock.advance(0.01)
        gov.release(slot)
        gov.release(await waiter)
    assert gov.limit == 1


async def advance(clock, seconds):
    clock.advance(seconds)
    await settle()


async def test_requests_in_flight_long_enough_were_admitted_and_prove_the_next_step():
    # The server refuses at once: requests unanswered after 0.25 s were admitted.
    clock = ManualClock()
    gov = gate(clock=clock)
    first = await gov.acquire(holds=True)
    waiters = [asyncio.create_task(gov.acquire(holds=True)) for _ in range(3)]
    await settle()
    await advance(clock, 0.2)
    assert (gov.limit, gov.active) == (1, 1)
    await advance(clock, 0.06)  # `first` is 0.26 s old, alone: 1 is proven
    assert (gov.limit, gov.active) == (2, 2)
    await advance(clock, 0.2)  # the second one is only 0.2 s old
    assert gov.limit == 2
    await advance(clock, 0.06)
    # Both held for 0.25 s, but no answer came since the last probe: a lagging client
    # might not have read that probe's 429 yet. Any answer settles it.
    assert gov.limit == 2
    gov.answered(first)
    await settle()
    assert (gov.limit, gov.active) == (3, 3)  # 2 is proven
    gov.learn(3)  # the server says 3 (say, the 429 of the next probe)
    await advance(clock, 1.0)
    assert (gov.limit, gov.active) == (3, 3)  # known: no more probing
    for slot in [first, *(w.result() for w in waiters[:2])]:
        gov.release(slot)
    gov.release(await waiters[2])


async def test_a_slow_link_makes_the_proof_wait_three_round_trips():
    clock = ManualClock()
    gov = gate(clock=clock)
    slot = await gov.acquire()  # a poll, say
    clock.advance(0.2)
    slot.succeeded = True
    gov.answered(slot)  # the fastest quick answer took 0.2 s: the proof needs 0.6 s
    gov.release(slot)
    held = await gov.acquire(holds=True)
    waiter = asyncio.create_task(gov.acquire(holds=True))
    await advance(clock, 0.5)
    assert gov.limit == 1
    await advance(clock, 0.11)
    assert gov.limit == 2
    gov.release(held)
    gov.release(await waiter)


async def test_a_success_beside_long_held_others_proves_the_next_step():
    # Generations shorter than the proof age: their ends prove the steps instead.
    clock = ManualClock()
    gov = gate(clock=clock)
    first = await gov.acquire(holds=True)
    waiters = [asyncio.create_task(gov.acquire(holds=True)) for _ in range(6)]
    await settle()
    await advance(clock, 0.2)
    first.succeeded = True
    gov.release(first)  # alone at level 1, with others waiting: proves it, limit 2
    await settle()
    assert gov.limit == 2
    second, third = waiters[0].result(), waiters[1].result()
    assert (second.level, third.level) == (1, 2)
    await advance(clock, 0.08)
    second.succeeded = True
    gov.release(second)  # admitted at level 1, below the limit: proves nothing more
    assert gov.limit == 2
    fourth = await waiters[2]
    await advance(clock, 0.02)
    third.succeeded = True
    gov.release(third)  # level 2, but `fourth` was sent 0.02 s before its 0.1 s ended
    assert gov.limit == 2
    fifth = await waiters[3]
    await advance(clock, 0.2)
    fourth.succeeded = True
    gov.release(fourth)  # level 2 beside `fifth`, sent 0.2 s of its 0.22 s before the end
    assert fourth.level == 2
    assert gov.limit == 3
    for task in waiters[4:]:
        task.cancel()
    gov.release(fifth)


async def test_a_429_within_a_known_limit_cools_admission_down_for_retry_after():
    clock = FakeClock()  # sleeps return at once, and are recorded
    gov = gate(2, clock=clock)
    refused = await gov.acquire()
    gov.refused(refused, stated=2, retry_after=5.0)  # others' load: we had 1 of 2
    gov.release(refused)
    waiter = asyncio.create_task(gov.acquire())
    await settle()
    assert waiter.done()  # FakeClock: the head naps 5 s (no real time), then is admitted
    assert clock.sleeps == [5.0]
    assert gov.limit == 2


class CreepingClock(ManualClock):
    """Every read moves time on by a second: a real clock read twice is never the same."""

    def monotonic(self):
        self.now += 1.0
        return self.now


async def test_a_cool_down_that_ends_between_two_looks_admits_the_waiter():
    # The head compared the clock with the cool-down's end once to hand out slots and
    # again to choose how long to nap; when it ended in between, the waiter napped with
    # no timer and nobody to wake it (seen under uvloop as a test hung forever).
    clock = CreepingClock()
    gov = gate(2, clock=clock)
    refused = await gov.acquire()
    # The cool-down ends 2.5 reads later: after the look that hands out slots, before
    # the one that chooses the nap.
    gov.refused(refused, stated=2, retry_after=2.5)
    gov.release(refused)
    waiter = asyncio.create_task(gov.acquire())
    await settle()
    assert waiter.done()
    gov.release(waiter.result())


# -- async tasks -------------------------------------------------------------------------


def task_gate(clock=None, **kwargs):
    clock = clock or FakeClock()
    return TaskGate(LocalLedger(clock=clock, **kwargs), clock=clock)


async def never(_):
    raise AssertionError("nothing to poll")


async def test_tasks_are_not_limited_before_a_503_states_the_cap_but_go_one_at_a_time():
    tasks = task_gate()
    await tasks.wait_room("a", never)
    waiter = asyncio.create_task(tasks.wait_room("b", never))
    await settle()
    assert not waiter.done()  # one submit in flight while the cap is unknown
    await tasks.start("a", "gen_a")
    await settle()
    assert waiter.done()
    assert tasks.ledger.count() == 2


async def test_a_503_learns_the_cap_and_says_whether_our_own_jobs_fill_it():
    tasks = task_gate()
    for i in range(2):
        await tasks.wait_room(f"r{i}", never)
        await tasks.start(f"r{i}", f"gen_{i}")
        await tasks.ledger.busy("none", 10)  # (a cap, so that the next one goes at once)
    await tasks.wait_room("r2", never)
    assert await tasks.ledger.busy("r2", 2) is True  # our two jobs fill a cap of two
    assert tasks.ledger.cap == 2
    assert await tasks.ledger.busy("r2", 5) is False  # a cap of five, two ours: others' load


async def full_gate(clock, poll, **kwargs):
    tasks = task_gate(clock, **kwargs)
    await tasks.ledger.busy("none", 1)  # the cap is 1
    await tasks.wait_room("r0", poll)
    await tasks.start("r0", "gen_0")
    return tasks


async def test_the_first_waiter_polls_the_job_due_first_and_a_finished_one_frees_room():
    clock = FakeClock()
    polled = []

    async def poll(generation_id):
        polled.append((generation_id, clock.monotonic()))
        await tasks.seen(generation_id, finished=len(polled) >= 3)

    start = clock.monotonic()
    tasks = await full_gate(clock, poll)
    await tasks.wait_room("r1", poll)  # waits: polls gen_0 until it is seen finished
    assert [g for g, _ in polled] == ["gen_0"] * 3
    # First at its expected end (2 s before any job was seen ending), then every 0.2 s.
    assert [round(t - start, 3) for _, t in polled] == [2.0, 2.2, 2.4]
    assert (tasks.ledger.count(), tasks.waiting) == (1, 0)
    # Seen finished at 2.4 s, last processing at 2.2 s: it took about 2.3 s, the new
    # estimate; polls of the next job come at 2.3 s, then every 0.23 s.
    await tasks.start("r1", "gen_1")  # at 2.4 s
    polled.clear()
    await tasks.wait_room("r2", poll)
    assert [round(t - start, 3) for _, t in polled] == [4.7, 4.93, 5.16]


async def test_a_job_nobody_polls_stops_counting_when_its_lease_runs_out():
    clock = FakeClock()
    tasks = await full_gate(clock, never, lease=60.0)
    clock.advance(61)
    assert tasks.ledger.count() == 0


async def test_a_job_that_is_not_found_when_polled_for_room_does_not_count():
    clock = FakeClock()

    async def poll(generation_id):
        raise NotFoundError.__new__(NotFoundError)

    tasks = await full_gate(clock, poll)
    await tasks.wait_room("r1", poll)
    assert tasks.ledger.count() == 1


async def test_a_submit_cancelled_while_waiting_for_room_takes_none_with_it():
    clock = FakeClock()
    gate_open = asyncio.Event()

    async def poll(generation_id):
        await gate_open.wait()

    tasks = await full_gate(clock, poll)
    waiter = asyncio.create_task(tasks.wait_room("r1", poll))
    await settle()
    assert tasks.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (tasks.waiting, tasks.ledger.count()) == (0, 1)
    await tasks.seen("gen_0", finished=True)
    assert tasks.ledger.count() == 0
