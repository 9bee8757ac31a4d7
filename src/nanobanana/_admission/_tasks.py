"""Async-task admission: at most the server's cap of our own jobs unfinished.

The server runs a limited number of async tasks at once, for all its users, and
answers 503 ``server_busy`` with ``activeTasks`` when it is full; the credits are
refunded (async-mode docs). Sending 200 submits into a cap of 10 is 190 refusals, and
giving up on them loses the batch. So the cap is learned from the first 503, at most
that many of our jobs count as unfinished, and further ``submit()`` calls queue here,
first come first served. Until a 503 has said the cap, one submit at a time is in
flight, so that the first 503 is the only one.

A job counts from its submit until a poll (``job.wait()``, ``job.refresh()``,
``client.get_generation()``) sees it completed or failed, or until its lease runs out:
every poll that sees it processing renews the lease, so only jobs nobody polls run out.

Room frees only when a poll sees a job finished, so while submits wait, the first of
them polls the job due first itself: at its expected end (learned from the jobs seen
finishing), then every tenth of that. Without it, a batch that submits everything
before waiting for anything would wait for leases to run out.

The counting is a `TaskLedger`: `LocalLedger` here, or the Redis one that every
process sharing the key counts in (`nanobanana._admission._redis`). `TaskGate` is the
queue and the polling in front of either.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import attrs

from nanobanana._admission._api import JobPoller, new_lease_id
from nanobanana._admission._waiters import Queue, Waiter
from nanobanana._errors import NanoBananaError, NotFoundError
from nanobanana._logs import emit

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from nanobanana._clock import Clock

__all__ = [
    "DEFAULT_TASK_LEASE",
    "LocalLedger",
    "LocalTaskReservation",
    "TaskGate",
    "TaskLedger",
]


#: How long a job counts without a poll: the docs' own example polls for about 3 minutes.
DEFAULT_TASK_LEASE = 180.0
#: How long a submit that may have started a job, unnamed, counts at most.
UNNAMED_LEASE = 60.0
#: The expected duration of a job before any was seen finishing (the first poll's delay).
FIRST_ESTIMATE = 2.0
#: Polls of a job due for its end come at this fraction of its expected duration...
HURRY_FRACTION = 0.1
#: ...but no closer than this, and no further apart than the docs' 3 s.
MIN_POLL_GAP = 0.05
MAX_POLL_GAP = 3.0


class TaskLedger(Protocol):
    """Where unfinished tasks are counted against the cap."""

    #: How often a waiting submit asks again though nothing here changed (None: never).
    recheck: float | None

    @property
    def cap(self) -> int | None:
        """The learned cap (None until a 503 states it)."""
        ...

    def count(self) -> int:
        """Tasks counted now (as last seen, for a shared ledger)."""
        ...

    async def take(self, key: str) -> bool:
        """Count ``key`` (a submit about to be sent) if there is room."""
        ...

    async def drop(self, key: str) -> None:
        """Stop counting ``key``."""
        ...

    async def keep(self, key: str, lease: float) -> None:
        """The submit of ``key`` may have started a job we cannot name: count it ``lease`` s."""
        ...

    async def start(self, key: str, generation_id: str) -> None:
        """The submit of ``key`` became the job ``generation_id``."""
        ...

    async def seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw ``generation_id``: finished frees its room, processing renews it."""
        ...

    async def busy(self, key: str, active_tasks: int | None) -> bool:
        """A 503 for ``key``: learn the cap; True when our jobs (without ``key``) fill it."""
        ...

    async def stranger(self) -> str | None:
        """A job counted by another process, polled longest ago (None: none known)."""
        ...


@attrs.define(kw_only=True)
class _Entry:
    job: bool
    expires: float


class LocalLedger:
    """Tasks counted in this process."""

    recheck: float | None = None

    def __init__(self, *, clock: Clock, lease: float = DEFAULT_TASK_LEASE) -> None:
        self._clock = clock
        self._lease = lease
        self._entries: dict[str, _Entry] = {}
        self._pending = 0  # submits counted that are not jobs yet
        self._cap: int | None = None

    @property
    def cap(self) -> int | None:
        """The learned cap."""
        return self._cap

    def _purge(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, e in self._entries.items() if e.job and e.expires <= now]:
            emit(
                logging.DEBUG,
                "async job %s was not polled within its lease; it no longer counts",
                key,
                event="task_expired",
                generation_id=key,
            )
            del self._entries[key]

    def count(self) -> int:
        """Tasks counted now."""
        self._purge()
        return len(self._entries)

    async def take(self, key: str) -> bool:
        """Count ``key`` if there is room."""
        self._purge()
        room = self._pending == 0 if self._cap is None else len(self._entries) < self._cap
        if room:
            self._entries[key] = _Entry(job=False, expires=0.0)
            self._pending += 1
        return room

    def _pop(self, key: str) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None and not entry.job:
            self._pending -= 1
        return entry

    async def drop(self, key: str) -> None:
        """Stop counting ``key``."""
        self._pop(key)

    async def keep(self, key: str, lease: float) -> None:
        """Count ``key`` as a job for ``lease`` seconds."""
        if self._pop(key) is not None:
            self._entries[key] = _Entry(job=True, expires=self._clock.monotonic() + lease)

    async def start(self, key: str, generation_id: str) -> None:
        """``key`` became the job ``generation_id``."""
        if self._pop(key) is not None:
            expires = self._clock.monotonic() + self._lease
            self._entries[generation_id] = _Entry(job=True, expires=expires)

    async def seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw ``generation_id``."""
        entry = self._entries.get(generation_id)
        if entry is None or not entry.job:
            return
        if finished:
            del self._entries[generation_id]
        else:
            entry.expires = self._clock.monotonic() + self._lease

    async def busy(self, key: str, active_tasks: int | None) -> bool:
        """Learn the cap; True when our other jobs fill it."""
        if active_tasks is not None and active_tasks >= 1:
            self._cap = active_tasks
        self._purge()
        others = len(self._entries) - (1 if key in self._entries else 0)
        return self._cap is not None and others >= self._cap

    async def stranger(self) -> None:
        """No other process counts here."""
        return


@attrs.define(kw_only=True)
class _Timing:
    started: float
    last_poll: float | None = None
    processing_seen: float | None = None


class TaskGate:
    """The queue of submits waiting for room, and the polls that make room."""

    def __init__(self, ledger: TaskLedger, *, clock: Clock) -> None:
        self.ledger = ledger
        self._clock = clock
        self._jobs: dict[str, _Timing] = {}  # our own jobs, for when to poll them
        self._waiters: Queue[str] = Queue()
        self._estimate: float | None = None
        self._stranger_polled = 0.0

    @property
    def waiting(self) -> int:
        """Submits queued for room."""
        return len(self._waiters)

    def reserve(self, poll: JobPoller) -> LocalTaskReservation:
        """Room for one task, as an async context manager."""
        return LocalTaskReservation(self, poll)

    def _changed(self) -> None:
        head = self._waiters.head()
        if head is not None:
            head.wake()  # room may have freed, or a job become due

    async def drop(self, key: str) -> None:
        """Give the room of ``key`` back."""
        await self.ledger.drop(key)
        self._changed()

    async def keep(self, key: str) -> None:
        """``key`` may have started a job nobody can poll: it counts for about its duration.

        That is twice the expected duration of a job, once some were seen ending, else
        `UNNAMED_LEASE` (generations take 10-60 s: sync-mode docs).
        """
        lease = UNNAMED_LEASE if self._estimate is None else min(UNNAMED_LEASE, 2 * self._estimate)
        await self.ledger.keep(key, lease)
        self._changed()

    async def start(self, key: str, generation_id: str) -> None:
        """The submit of ``key`` became ``generation_id``."""
        self._jobs[generation_id] = _Timing(started=self._clock.monotonic())
        await self.ledger.start(key, generation_id)
        self._changed()

    async def seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw ``generation_id``."""
        timing = self._jobs.get(generation_id)
        now = self._clock.monotonic()
        if timing is not None:
            timing.last_poll = now
            if finished:
                # It ended between the last poll that saw it processing and now.
                before = timing.processing_seen or timing.started
                sample = (before + now) / 2 - timing.started
                old = self._estimate
                self._estimate = sample if old is None else old * 0.7 + sample * 0.3
                del self._jobs[generation_id]
            else:
                timing.processing_seen = now
        await self.ledger.seen(generation_id, finished=finished)
        if finished:
            self._changed()

    def _gap(self) -> float:
        estimate = self._estimate if self._estimate is not None else FIRST_ESTIMATE
        return min(MAX_POLL_GAP, max(MIN_POLL_GAP, estimate * HURRY_FRACTION))

    def _due(self) -> tuple[str, float] | None:
        """Our job to poll next for room, and when."""
        estimate = self._estimate if self._estimate is not None else FIRST_ESTIMATE
        gap = self._gap()
        best: tuple[str, float] | None = None
        for generation_id, timing in self._jobs.items():
            when = timing.started + estimate
            if timing.last_poll is not None:
                when = max(when, timing.last_poll + gap)
            if best is None or when < best[1]:
                best = (generation_id, when)
        return best

    async def wait_room(self, key: str, poll: JobPoller, *, front: bool = False) -> None:
        """Wait until ``key`` has room. Cancellation while waiting takes no room with it."""
        if not self._waiters and await self.ledger.take(key):
            return
        waiter: Waiter[str] = Waiter(key)
        self._waiters.add(waiter, front=front)
        try:
            while True:
                if waiter is not self._waiters.head():
                    await waiter.nap(self._clock, None)
                    continue
                if await self.ledger.take(key):
                    break
                await self._make_room(waiter, poll)
        finally:
            self._waiters.discard(waiter)
            self._changed()  # the next one in line takes over

    async def _make_room(self, waiter: Waiter[str], poll: JobPoller) -> None:
        """As the first in line: poll the job due first, or nap until one is due."""
        now = self._clock.monotonic()
        due = self._due()
        recheck = self.ledger.recheck
        if due is None or due[1] > now:
            # Nothing of ours due now: a job of another process, if it is time for one.
            if self._stranger_polled + self._gap() <= now:
                stranger = await self.ledger.stranger()
                if stranger is not None:
                    self._stranger_polled = now
                    await self._poll(poll, stranger)
                    return
            delays = [d for d in (due and due[1] - now, recheck) if d is not None]
            if not delays and self.ledger.cap is not None:
                delays.append(DEFAULT_TASK_LEASE)  # jobs of ours whose lease may end
            await waiter.nap(self._clock, min(delays) if delays else None)
            return
        await self._poll(poll, due[0])

    async def _poll(self, poll: JobPoller, generation_id: str) -> None:
        timing = self._jobs.get(generation_id)
        if timing is not None:
            timing.last_poll = self._clock.monotonic()
        try:
            await poll(generation_id)
        except NotFoundError:
            # Not a job of this key after all: it does not count.
            self._jobs.pop(generation_id, None)
            await self.ledger.seen(generation_id, finished=True)
        except NanoBananaError as exc:
            emit(
                logging.DEBUG,
                "poll of %s for room failed (%s)",
                generation_id,
                type(exc).__name__,
                event="room_poll_failed",
                method="GET",
                path="/generate",
                error=type(exc).__name__,
                may_have_been_charged=False,
                generation_id=generation_id,
            )


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
            await self._gate.keep(self._key)
        else:
            await self._gate.drop(self._key)

    async def busy(self, active_tasks: int | None) -> bool:
        """Learn the cap from a 503; True when our own jobs fill it."""
        return await self._gate.ledger.busy(self._key, active_tasks)

    async def room(self) -> None:
        """Give the room back and wait, at the front, for a job to finish."""
        await self._gate.drop(self._key)
        await self._gate.wait_room(self._key, self._poll, front=True)

    async def started(self, generation_id: str) -> None:
        """The submit was accepted as ``generation_id``."""
        self._done = True
        await self._gate.start(self._key, generation_id)
