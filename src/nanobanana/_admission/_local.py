"""The in-process governor: at most ``limit`` API requests in flight per client.

Each account may have only a few requests in flight (default 1; overview docs), and
exceeding it answers 429. Without a governor, ``asyncio.gather`` over 100 prompts is a
storm of 429s, and requests queue inside the connection pool, which is slow. So
requests wait here, first come first served (a request retried after a refusal goes
to the front: it already waited its turn), and only ``limit`` reach the network.

The limit is learned (`nanobanana._admission._learning`). A 429 within a known limit
comes from load this client cannot see: admission then pauses for the ``Retry-After``
(a cool-down), instead of sending more requests into more 429s.

Async tasks are admitted by `nanobanana._admission._tasks.TaskGate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanobanana._admission._api import GovernorStats, JobPoller, Slot, new_lease_id
from nanobanana._admission._learning import LimitLearner, proof_age
from nanobanana._admission._tasks import LocalLedger, TaskGate
from nanobanana._admission._waiters import Queue, Waiter

if TYPE_CHECKING:
    from nanobanana._admission._api import TaskReservation
    from nanobanana._clock import Clock

__all__ = ["LocalGovernor", "RequestGate"]


class RequestGate:
    """A FIFO limiter whose limit is learned while requests wait."""

    def __init__(self, *, max_concurrency: int | None, ceiling: int, clock: Clock) -> None:
        self.learner = LimitLearner.create(max_concurrency=max_concurrency, ceiling=ceiling)
        self._clock = clock
        self._held: dict[str, Slot] = {}
        self._max_active = 0
        self._waiters: Queue[Slot] = Queue()
        self._cool_until = 0.0
        self.fastest: float | None = None  # the quickest answer seen, in seconds
        self._answers = 0  # answers seen; a probe by age needs one since the last
        self._answers_at_probe = -1

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return self.learner.limit

    @property
    def active(self) -> int:
        """Requests in flight now."""
        return len(self._held)

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    @property
    def max_active(self) -> int:
        """The most requests that were ever in flight at once."""
        return self._max_active

    def held(self) -> list[Slot]:
        """The slots in flight now."""
        return list(self._held.values())

    def _room(self) -> bool:
        if len(self._held) >= self.learner.limit:
            return False
        return not (self._cool_until and self._clock.monotonic() < self._cool_until)

    def try_take(self, *, holds: bool) -> Slot | None:
        """A slot at once if nobody waits and there is room, else None."""
        if self._waiters or not self._room():
            return None
        return self._take(holds)

    async def acquire(self, *, retry: bool = False, holds: bool = False) -> Slot:
        """Wait for a slot. Cancellation while waiting takes no slot with it."""
        slot = self.try_take(holds=holds)
        if slot is not None:
            return slot
        waiter: Waiter[Slot] = Waiter(holds)
        self._waiters.add(waiter, front=retry)
        try:
            self._wake()
            while waiter.value is None:
                # The head watches a cool-down's end and when the requests in flight will
                # prove the limit; the others wait to be handed a slot.
                delay = None
                if waiter is self._waiters.head():
                    cooling = self._cool_until - self._clock.monotonic()
                    due = self._proof_due()
                    delays = [d for d in (cooling if cooling > 0 else None, due) if d is not None]
                    delay = min(delays) if delays else None
                    if delay is None and self._room():
                        # The cool-down ended since `_wake` last looked (the clock moves
                        # between two reads): take the slot now rather than nap forever.
                        self._wake()
                        continue
                await waiter.nap(self._clock, delay)
                self._wake()
        except BaseException:
            if waiter.value is not None:
                # The slot was handed over just as we were cancelled: pass it on.
                self.release(waiter.value)
            else:
                self._waiters.discard(waiter)
            raise
        return waiter.value

    def release(self, slot: Slot) -> None:
        """Give a slot back, probe up if it proved the limit, and hand slots on."""
        if self._held.pop(slot.lease, None) is None:
            return
        if slot.succeeded and slot.holds and not self.learner.known:
            self._probe(slot)
        self._wake()

    def adopt(self, slot: Slot) -> None:
        """Count ``slot`` (granted elsewhere) as in flight here."""
        self._held[slot.lease] = slot
        self._max_active = max(self._max_active, len(self._held))

    def answered(self, slot: Slot, *, refused: bool = False) -> None:
        """The server answered ``slot``: count it, and time it if it was quick.

        A refusal, or a request the server does not hold (a poll, a submit), takes about
        one round trip: the fastest of those bounds `proof_age` from below.
        """
        latency = self._clock.monotonic() - slot.granted_at
        quick = refused or not slot.holds
        if quick and (self.fastest is None or latency < self.fastest):
            self.fastest = latency
        self._answers += 1
        if not self.learner.known and (head := self._waiters.head()) is not None:
            head.wake()  # it may prove the limit now

    def _proof_due(self) -> float | None:
        """Probe up if `limit` requests in flight were all admitted; else when they will be.

        Returns the seconds until the youngest of them has been in flight long enough,
        or None when there is nothing to prove.
        """
        learner = self.learner
        if not learner.may_probe(waiting=bool(self._waiters)):
            return None
        if len(self._held) < learner.limit or self._answers <= self._answers_at_probe:
            # (No answer since the last probe: a lagging client may not have read the
            # 429 of that probe yet. The next answer, or release, looks again.)
            return None
        youngest = max(slot.granted_at for slot in self._held.values())
        due = youngest + proof_age(self.fastest) - self._clock.monotonic()
        if due > 0:
            return due
        learner.probe()
        self._answers_at_probe = self._answers
        return None

    def _probe(self, slot: Slot) -> None:
        now = self._clock.monotonic()
        half = (now - slot.granted_at) / 2
        held = sum(1 for other in self._held.values() if other.granted_at <= now - half)
        if self.learner.proves(level=slot.level, held=held, waiting=bool(self._waiters)):
            self.learner.probe()

    def _take(self, holds: bool) -> Slot:
        level = len(self._held) + 1
        slot = Slot(
            lease=new_lease_id(), level=level, granted_at=self._clock.monotonic(), holds=holds
        )
        self._held[slot.lease] = slot
        self._max_active = max(self._max_active, level)
        return slot

    def _wake(self) -> None:
        handed = False
        if self._waiters and not self.learner.known:
            self._proof_due()
        while self._waiters and self._room():
            waiter = self._waiters.pop()
            waiter.hand(self._take(bool(waiter.data)))
            handed = True
        watch = self._cool_until or not self.learner.known
        if handed and watch and (head := self._waiters.head()) is not None:
            head.wake()  # a new head: it watches the cool-down, or the proof of the limit

    def learn(self, limit: int) -> None:
        """The server stated the account's limit."""
        if self.learner.stated(limit):
            self._wake()

    def refused(self, slot: Slot, *, stated: int | None, retry_after: float | None) -> None:
        """A 429 for ``slot``: learn from our own overshoot, cool down for others' load."""
        own = self.learner.own_refusal(slot.level)
        if stated is not None:
            self.learn(stated)
        elif own:
            self.learner.refused(level=slot.level)
        if not own and retry_after:
            # The server said when: nobody of ours asks before. (Without a Retry-After,
            # only the refused request backs off: a guess must not stop everyone.)
            self._cool_until = max(self._cool_until, self._clock.monotonic() + retry_after)
            head = self._waiters.head()
            if head is not None:
                head.wake()


class LocalGovernor:
    """The in-process governor: a `RequestGate` and a `TaskGate` for one client."""

    def __init__(self, *, max_concurrency: int | None, ceiling: int, clock: Clock) -> None:
        self.requests = RequestGate(max_concurrency=max_concurrency, ceiling=ceiling, clock=clock)
        self.tasks = TaskGate(LocalLedger(clock=clock), clock=clock)

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return self.requests.limit

    def stats(self) -> GovernorStats:
        """A snapshot: limit, whether it is known, active, waiting, max active, tasks."""
        gate, learner = self.requests, self.requests.learner
        return GovernorStats(
            limit=learner.limit,
            known=learner.known,
            active=gate.active,
            waiting=gate.waiting,
            max_active=gate.max_active,
            tasks=self.tasks.ledger.count(),
            task_limit=self.tasks.ledger.cap,
            tasks_waiting=self.tasks.waiting,
        )

    async def acquire(self, *, retry: bool = False, holds: bool = False) -> Slot:
        """Wait for a slot (see `RequestGate.acquire`)."""
        return await self.requests.acquire(retry=retry, holds=holds)

    async def release(self, slot: Slot) -> None:
        """Give a slot back; never waits."""
        self.requests.release(slot)

    async def learn(self, limit: int) -> None:
        """The server stated the account's limit."""
        self.requests.learn(limit)

    async def on_success(self, slot: Slot) -> None:
        """Mark the slot's request as a success (its release may then probe up)."""
        slot.succeeded = True
        self.requests.answered(slot)

    async def on_rate_limited(
        self, slot: Slot, *, stated: int | None, retry_after: float | None
    ) -> None:
        """A 429 for ``slot``."""
        self.requests.answered(slot, refused=True)
        self.requests.refused(slot, stated=stated, retry_after=retry_after)

    def reserve_task(self, poll: JobPoller) -> TaskReservation:
        """Room for one async task (see `TaskGate`)."""
        return self.tasks.reserve(poll)

    async def job_seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw the job ``generation_id``."""
        await self.tasks.seen(generation_id, finished=finished)

    async def aclose(self) -> None:
        """Nothing runs in the background here."""
