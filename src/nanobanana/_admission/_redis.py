"""The fleet governor: the account's limits shared through Redis by every process.

`FleetGovernor` implements the `Governor` protocol for one client. In front of Redis
it keeps two small in-process gates: ``max_concurrency`` (this process's own cap)
and a turn, so that one request of this process at a time stands in Redis's queue.
Processes therefore take turns first come first served, and a process with 1,000
requests queued costs Redis one waiter, not 1,000.

Each admitted request is a lease in Redis, renewed while it runs by one background
task per client, so that the slots of a process killed mid-request come back within
one lease. Every step is one Lua script (`nanobanana._admission._lua`); every Redis
call is bounded in time; a cancelled call cleans up after itself, shielded and bounded.

When Redis cannot be reached the governor says so once (a warning on the
``nanobanana`` logger), admits with this process's own governor (the limit last
learned carries over), and tries Redis again every ``retry_interval`` seconds; when
Redis answers, shared admission resumes (logged at INFO).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import anyio

from nanobanana._admission._api import GovernorStats, JobPoller, Slot, new_lease_id
from nanobanana._admission._learning import proof_age
from nanobanana._admission._local import LocalGovernor, RequestGate
from nanobanana._admission._redis_link import Link, RedisDownError, as_int
from nanobanana._admission._redis_tasks import RedisLedger
from nanobanana._admission._tasks import LocalTaskReservation, TaskGate
from nanobanana._logs import emit

if TYPE_CHECKING:
    from nanobanana._clock import Clock

__all__ = ["FleetGovernor"]


class FleetGovernor:
    """A `Governor` whose counts live in Redis (see the module docstring)."""

    def __init__(
        self,
        *,
        link: Link,
        prefix: str,
        lease: float,
        max_concurrency: int | None,
        ceiling: int,
        clock: Clock,
    ) -> None:
        self._link = link
        self._prefix = prefix
        self._keys = [
            prefix + name
            for name in ("leases", "granted", "queue", "alive", "seq", "conf", "cool", "released")
        ]
        self._lease = lease
        self._lease_ms = int(lease * 1000)
        self._ceiling = ceiling
        self._clock = clock
        # This process's own cap, then one turn at a time in Redis's queue.
        self._front = RequestGate(
            max_concurrency=max_concurrency or ceiling, ceiling=ceiling, clock=clock
        )
        self._turn = RequestGate(max_concurrency=1, ceiling=1, clock=clock)
        self._fallback = LocalGovernor(
            max_concurrency=max_concurrency, ceiling=ceiling, clock=clock
        )
        self._fronts: dict[str, Slot] = {}  # admitted slot -> its place in `_front`
        self._max_active = 0
        self._held: dict[str, Slot] = {}  # shared slots whose leases we renew
        self._ledger = RedisLedger(link, prefix, clock=clock, lease=lease)
        self._tasks = TaskGate(self._ledger, clock=clock)
        self._limit = 1
        self._known = False
        self._fastest: float | None = None  # the quickest answer seen (proof_age)
        self._fleet_active = 0
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._loop_checked = False

    def _check_loop(self) -> None:
        """Once, at the first use: redis-py's client needs asyncio (trio stays local)."""
        if self._loop_checked:
            return
        self._loop_checked = True
        if not _on_asyncio():
            self._link.disable()
            emit(
                logging.WARNING,
                "The Redis governor needs asyncio (redis-py's asyncio client); this event "
                "loop is not asyncio, so admission stays in this process.",
                event="redis_unsupported",
            )

    # -- stats ---------------------------------------------------------------------

    def stats(self) -> GovernorStats:
        """A snapshot; the shared figures are as last seen in Redis."""
        shared = not self._link.down
        fallback = self._fallback.requests
        return GovernorStats(
            limit=self._limit if shared else fallback.limit,
            known=self._known if shared else fallback.learner.known,
            active=len(self._fronts),
            waiting=self._front.active + self._front.waiting - len(self._fronts),
            max_active=self._max_active,
            tasks=self._ledger.count(),
            task_limit=self._ledger.cap,
            tasks_waiting=self._tasks.waiting,
            shared=shared,
        )

    def _seen(self, limit: Any, known: Any) -> None:
        self._limit, self._known = as_int(limit), bool(as_int(known))
        learner = self._fallback.requests.learner
        learner.limit, learner.known = min(self._limit, learner.cap), self._known

    # -- requests ------------------------------------------------------------------

    async def acquire(self, *, retry: bool = False, holds: bool = False) -> Slot:
        """Wait for a slot: this process's cap, then a turn in Redis's queue."""
        self._check_loop()
        front = await self._front.acquire(retry=retry, holds=holds)
        try:
            slot: Slot | None = None
            if self._link.usable():
                turn = await self._turn.acquire(retry=retry)
                try:
                    # Again with the turn: the call before may have found Redis away
                    # while this one waited; then it falls back at once rather than
                    # paying a timeout of its own (queued calls would pay one each).
                    if self._link.usable():
                        slot = await self._shared_acquire(retry=retry, holds=holds)
                finally:
                    self._turn.release(turn)
            if slot is None:
                slot = await self._fallback.acquire(retry=retry, holds=holds)
        except BaseException:
            self._front.release(front)
            raise
        self._fronts[slot.lease] = front
        self._max_active = max(self._max_active, len(self._fronts))
        return slot

    async def _shared_acquire(self, *, retry: bool, holds: bool) -> Slot | None:
        waiter = new_lease_id()  # also the name of the lease it is granted
        proof_ms = int(proof_age(self._fastest) * 1000)
        args = [self._prefix, waiter, "", self._lease_ms, 1, self._ceiling, int(retry), proof_ms]
        abandon = [self._prefix, waiter, "", 1, self._ceiling, self._lease_ms]
        try:
            while True:
                granted, active, limit, known, _, hint = await self._link.run(
                    "ACQUIRE", self._keys, args
                )
                self._seen(limit, known)
                level = as_int(active)
                if as_int(granted):
                    break
                # Block for less than a socket timeout equal to ours would allow.
                wait = min(max(as_int(hint) / 1000, 0.005), self._lease / 3, self._link.timeout / 2)
                handed = await self._link.blpop(self._prefix + "wake:" + waiter, wait)
                if handed is not None:
                    level = as_int(handed[1])  # a release handed us its slot
                    break
        except RedisDownError:
            # Redis just failed a call: the ABANDON would likely wait out a timeout too,
            # so no caller waits for it. (If it fails, what it would free, a place in
            # the queue or a slot handed to us, runs out with its lease.)
            self._link.cleanup_later("ABANDON", self._keys, abandon)
            return None
        except BaseException:
            if self._link.down:
                self._link.cleanup_later("ABANDON", self._keys, abandon)
            else:
                await self._link.cleanup("ABANDON", self._keys, abandon)
            raise
        slot = Slot(
            lease=waiter,
            level=level,
            granted_at=self._clock.monotonic(),
            holds=holds,
            shared=True,
        )
        self._held[waiter] = slot
        self._start_renewer()
        return slot

    async def release(self, slot: Slot) -> None:
        """Give a slot back: shielded, bounded; a failed release ends with its lease."""
        front = self._fronts.pop(slot.lease, None)
        try:
            if slot.shared:
                self._held.pop(slot.lease, None)
                proves = int(slot.holds and slot.succeeded and not self._known)
                args = [
                    self._prefix, slot.lease, proves, slot.level, 1, self._ceiling, self._lease_ms
                ]  # fmt: skip
                if self._link.down:
                    # Redis failed a call lately: the call that ends here does not wait
                    # to learn whether it answers again.
                    self._link.cleanup_later("RELEASE", self._keys, args)
                    return
                with anyio.CancelScope(shield=True):
                    try:
                        limit, known = await self._link.run("RELEASE", self._keys, args)
                    except RedisDownError:
                        pass
                    else:
                        self._seen(limit, known)
            else:
                await self._fallback.release(slot)
        finally:
            if front is not None:
                self._front.release(front)

    async def learn(self, limit: int) -> None:
        """The server stated the limit: tell every process (once per change)."""
        await self._fallback.learn(limit)
        if limit < 1 or (self._known and limit == self._limit) or not self._link.usable():
            return
        try:
            (learned,) = await self._link.run(
                "LEARN", self._keys, [self._prefix, limit, self._lease_ms]
            )
        except RedisDownError:
            return
        self._seen(learned, 1)

    def _answered(self, slot: Slot, *, refused: bool = False) -> None:
        # As `RequestGate.answered`: only quick answers time a round trip.
        latency = self._clock.monotonic() - slot.granted_at
        quick = refused or not slot.holds
        if quick and (self._fastest is None or latency < self._fastest):
            self._fastest = latency

    async def on_success(self, slot: Slot) -> None:
        """The request of ``slot`` succeeded (its release may probe up)."""
        slot.succeeded = True
        self._answered(slot)
        if not slot.shared:
            await self._fallback.on_success(slot)

    async def on_rate_limited(
        self, slot: Slot, *, stated: int | None, retry_after: float | None
    ) -> None:
        """A 429: learn from our overshoot, or cool every process down."""
        self._answered(slot, refused=True)
        if not slot.shared:
            await self._fallback.on_rate_limited(slot, stated=stated, retry_after=retry_after)
            return
        args = [
            self._prefix,
            slot.level,
            stated if stated is not None else -1,
            int(retry_after * 1000) if retry_after is not None else -1,
            1,
            self._ceiling,
        ]
        try:
            limit, known, _ = await self._link.run("REFUSED", self._keys, args)
        except RedisDownError:
            await self._fallback.on_rate_limited(slot, stated=stated, retry_after=retry_after)
            return
        self._seen(limit, known)

    # -- async tasks ---------------------------------------------------------------

    def reserve_task(self, poll: JobPoller) -> LocalTaskReservation:
        """Room for one async task, counted in Redis."""
        self._check_loop()
        return self._tasks.reserve(poll)

    async def job_seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw a job (of any process of the fleet)."""
        await self._tasks.seen(generation_id, finished=finished)

    # -- leases --------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """Renew our leases every third of a lease, while we hold any."""
        while self._held or self._ledger.reserved:
            await asyncio.sleep(self._lease / 3)
            leases = list(self._held)
            try:
                if leases:
                    renew_keys = [*self._keys[:2], self._keys[7]]
                    await self._link.run("RENEW", renew_keys, [self._lease_ms, *leases])
                await self._ledger.renew()
            except RedisDownError:
                continue

    async def aclose(self) -> None:
        """Stop renewing and close the connection if we opened it."""
        if self._closed:
            return
        self._closed = True
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(renewer, return_exceptions=True)
        await self._link.close()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
