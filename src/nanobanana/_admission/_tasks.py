"""Async-task admission in one process: at most the server's cap of our own jobs unfinished.

The server runs a limited number of async tasks at once, for all its users, and
answers 503 ``server_busy`` with ``activeTasks`` when it is full; the credits are
refunded (async-mode docs). Sending 200 submits into a cap of 10 is 190 refusals, and
giving up on them loses the batch. So `TaskGate` learns the cap from the first 503 and
keeps at most that many of this client's jobs unfinished, queueing further
``submit()`` calls first come first served. Until a 503 has said the cap, one submit
at a time is in flight, so that the first 503 is the only one.

A job counts from its submit until a poll (``job.wait()``, ``job.refresh()``,
``client.get_generation()``) sees it completed or failed, or until its lease runs out:
the lease is renewed by every poll that sees it processing, so only jobs nobody polls
run out. A room frees only when a poll sees a job finished, so while submits wait,
the first of them polls the job due first itself: at its expected end (learned from
the jobs seen finishing), then at a tenth of that interval. Without it, a batch that
submits everything before waiting for anything would wait for leases to run out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from nanobanana._admission._api import JobPoller, new_lease_id
from nanobanana._admission._waiters import Queue, Waiter
from nanobanana._errors import NanoBananaError, NotFoundError

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from nanobanana._clock import Clock

__all__ = ["DEFAULT_TASK_LEASE", "LocalTaskReservation", "TaskGate"]

log = logging.getLogger("nanobanana")

#: How long a job counts without a poll: the docs' own example polls for about 3 minutes.
DEFAULT_TASK_LEASE = 180.0
#: The expected duration of a job before any was seen finishing (the first poll's delay).
FIRST_ESTIMATE = 2.0
#: Polls of a job due for its end come at this fraction of its expected duration...
HURRY_FRACTION = 0.1
#: ...but no closer than this, and no further apart than the docs' 3 s.
MIN_POLL_GAP = 0.05
MAX_POLL_GAP = 3.0


@attrs.define(kw_only=True)
class _Task:
    started: float
    expires: float
    job: bool = False
    last_poll: float | None = None
    processing_seen: float | None = None


class TaskGate:
    """Counts this client's unfinished async tasks against the learned cap."""

    def __init__(self, *, clock: Clock, lease: float = DEFAULT_TASK_LEASE) -> None:
        self._clock = clock
        self._lease = lease
        self._tasks: dict[str, _Task] = {}
        self._pending = 0  # reservations whose submit has not become a job yet
        self._waiters: Queue[str] = Queue()
        self.cap: int | None = None
        self._estimate: float | None = None

    @property
    def count(self) -> int:
        """Unfinished tasks counted now."""
        self._purge()
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Submits queued for room."""
        return len(self._waiters)

    def reserve(self, poll: JobPoller) -> LocalTaskReservation:
        """Room for one task, as an async context manager."""
        return LocalTaskReservation(self, poll)

    # -- room ------------------------------------------------------------------

    def _purge(self) -> None:
        now = self._clock.monotonic()
        expired = [key for key, task in self._tasks.items() if task.job and task.expires <= now]
        for key in expired:
            log.debug("async job %s was not polled within its lease; it no longer counts", key)
            del self._tasks[key]

    def _room(self) -> bool:
        self._purge()
        if self.cap is None:
            return self._pending == 0
        return len(self._tasks) < self.cap

    def _take(self, key: str) -> None:
        now = self._clock.monotonic()
        self._tasks[key] = _Task(started=now, expires=now + self._lease)
        self._pending += 1

    def drop(self, key: str) -> None:
        """Give the room of ``key`` back."""
        task = self._tasks.pop(key, None)
        if task is not None and not task.job:
            self._pending -= 1
        self._wake()

    def keep(self, key: str) -> None:
        """The submit of ``key`` may have started a job we cannot name: count it for a lease."""
        task = self._tasks.get(key)
        if task is not None and not task.job:
            task.job = True
            self._pending -= 1
            self._wake()

    def start(self, key: str, generation_id: str) -> None:
        """The submit of ``key`` became the job ``generation_id``."""
        task = self._tasks.pop(key, None)
        if task is None:
            return
        if not task.job:
            self._pending -= 1
        task.job = True
        task.started = self._clock.monotonic()
        task.expires = task.started + self._lease
        self._tasks[generation_id] = task
        self._wake()

    def seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw ``generation_id``: finished frees its room, processing renews its lease."""
        task = self._tasks.get(generation_id)
        if task is None or not task.job:
            return
        now = self._clock.monotonic()
        task.last_poll = now
        if not finished:
            task.processing_seen = now
            task.expires = now + self._lease
            return
        # It ended between the last poll that saw it processing and now.
        before = task.processing_seen if task.processing_seen is not None else task.started
        sample = (before + now) / 2 - task.started
        self._estimate = sample if self._estimate is None else self._estimate * 0.7 + sample * 0.3
        del self._tasks[generation_id]
        self._wake()

    def busy(self, key: str, active_tasks: int | None) -> bool:
        """A 503 for the submit of ``key``: learn the cap; True when our own jobs fill it."""
        if active_tasks is not None and active_tasks >= 1:
            self.cap = active_tasks
        others = len(self._tasks) - (1 if key in self._tasks else 0)
        return self.cap is not None and others >= self.cap

    def _grant(self) -> None:
        handed = False
        while self._waiters and self._room():
            waiter = self._waiters.pop()
            self._take(str(waiter.data))
            waiter.hand(str(waiter.data))
            handed = True
        if handed and (head := self._waiters.head()) is not None:
            head.wake()  # a new head: it polls for room now

    def _wake(self) -> None:
        """Hand out room, and have the head look again (a job started or ended)."""
        self._grant()
        head = self._waiters.head()
        if head is not None:
            head.wake()

    # -- waiting, and polling while waiting ------------------------------------

    def _due(self) -> tuple[str, float] | None:
        """The job to poll next for room, and when."""
        estimate = self._estimate if self._estimate is not None else FIRST_ESTIMATE
        gap = min(MAX_POLL_GAP, max(MIN_POLL_GAP, estimate * HURRY_FRACTION))
        best: tuple[str, float] | None = None
        for key, task in self._tasks.items():
            if not task.job:
                continue
            when = task.started + estimate
            if task.last_poll is not None:
                when = max(when, task.last_poll + gap)
            if best is None or when < best[1]:
                best = (key, when)
        return best

    def _next_expiry(self) -> float | None:
        ends = [task.expires for task in self._tasks.values() if task.job]
        return min(ends) - self._clock.monotonic() if ends else None

    async def wait_room(self, key: str, poll: JobPoller, *, front: bool = False) -> None:
        """Wait until ``key`` has room. Cancellation while waiting takes no room with it."""
        if not self._waiters and self._room():
            self._take(key)
            return
        waiter: Waiter[str] = Waiter(key)
        self._waiters.add(waiter, front=front)
        try:
            self._grant()
            while waiter.value is None:
                if waiter is not self._waiters.head():
                    await waiter.nap(self._clock, None)
                    continue
                due = self._due()
                if due is None:
                    await waiter.nap(self._clock, self._next_expiry())
                else:
                    job, when = due
                    delay = when - self._clock.monotonic()
                    if delay > 0:
                        await waiter.nap(self._clock, delay)
                    else:
                        await self._poll(poll, job)
                self._grant()
        except BaseException:
            if waiter.value is not None:
                self.drop(key)  # handed room just as we were cancelled: pass it on
            else:
                self._waiters.discard(waiter)
                head = self._waiters.head()
                if head is not None:
                    head.wake()
            raise

    async def _poll(self, poll: JobPoller, generation_id: str) -> None:
        task = self._tasks.get(generation_id)
        if task is not None:
            task.last_poll = self._clock.monotonic()
        try:
            await poll(generation_id)
        except NotFoundError:
            self._tasks.pop(generation_id, None)  # not ours after all: it does not count
        except NanoBananaError as exc:
            log.debug("poll of %s for room failed (%s)", generation_id, type(exc).__name__)


class LocalTaskReservation:
    """Room for one async task in a `TaskGate` (see `TaskReservation`)."""

    def __init__(self, gate: TaskGate, poll: JobPoller) -> None:
        self._gate = gate
        self._poll = poll
        self._key = f"submit-{new_lease_id()}"
        self._done = False
        self.sent = False

    async def __aenter__(self) -> Self:
        await self._gate.wait_room(self._key, self._poll)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        self._done = True
        if exc is not None and self.sent and getattr(exc, "may_have_been_charged", True):
            self._gate.keep(self._key)
        else:
            self._gate.drop(self._key)

    async def busy(self, active_tasks: int | None) -> bool:
        """Learn the cap from a 503; True when our own jobs fill it."""
        return self._gate.busy(self._key, active_tasks)

    async def room(self) -> None:
        """Give the room back and wait, at the front, for a job to finish."""
        self._gate.drop(self._key)
        await self._gate.wait_room(self._key, self._poll, front=True)

    async def started(self, generation_id: str) -> None:
        """The submit was accepted as ``generation_id``."""
        self._done = True
        self._gate.start(self._key, generation_id)
