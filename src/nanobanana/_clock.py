"""Time, injectable: the real clock by default, a fake one for tests.

Backoff, Retry-After and polling read time and sleep only through a `Clock`, so
tests can check exact waits without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

# anyio is imported where it is used, not at import time: `import nanobanana` must stay
# cheap (the budget is 50 ms over `import httpx`), and these run only inside a loop.

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What the client needs of time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (to read HTTP-date ``Retry-After``)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (deadlines and budgets)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; cancellable."""
        ...


class SystemClock:
    """The real clock: ``time.time``, the event loop's clock, ``anyio.sleep``."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """The running event loop's monotonic clock."""
        import anyio  # noqa: PLC0415

        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        import anyio  # noqa: PLC0415

        await anyio.sleep(seconds)


class FakeClock:
    """A clock that moves only when slept on or advanced: sleeps return at once.

    Every sleep is recorded in `sleeps`, so a test can assert the exact waits.

    Example:
        ```python
        clock = FakeClock()
        client = AsyncNanoBanana(api_key="nb_test", clock=clock)
        ...
        assert clock.sleeps == [1.0, 2.0]
        ```
    """

    def __init__(self, *, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        """The fake wall clock."""
        return self._now

    def monotonic(self) -> float:
        """The fake monotonic clock (the same as `time`)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, move time forward and yield to the event loop once."""
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        import anyio.lowlevel  # noqa: PLC0415

        await anyio.lowlevel.checkpoint()
