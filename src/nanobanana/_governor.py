"""The concurrency governor: at most ``limit`` API requests in flight per client.

Each account may have only a few requests in flight (default 1; overview docs), and
exceeding it answers 429. Without a governor, ``asyncio.gather`` over 100 prompts is a
storm of 429s, and requests queue inside httpcore's pool, which is slow. So requests
wait here, first come first served, and only ``limit`` reach the connection pool.

Without ``max_concurrency`` the limit starts at the documented default (1) and is
learned: a 429 body's ``limit`` or an ``X-RateLimit-Limit`` header sets it; until then
each success while requests are queued probes one higher (a probe that overshoots costs
one 429, which charged nothing and is retried after ``Retry-After``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import anyio

__all__ = ["Governor", "GovernorStats"]

DEFAULT_ACCOUNT_LIMIT = 1  # overview docs: "each account allows only 1 concurrent request"


@attrs.frozen(kw_only=True)
class GovernorStats:
    """A snapshot of the governor, for tests and debugging."""

    limit: int
    known: bool
    active: int
    waiting: int
    max_active: int


class Governor:
    """A FIFO limiter whose limit can change while requests wait."""

    def __init__(self, *, max_concurrency: int | None, ceiling: int) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._cap = min(max_concurrency, ceiling) if max_concurrency else ceiling
        self._fixed = max_concurrency is not None
        self._limit = self._cap if self._fixed else DEFAULT_ACCOUNT_LIMIT
        self._known = self._fixed
        self._active = 0
        self._max_active = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return self._limit

    def stats(self) -> GovernorStats:
        """A snapshot: limit, whether it is known, active, waiting, max active."""
        return GovernorStats(
            limit=self._limit,
            known=self._known,
            active=self._active,
            waiting=len(self._waiters),
            max_active=self._max_active,
        )

    async def acquire(self) -> None:
        """Wait for a slot. Cancellation while waiting takes no slot with it."""
        if self._active < self._limit and not self._waiters:
            self._take()
            return
        import anyio  # noqa: PLC0415 - lazily: keeps `import nanobanana` cheap

        waiter = anyio.Event()
        self._waiters.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            if waiter.is_set():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back and hand it to the next waiter."""
        self._active -= 1
        self._wake()

    def _take(self) -> None:
        self._active += 1
        self._max_active = max(self._max_active, self._active)

    def _wake(self) -> None:
        while self._waiters and self._active < self._limit:
            self._take()
            self._waiters.popleft().set()

    def learn(self, limit: int) -> None:
        """The server told us the account's limit (429 body or X-RateLimit-Limit)."""
        if limit < 1:
            return
        self._known = True
        new = min(limit, self._cap)
        if new != self._limit:
            self._limit = new
            self._wake()

    def on_success(self) -> None:
        """A request succeeded: while the limit is unknown and others wait, probe up."""
        if not self._known and self._waiters and self._limit < self._cap:
            self._limit += 1
            self._wake()

    def on_rate_limited(self) -> None:
        """A 429 that did not say the limit: step back below what was in flight."""
        if not self._known:
            self._limit = max(1, min(self._limit, self._active - 1))
