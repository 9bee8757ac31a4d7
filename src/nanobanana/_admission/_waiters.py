"""A FIFO queue of waiting tasks that can also nap on the client's clock.

Both of the in-process gates (requests in flight, async tasks) queue their waiters
here. A waiter naps until it is handed what it waits for, or until a given time (a
cool-down ending, a job due for a poll): `Waiter.nap` sleeps on the injectable clock,
so that tests with `FakeClock` see the same waits as production, and `Waiter.wake`
ends the nap early from another task.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

if TYPE_CHECKING:
    from nanobanana._clock import Clock

__all__ = ["Queue", "Waiter"]

_T = TypeVar("_T")


class Waiter(Generic[_T]):
    """One waiting task; ``value`` is what it was handed (None until then)."""

    __slots__ = ("_event", "_scope", "data", "value")

    def __init__(self, data: Any = None) -> None:
        self.value: _T | None = None
        self.data = data
        self._event = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    def hand(self, value: _T) -> None:
        """Give the waiter what it waits for, and end its nap."""
        self.value = value
        self.wake()

    def wake(self) -> None:
        """End the current nap early (the waiter then looks again)."""
        self._event.set()
        if self._scope is not None:
            self._scope.cancel()

    async def nap(self, clock: Clock, delay: float | None) -> None:
        """Wait until woken, or ``delay`` seconds on ``clock`` (None: until woken)."""
        if self._event.is_set():
            self._event = anyio.Event()
            return
        if delay is None:
            # The event alone ends this nap: no cancel scope to open, and none for
            # `wake` to cancel (cancelling one was a tenth of a fan-out's CPU).
            await self._event.wait()
        else:
            with anyio.CancelScope() as scope:
                self._scope = scope
                try:
                    await clock.sleep(max(0.0, delay))
                finally:
                    self._scope = None
        if self._event.is_set():
            self._event = anyio.Event()


class Queue(Generic[_T]):
    """Waiters in order; those retrying after a refusal go to the front."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Waiter[_T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, waiter: Waiter[_T], *, front: bool) -> None:
        """Queue ``waiter`` at the back (or the front)."""
        if front:
            self._items.appendleft(waiter)
        else:
            self._items.append(waiter)

    def head(self) -> Waiter[_T] | None:
        """The first waiter, if any."""
        return self._items[0] if self._items else None

    def pop(self) -> Waiter[_T]:
        """Take the first waiter out."""
        return self._items.popleft()

    def discard(self, waiter: Waiter[_T]) -> None:
        """Take ``waiter`` out wherever it is (it gave up)."""
        with contextlib.suppress(ValueError):
            self._items.remove(waiter)
