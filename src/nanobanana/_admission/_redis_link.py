"""The Redis connection of a fleet governor: its scripts, its timeouts, and its outages.

Every call is bounded by ``timeout``. A call that fails marks Redis unreachable: one
warning per outage, then `Link.usable` says when to try again. A pooled connection
that died with a restarted server is retried once on a fresh one, so that a restart
is not taken for a second outage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import anyio

from nanobanana._admission import _lua
from nanobanana._logs import emit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nanobanana._clock import Clock

__all__ = ["Link", "RedisDownError", "as_int", "as_str"]


class RedisDownError(Exception):
    """Internal: a Redis call failed or took too long; the governor falls back."""


def as_int(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Link:
    """The Redis connection of one fleet governor, its scripts, and whether it is up."""

    def __init__(
        self,
        *,
        client: Any,
        owned: bool,
        where: str,
        timeout: float,
        retry_interval: float,
        clock: Clock,
    ) -> None:
        self.client = client
        self._owned = owned
        self.where = where
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._clock = clock
        self._scripts: dict[str, Any] = {}
        self.down = False
        self._next_try = 0.0
        self._announced = False
        self._recovered_at = -1e9
        self._later: set[asyncio.Task[Any]] = set()  # cleanups nobody waits for

    def disable(self) -> None:
        """Never use Redis (this event loop cannot run redis-py's client)."""
        self.down = True
        self._next_try = float("inf")
        self._owned = False  # nothing to close: it never connected

    def usable(self) -> bool:
        """Whether to try Redis now (up, or down long enough to try again)."""
        return not self.down or self._clock.monotonic() >= self._next_try

    def _failed(self, exc: BaseException) -> RedisDownError:
        now = self._clock.monotonic()
        self._next_try = now + self.retry_interval
        # Connections opened before a restart fail once each after it: the same outage,
        # not a new one worth another warning.
        settling = now - self._recovered_at < max(1.0, 5 * self.retry_interval)
        if not self.down:
            self.down = True
            if not settling:
                self._announced = True
                emit(
                    logging.WARNING,
                    "Redis governor at %s is unreachable (%s: %s); admitting requests with "
                    "this process's own governor until it answers again (tried every %g s).",
                    self.where,
                    type(exc).__name__,
                    exc,
                    self.retry_interval,
                    event="redis_down",
                    error=type(exc).__name__,
                )
        return RedisDownError(str(exc))

    async def _answered(self) -> None:
        if not self.down:
            return
        self.down = False
        self._recovered_at = self._clock.monotonic()
        if self._announced:
            self._announced = False
            emit(
                logging.INFO,
                "Redis governor at %s answers again: admission is shared again.",
                self.where,
                event="redis_up",
            )
        # Idle connections from before the outage are dead: drop them now rather than
        # fail one call on each. Only in a pool of ours: a borrowed client's pool, and
        # what its owner keeps in it, are its owner's.
        pool = getattr(self.client, "connection_pool", None) if self._owned else None
        if pool is not None:
            with anyio.move_on_after(self.timeout):
                await pool.disconnect(inuse_connections=False)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script ``name`` of `nanobanana._admission._lua`, bounded in time."""
        import redis.exceptions  # noqa: PLC0415 - the extra is needed only here

        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(getattr(_lua, name))
        for attempt in (1, 2):
            try:
                result = await asyncio.wait_for(
                    script(keys=list(keys), args=list(args)), self.timeout
                )
                break
            except redis.exceptions.ConnectionError as exc:
                # A pooled connection that died with a restarted server fails once; the
                # pool then connects afresh. Only a second failure means Redis is away.
                if attempt == 2:
                    raise self._failed(exc) from exc
            except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
                raise self._failed(exc) from exc
        await self._answered()
        return result

    async def blpop(self, key: str, seconds: float) -> Any:
        """Wait up to ``seconds`` for a push to ``key``: ``[key, value]``, or None."""
        import redis.exceptions  # noqa: PLC0415

        try:
            return await asyncio.wait_for(
                self.client.blpop([key], timeout=seconds), seconds + self.timeout
            )
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise self._failed(exc) from exc

    async def close(self) -> None:
        """Let the cleanups in the background end (bounded); close the pool if we made it."""
        if self._later:
            with anyio.CancelScope(shield=True):
                _, late = await asyncio.wait(self._later, timeout=self.timeout)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        if self._owned:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await self.client.aclose()

    async def cleanup(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script shielded from cancellation (and bounded); None when it failed."""
        with anyio.CancelScope(shield=True):
            try:
                return await self.run(name, keys, args)
            except RedisDownError:
                return None  # what it would free runs out with its lease

    def cleanup_later(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """`cleanup` in the background, for when Redis just failed: nobody waits for it."""
        task = asyncio.get_running_loop().create_task(self.cleanup(name, keys, args))
        self._later.add(task)
        task.add_done_callback(self._later.discard)
