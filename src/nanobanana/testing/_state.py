"""The simulator's shared state: accounts, ledger, generations, request log, holds.

The server thread and the caller's thread both touch it, so every read and write goes
through ``State.lock`` (re-entrant, so predicates given to `State.wait_for` may call
back into the simulator). ``State.changed`` is notified on every change.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import string
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import attrs

from nanobanana.testing._clock import SimClock, iso8601, utc
from nanobanana.testing._config import SimulatorConfig
from nanobanana.testing._faults import FaultPlan
from nanobanana.testing._hold import Hold
from nanobanana.testing._records import (
    GenerationRecord,
    LedgerEntry,
    RequestRecord,
    fingerprint,
)
from nanobanana.testing._timing import GenerationTime

__all__ = ["Account", "Generation", "State"]

_ID_ALPHABET = string.ascii_lowercase + string.digits
# How often `State.wait_for` re-checks its predicate even without a notification: some
# facts (a generation finishing) change with time alone.
_RECHECK = 0.02


@attrs.define(kw_only=True)
class Account:
    """One API account: its key, balance, access flag and concurrency bookkeeping."""

    api_key: str = attrs.field(repr=False)
    credits: int
    api_access: bool = True
    concurrency_limit: int = 1
    pro: bool = False
    in_flight: int = 0
    max_in_flight: int = 0
    # Requests of the key being handled, refused ones (429) included, and the most at once.
    presented: int = 0
    peak_in_flight: int = 0

    @property
    def fingerprint(self) -> str:
        """The key's `fingerprint`, safe to log."""
        return fingerprint(self.api_key)

    def to_json(self) -> dict[str, Any]:
        """The account as the admin API shows it (never the key itself)."""
        return {
            "key_fingerprint": self.fingerprint,
            "credits": self.credits,
            "api_access": self.api_access,
            "concurrency_limit": self.concurrency_limit,
            "pro": self.pro,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "peak_in_flight": self.peak_in_flight,
        }


@attrs.define(kw_only=True)
class Generation:
    """One accepted generation. It finishes by itself: its status derives from time."""

    id: str
    key_fingerprint: str
    prompt: str
    model: str
    mode: str
    quantity: int
    aspect_ratio: str
    reference_image_urls: tuple[str, ...]
    credits_used: int
    created_at: float
    started: float
    duration: float
    outcome: str
    error_message: str | None
    image_urls: tuple[str, ...]
    holds: tuple[Hold, ...] = ()

    def done(self) -> bool:
        """Whether the generation has finished (its time passed and no hold keeps it)."""
        if time.monotonic() < self.started + self.duration:
            return False
        return all(hold.released for hold in self.holds)

    def status(self) -> str:
        """``processing``, ``completed`` or ``failed`` (the documented processingStatus)."""
        if not self.done():
            return "processing"
        return "completed" if self.outcome == "success" else "failed"

    async def wait(self) -> None:
        """Wait (real time) until the generation has finished."""
        delay = self.started + self.duration - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for hold in self.holds:
            await hold.wait()

    def poll_json(self) -> dict[str, Any]:
        """The ``data`` of ``GET /generate?id=`` (async-mode docs, "Polling Response")."""
        status = self.status()
        data: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            # null until complete, also for failures (async-mode docs).
            "outputImageUrls": list(self.image_urls) if status == "completed" else None,
            "modelUsed": self.model,
            "processingStatus": status,
            "creditsUsed": self.credits_used,
            "createdAt": iso8601(self.created_at),
        }
        if status == "failed":
            data["errorMessage"] = self.error_message
        return data

    def snapshot(self) -> GenerationRecord:
        """A frozen copy for tests."""
        return GenerationRecord(
            id=self.id,
            key_fingerprint=self.key_fingerprint,
            prompt=self.prompt,
            model=self.model,
            mode=self.mode,
            quantity=self.quantity,
            aspect_ratio=self.aspect_ratio,
            reference_image_urls=self.reference_image_urls,
            credits_used=self.credits_used,
            status=self.status(),
            outcome=self.outcome,
            image_urls=self.image_urls,
            error_message=self.error_message,
            created_at=utc(self.created_at),
            generation_time=self.duration,
        )


class State:
    """Everything the simulator remembers; see the module docstring for locking."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.clock = SimClock(start=config.clock_start)
        self.faults = FaultPlan()
        self.cdn_base_url: str | None = None
        seed = config.seed
        self._secret = os.urandom(32) if seed is None else f"nanobanana-sim-{seed}".encode()
        self._rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)
        # Generation times are drawn from a stream of their own, so that setting a range
        # leaves the ids of a seeded simulator as they were.
        self._timing_seed = None if seed is None else f"nanobanana-sim-{seed}-generation-time"
        self._timing_rng = random.Random(self._timing_seed)
        self.accounts: dict[str, Account] = {}
        self.generations: dict[str, Generation] = {}
        self.ledger: list[LedgerEntry] = []
        self.requests: list[RequestRecord] = []
        self.holds: list[Hold] = []
        self.generation_times: dict[str | None, GenerationTime] = {}
        self.reset()

    # -- lifecycle ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: back to the configured account, no faults, clock unmoved."""
        with self.lock:
            for hold in list(self.holds):
                hold.release()
            self.holds.clear()
            self.accounts.clear()
            self.generations.clear()
            self.ledger.clear()
            self.requests.clear()
            self.faults.clear()
            self.generation_times.clear()
            self.clock.reset()
            if self.config.seed is not None:
                self._rng.seed(self.config.seed)
                self._timing_rng.seed(self._timing_seed)
            cfg = self.config
            self.add_account(
                cfg.api_key,
                credits=cfg.credits,
                api_access=cfg.api_access,
                concurrency_limit=cfg.concurrency_limit,
                pro=cfg.pro,
            )

    def notify(self) -> None:
        """Wake every `wait_for`."""
        with self.lock:
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], object], timeout: float) -> bool:
        """Block until ``predicate()`` is true or ``timeout`` passes; return the last result."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, _RECHECK))
            return True

    # -- accounts ----------------------------------------------------------------

    def add_account(
        self,
        api_key: str,
        *,
        credits: int,  # noqa: A002 - the documented option name
        api_access: bool = True,
        concurrency_limit: int = 1,
        pro: bool = False,
    ) -> Account:
        """Create the account for ``api_key``, or update it (keeping its in-flight count)."""
        if concurrency_limit < 1:
            raise ValueError("concurrency_limit must be at least 1")
        with self.lock:
            account = self.accounts.get(api_key)
            if account is None:
                account = Account(api_key=api_key, credits=credits)
                self.accounts[api_key] = account
            account.credits = credits
            account.api_access = api_access
            account.concurrency_limit = concurrency_limit
            account.pro = pro
            self.notify()
            return account

    def account(self, api_key: str) -> Account | None:
        """The account of ``api_key``, if it exists."""
        with self.lock:
            return self.accounts.get(api_key)

    def arrive(self, account: Account) -> None:
        """A request of ``account`` is being handled (admitted or not): see `peak_in_flight`."""
        with self.lock:
            account.presented += 1
            account.peak_in_flight = max(account.peak_in_flight, account.presented)

    def depart(self, account: Account) -> None:
        """A request counted by `arrive` has been answered."""
        with self.lock:
            account.presented -= 1

    def try_enter(self, account: Account) -> bool:
        """Count a request in flight for ``account``, unless that would pass its limit."""
        with self.lock:
            if account.in_flight >= account.concurrency_limit:
                return False
            account.in_flight += 1
            account.max_in_flight = max(account.max_in_flight, account.in_flight)
            self.notify()
            return True

    def leave(self, account: Account) -> None:
        """A request of ``account`` is no longer in flight."""
        with self.lock:
            account.in_flight -= 1
            self.notify()

    # -- credits -----------------------------------------------------------------

    def _move(self, kind: str, account: Account, amount: int, generation: Generation) -> None:
        with self.lock:
            account.credits += -amount if kind == "charge" else amount
            self.ledger.append(
                LedgerEntry(
                    time=time.monotonic(),
                    kind=kind,
                    key_fingerprint=account.fingerprint,
                    generation_id=generation.id,
                    amount=amount,
                    balance=account.credits,
                    prompt=generation.prompt,
                    model=generation.model,
                )
            )
            self.notify()

    def charge(self, account: Account, generation: Generation) -> None:
        """Take ``generation.credits_used`` from ``account`` and write it in the ledger."""
        self._move("charge", account, generation.credits_used, generation)

    def refund(self, account: Account, generation: Generation) -> None:
        """Give ``generation.credits_used`` back (503 server_busy: async-mode docs)."""
        self._move("refund", account, generation.credits_used, generation)

    # -- generations -------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh generation id shaped like the service's (``clxx...``, a cuid)."""
        with self.lock:
            while True:
                suffix = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(23))
                candidate = "cl" + suffix
                if candidate not in self.generations:
                    return candidate

    def generation_time_of(self, model: str | None) -> GenerationTime:
        """How long generations of ``model`` take (None: models without their own)."""
        with self.lock:
            if model in self.generation_times:
                return self.generation_times[model]
            entry = None if model is None else self.config.model(model)
            if entry is not None and entry.generation_time is not None:
                return entry.generation_time
            return self.generation_times.get(None, self.config.generation_time)

    def generation_time(self, model: str) -> float:
        """Seconds the next generation with ``model`` takes, before per-call overrides.

        A range draws from the simulator's timing stream (seeded with ``seed``).
        """
        with self.lock:
            return self.generation_time_of(model).draw(self._timing_rng)

    def set_generation_time(self, seconds: object, *, model: str | None = None) -> GenerationTime:
        """Make generations (of ``model``, or of every model without its own) take ``seconds``.

        ``seconds``: anything `GenerationTime.of` reads (a number, ``"0.5-2"``, ...).
        """
        spec = GenerationTime.of(seconds)
        if model is not None and self.config.model(model) is None:
            raise ValueError(f"unknown model {model!r}")
        with self.lock:
            self.generation_times[model] = spec
        return spec

    def signature(self, generation_id: str, index: int, expires: int) -> str:
        """The ``sig`` of an image URL: an HMAC over what the URL names."""
        message = f"{generation_id}/{index}/{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def image_urls(self, generation_id: str, count: int, cdn_base_url: str) -> tuple[str, ...]:
        """Signed CDN URLs for ``count`` images, expiring ``url_ttl`` after now."""
        expires = int(self.clock.now() + self.config.url_ttl)
        segment = quote(generation_id, safe="")
        return tuple(
            f"{cdn_base_url}/img/{segment}/{index}.png"
            f"?expires={expires}&sig={self.signature(generation_id, index, expires)}"
            for index in range(count)
        )

    def add_generation(self, generation: Generation) -> None:
        """Remember ``generation`` (pollable from now on)."""
        with self.lock:
            self.generations[generation.id] = generation
            self.notify()

    def running_async_tasks(self) -> int:
        """How many async-mode generations are still processing (the server's task queue)."""
        with self.lock:
            return sum(1 for g in self.generations.values() if g.mode == "async" and not g.done())

    def hold(self) -> Hold:
        """Start a `Hold` that every generation accepted from now on waits for."""

        def forget(hold: Hold) -> None:
            with self.lock:
                if hold in self.holds:
                    self.holds.remove(hold)
                self.notify()

        hold = Hold(on_release=forget)
        with self.lock:
            self.holds.append(hold)
        return hold

    def release_holds(self) -> None:
        """Release every active hold."""
        with self.lock:
            holds = list(self.holds)
        for hold in holds:
            hold.release()

    # -- request log -------------------------------------------------------------

    def log(self, record: RequestRecord) -> None:
        """Append ``record`` to the request log."""
        with self.lock:
            self.requests.append(record)
            self.notify()
