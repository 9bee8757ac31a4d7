"""Async tasks counted in Redis, for every process sharing the key (see `TaskLedger`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanobanana._admission._redis_link import Link, RedisDownError, as_int, as_str
from nanobanana._admission._tasks import DEFAULT_TASK_LEASE, LocalLedger

if TYPE_CHECKING:
    from nanobanana._clock import Clock

__all__ = ["TASK_RECHECK", "RedisLedger"]

#: How often a submit waiting for room asks Redis again (others' jobs end unseen).
TASK_RECHECK = 0.25


class RedisLedger:
    """Async tasks counted in Redis (see `TaskLedger`), in this process while it is down."""

    recheck: float | None = TASK_RECHECK

    def __init__(self, link: Link, prefix: str, *, clock: Clock, lease: float) -> None:
        self._link = link
        self._keys = [prefix + "tasks", prefix + "reserved", prefix + "tconf"]
        self._lease_ms = int(lease * 1000)
        self._task_lease_ms = int(DEFAULT_TASK_LEASE * 1000)
        self._local = LocalLedger(clock=clock)
        self._here: set[str] = set()  # keys and jobs counted by `_local` (Redis was down)
        self.reserved: set[str] = set()  # our submits in flight, counted in Redis
        self._cap: int | None = None
        self._count = 0

    @property
    def cap(self) -> int | None:
        """The cap as last seen."""
        return self._cap if self._cap is not None else self._local.cap

    def count(self) -> int:
        """Tasks counted, as last seen (every process's)."""
        return self._count + self._local.count()

    async def take(self, key: str) -> bool:
        """Count ``key`` in Redis if there is room (here if Redis is down)."""
        if self._link.usable():
            try:
                taken, count, cap = await self._link.run(
                    "TASK_TAKE", self._keys, [key, self._lease_ms]
                )
            except RedisDownError:
                pass
            except BaseException:
                await self._link.cleanup("TASK_DROP", self._keys, [key])
                raise
            else:
                self._count, self._cap = as_int(count), (as_int(cap) if as_int(cap) >= 0 else None)
                if as_int(taken):
                    self.reserved.add(key)
                    return True
                return False
        if await self._local.take(key):
            self._here.add(key)
            return True
        return False

    async def _run(self, name: str, args: list[Any]) -> Any:
        try:
            return await self._link.run(name, self._keys, args)
        except RedisDownError:
            return None

    async def drop(self, key: str) -> None:
        """Stop counting ``key``."""
        if key in self._here:
            self._here.discard(key)
            await self._local.drop(key)
            return
        self.reserved.discard(key)
        self._counted(await self._link.cleanup("TASK_DROP", self._keys, [key]))

    async def keep(self, key: str, lease: float) -> None:
        """Count ``key`` as an unnamed job for ``lease`` seconds."""
        if key in self._here:
            await self._local.keep(key, lease)
            return
        self.reserved.discard(key)
        self._counted(
            await self._link.cleanup("TASK_KEEP", self._keys, [key, key, int(lease * 1000)])
        )

    async def start(self, key: str, generation_id: str) -> None:
        """``key`` became the job ``generation_id``."""
        if key in self._here:
            self._here.discard(key)
            self._here.add(generation_id)
            await self._local.start(key, generation_id)
            return
        self.reserved.discard(key)
        self._counted(
            await self._link.cleanup(
                "TASK_START", self._keys, [key, generation_id, self._task_lease_ms]
            )
        )

    async def seen(self, generation_id: str, *, finished: bool) -> None:
        """A poll saw ``generation_id``."""
        if generation_id in self._here:
            if finished:
                self._here.discard(generation_id)
            await self._local.seen(generation_id, finished=finished)
            return
        if self._link.usable():
            self._counted(
                await self._run("TASK_SEEN", [generation_id, int(finished), self._task_lease_ms])
            )

    def _counted(self, result: Any) -> None:
        if result:
            self._count = as_int(result[0])

    async def busy(self, key: str, active_tasks: int | None) -> bool:
        """Learn the cap (for every process); True when the counted others fill it."""
        if key in self._here or not self._link.usable():
            return await self._local.busy(key, active_tasks)
        await self._local.busy("", active_tasks)  # the fallback keeps the cap too
        result = await self._run("TASK_BUSY", [key, active_tasks or -1])
        if result is None:
            return await self._local.busy(key, active_tasks)
        cap, others = as_int(result[0]), as_int(result[1])
        self._cap = cap if cap >= 0 else None
        return cap >= 0 and others >= cap

    async def stranger(self) -> str | None:
        """A job of the fleet polled longest ago."""
        if not self._link.usable():
            return None
        result = await self._run("TASK_STRANGER", [])
        if result is None:
            return None
        self._count = as_int(result[0])
        cap = as_int(result[1])
        self._cap = cap if cap >= 0 else None
        job = as_str(result[2])
        return job or None

    async def renew(self) -> None:
        """Renew the leases of our submits in flight."""
        if self.reserved:
            await self._run("TASK_RENEW", [self._lease_ms, *self.reserved])
