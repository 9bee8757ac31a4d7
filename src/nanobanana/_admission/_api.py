"""What the client needs of a governor, and the values it hands out.

A governor decides when a request may be sent (the account's limit on requests in
flight, overview docs) and when a ``submit()`` may start another async task (the
server's task cap, async-mode docs). It has two backends behind one small `Governor`
protocol, chosen once when the client is made: this process only
(`nanobanana._admission._local`), or every process sharing the API key through Redis
(`nanobanana._admission._redis`). Callers never ask which one they have.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "DEFAULT_ACCOUNT_LIMIT",
    "Governor",
    "GovernorStats",
    "JobPoller",
    "Slot",
    "TaskReservation",
    "new_lease_id",
]

DEFAULT_ACCOUNT_LIMIT = 1  # overview docs: "each account allows only 1 concurrent request"

#: Polls one job for the governor (the client's ``GET /generate?id=``).
JobPoller = Callable[[str], Awaitable[Any]]

_PROCESS = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def new_lease_id() -> str:
    """A lease id unique across processes and hosts (a random process tag and a counter)."""
    return f"{_PROCESS}-{next(_COUNTER)}"


@attrs.frozen(kw_only=True)
class GovernorStats:
    """A snapshot of a client's governor, from ``client.governor_stats()``.

    Attributes:
        limit: how many API requests may be in flight now (the account's limit, as
            far as it is known; shared by every process when a fleet governor is used).
        known: whether the server stated the limit (or ``max_concurrency`` set it),
            rather than it being learned by probing.
        active: this client's requests in flight.
        waiting: this client's requests queued for a slot.
        max_active: the most of this client's requests that were ever in flight at once.
        tasks: this client's async jobs counted as unfinished (see `task_limit`).
        task_limit: the server's cap on async tasks, once a ``503`` stated it (None
            before).
        tasks_waiting: ``submit()`` calls queued until one of the jobs finishes.
        shared: whether the counts are shared through Redis right now (False for the
            in-process governor, and while Redis is unreachable).
    """

    limit: int
    known: bool
    active: int
    waiting: int
    max_active: int
    tasks: int = 0
    task_limit: int | None = None
    tasks_waiting: int = 0
    shared: bool = False


@attrs.define(eq=False, kw_only=True)
class Slot:
    """One admitted request, held from ``acquire`` to ``release``.

    Attributes:
        lease: its id (a Redis lease, when shared).
        level: how many requests were in flight when it was admitted, itself included.
        granted_at: when it was admitted (the client's monotonic clock).
        holds: whether the server holds it for long (a sync or stream generation):
            only such a request, succeeding, shows that the server accepts more at once.
        succeeded: set when the answer was a success.
        shared: whether Redis granted it (False: this process's governor did).
    """

    lease: str
    level: int
    granted_at: float
    holds: bool = False
    succeeded: bool = False
    shared: bool = False


class TaskReservation(Protocol):
    """Room for one async task, from ``async with governor.reserve_task(poll)``.

    Entering waits, first come first served, until this client's unfinished jobs are
    below the server's task cap. Leaving gives the room back unless `started` turned
    it into a job (or the request may have started one: then it counts until its lease
    runs out).
    """

    sent: bool

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def busy(self, active_tasks: int | None) -> bool:
        """A 503 answered the submit: learn the cap; True when our own jobs fill it."""
        ...

    async def room(self) -> None:
        """After `busy` said True: wait, at the front of the queue, for a job to finish."""
        ...

    async def started(self, generation_id: str) -> None:
        """The submit was accepted: the room now belongs to the job ``generation_id``."""
        ...


class Governor(Protocol):
    """Admission for one client: requests in flight, and async tasks unfinished."""

    def stats(self) -> GovernorStats:
        """A snapshot (`GovernorStats`); never waits."""
        ...

    async def acquire(self, *, retry: bool = False, holds: bool = False) -> Slot:
        """Wait for a slot, first come first served; ``retry`` goes to the front.

        Cancellation while waiting takes no slot with it.
        """
        ...

    async def release(self, slot: Slot) -> None:
        """Give a slot back (bounded in time, and also when cancelled)."""
        ...

    async def learn(self, limit: int) -> None:
        """The server stated the account's limit (429 body or ``X-RateLimit-Limit``)."""
        ...

    async def on_success(self, slot: Slot) -> None:
        """The request of ``slot`` was answered with a success."""
        ...

    async def on_rate_limited(
        self, slot: Slot, *, stated: int | None, retry_after: float | None
    ) -> None:
        """The request of ``slot`` was refused with 429."""
        ...

    def reserve_task(self, poll: JobPoller) -> TaskReservation:
        """Room for one async task; ``poll`` checks a job while waiting for room."""
        ...

    async def job_seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw the job: finished (completed or failed) frees its room."""
        ...

    async def aclose(self) -> None:
        """Stop background work and give back what is held (the client is closing)."""
        ...
