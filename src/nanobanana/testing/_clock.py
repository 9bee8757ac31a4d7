"""The simulator's movable clock (image URL expiry and ``createdAt``)."""

from __future__ import annotations

import datetime as dt
import threading
import time

__all__ = ["SimClock", "iso8601", "utc"]


def utc(timestamp: float) -> dt.datetime:
    """A Unix time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)


def iso8601(timestamp: float) -> str:
    """Format a Unix time as the service does: ``2025-01-01T00:00:00.000Z`` (async docs)."""
    return utc(timestamp).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimClock:
    """Wall-clock time that tests can move forward.

    It runs at the speed of real time from ``start`` (default: now) plus every
    `advance`. Durations (generation time, heartbeats, delays) use real time instead,
    so that moving the clock never makes a request hang or finish early.

    Example:
        >>> clock = SimClock(start=0.0)
        >>> clock.advance(15 * 86400)
        >>> clock.now() >= 15 * 86400
        True
    """

    def __init__(self, *, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._start = time.time() if start is None else start
        self._started = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        """The simulated Unix time, in seconds."""
        with self._lock:
            return self._start + (time.monotonic() - self._started) + self._offset

    def datetime(self) -> dt.datetime:
        """The simulated time as an aware UTC datetime."""
        return utc(self.now())

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards).

        Raises:
            ValueError: If ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        with self._lock:
            self._offset += seconds

    def reset(self) -> None:
        """Undo every `advance`."""
        with self._lock:
            self._offset = 0.0
