"""Holds: keep generations unfinished until a test says so, from any thread or loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Hold"]


class Hold:
    """A latch that keeps generations processing until it is released.

    Generations started while a hold is active do not finish before `release`: a
    sync request stays open, a stream keeps sending heartbeats, an async task stays
    ``processing``. This lets a test keep a request in flight for exactly as long as
    it needs, without sleeping. `release` may be called from any thread.

    Example:
        >>> with sim.hold():
        ...     ...  # requests started here stay in flight until the block ends
    """

    def __init__(self, *, on_release: Callable[[Hold], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_release = on_release

    @property
    def released(self) -> bool:
        """Whether `release` was called."""
        return self._released.is_set()

    def release(self) -> None:
        """Let the held generations finish (idempotent, thread-safe)."""
        with self._lock:
            if self._released.is_set():
                return
            self._released.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            # The loop may already be closed if its server stopped first.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if self._on_release is not None:
            self._on_release(self)

    async def wait(self) -> None:
        """Wait, in the running asyncio loop, until the hold is released."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            if self._released.is_set():
                return
            entry = (loop, event)
            self._waiters.append(entry)
        try:
            await event.wait()
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Hold released={self.released}>"
