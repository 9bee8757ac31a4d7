"""The spend cap: what a generation will cost, and a ledger that calls cannot overrun.

Cost (overview docs): a model's ``creditsCost`` from ``GET /models``, plus one credit
per reference image beyond the first ("each additional reference image costs 1 extra
credit"), times the quantity asked for ("total = unit cost x quantity (image-to-image
extra-image fees are included in the unit cost)"; streams make one image).

An estimate is never below what the server may charge, since a cap it undershoots can
be passed. So the quantity is not clamped to the docs' 4: that is only the default of
a "backend limit" an account may have raised. And a call that names no model is priced
at the documented default ``nano-banana`` only if the catalogue lists it; the live one
does not (api-reference-agent-notes), and then the server's default is unknown, so the
dearest model in the catalogue is what it may cost.

The ledger. Every generation call on a client with a cap takes a `Charge`: its
estimate is reserved before anything is sent or waited for (a request slot, room for
an async task), so that a call over the cap raises at once, and concurrent calls see
each other's reservations and cannot pass the cap together. The charge is settled when
the call ends, from the `CallTrace` its request left (``_stats.py``):

- accepted (a 2xx): spent, at the ``creditsUsed`` the server reported, else at the
  estimate;
- refused with nothing charged (429, 503, another 4xx), or never sent (a connect
  error, a cancellation or failure while queued, `BudgetExceededError` itself):
  released (only a ``POST /generate`` marks a charge sent: not the polls a submit
  makes while it waits for room);
- unknown (a 500, a timeout or a dropped connection after sending, a cancellation
  while the request was out): spent at the estimate, and counted as maybe charged.

A client's `Ledger` is the chain of caps that apply to it: its own (``max_credits``)
and, for a ``with_options(max_credits=N)`` copy, one more cap per copy that set one.
A copy can narrow what may be spent, never widen it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana._errors import BudgetExceededError, UnknownModelError
from nanobanana._stats import CallTrace, tracing

if TYPE_CHECKING:
    import contextlib

    import anyio

    from nanobanana._models import Model

__all__ = [
    "DEFAULT_MODEL",
    "Catalogue",
    "Charge",
    "Ledger",
    "check_max_credits",
    "count_credits",
    "estimate_cost",
]

DEFAULT_MODEL = "nano-banana"  # overview docs: selectedModel 'defaults to "nano-banana"'


def count_credits(count: int) -> str:
    """``"1 credit"``, ``"4 credits"``."""
    return f"{count} credit" if count == 1 else f"{count} credits"


def check_max_credits(value: Any) -> int | None:
    """``max_credits`` as given, once checked: None or a whole number of credits >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_credits must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError("max_credits must be 0 or more")
    return value


def estimate_cost(costs: Mapping[str, int], body: Mapping[str, Any]) -> int:
    """The most a ``POST /generate`` with ``body`` may cost, from the catalogue's ``costs``.

    Raises:
        UnknownModelError: the body names a model that is not in the catalogue (the
            server would refuse it: the live catalogue is authoritative), or names none
            and the catalogue is empty.
    """
    name = body.get("selectedModel")
    if name is None:
        unit = _default_unit(costs)
    elif name in costs:
        unit = costs[name]
    else:
        known = tuple(sorted(costs))
        raise UnknownModelError(
            f"Unknown model {name!r}: GET /models lists {', '.join(known) or 'none'}; its "
            "cost cannot be estimated, and nothing was sent.",
            model=str(name),
            known=known,
        )
    references = body.get("referenceImageUrls") or ()
    unit += max(0, len(references) - 1)
    # A stream: "Streaming models emit a single image per call" (overview docs). Else
    # "clamped to 1-backend limit (default max 4)": 1 is the only bound the docs fix,
    # the upper one is the account's, so the whole quantity may be charged.
    stream = body.get("mode") == "stream"
    quantity = 1 if stream else max(int(body.get("quantity") or 1), 1)
    return unit * quantity


def _default_unit(costs: Mapping[str, int]) -> int:
    """The price of a generation that names no model: the default's, else the dearest."""
    if DEFAULT_MODEL in costs:
        # The catalogue lists the documented default ("selectedModel ... defaults to
        # nano-banana", overview docs): the server uses it, at the catalogue's price.
        return costs[DEFAULT_MODEL]
    if not costs:
        raise UnknownModelError(
            "GET /models lists no model: the cost of a generation with the server's "
            "default model cannot be estimated, and nothing was sent.",
            model=DEFAULT_MODEL,
            known=(),
        )
    # The live catalogue lacks it (api-reference-agent-notes), and does not say which
    # model the server uses instead: any of them, so the dearest, may be charged.
    return max(costs.values())


class Catalogue:
    """The models' costs, fetched once for a client and its copies, and kept."""

    def __init__(self) -> None:
        self._costs: dict[str, int] | None = None
        self._version = 0
        self._lock: anyio.Lock | None = None

    def store(self, models: Iterable[Model]) -> None:
        """Keep the costs of a catalogue just fetched (``client.models()`` calls this)."""
        self._costs = {model.name: max(0, model.credits_cost) for model in models}
        self._version += 1

    async def cost_of(self, body: Mapping[str, Any], fetch: Callable[[], Awaitable[object]]) -> int:
        """`estimate_cost` of ``body``; ``fetch()`` fetches the catalogue (and stores it).

        Concurrent first calls fetch once. A model missing from the catalogue kept
        (or, for a call that names none, an empty catalogue) makes one more fetch (it
        may be newer than the catalogue) before it is refused.
        """
        costs, version = await self._costs_now(fetch, stale=None)
        name = body.get("selectedModel")
        if (name not in costs) if name is not None else not costs:
            costs, _ = await self._costs_now(fetch, stale=version)
        return estimate_cost(costs, body)

    async def _costs_now(
        self, fetch: Callable[[], Awaitable[object]], *, stale: int | None
    ) -> tuple[dict[str, int], int]:
        if self._costs is not None and self._version != stale:
            return self._costs, self._version
        if self._lock is None:
            import anyio  # noqa: PLC0415 - lazily: keeps `import nanobanana` cheap

            self._lock = anyio.Lock()
        async with self._lock:
            if self._costs is None or self._version == stale:
                await fetch()
            if self._costs is None:  # pragma: no cover - fetch() stores or raises
                raise RuntimeError("the model catalogue was not stored")
            return self._costs, self._version


@attrs.define
class _Cap:
    """One limit on spending: a client's ``max_credits`` (None: only counts)."""

    max_credits: int | None
    spent: int = 0
    reserved: int = 0

    def remaining(self) -> int | None:
        if self.max_credits is None:
            return None
        return max(0, self.max_credits - self.spent - self.reserved)


@attrs.define
class _Tally:
    """Counts of the whole client (and copies) that are not credits."""

    maybe_charged: int = 0
    uncounted_charges: int = 0


@attrs.define(eq=False)
class Ledger:
    """The caps that apply to one client: the root client's first, then its copies'."""

    _caps: tuple[_Cap, ...]
    _tally: _Tally

    @classmethod
    def root(cls, max_credits: int | None) -> Ledger:
        """The ledger of a client made with ``AsyncNanoBanana(max_credits=...)``."""
        return cls(caps=(_Cap(max_credits),), tally=_Tally())

    def narrow(self, max_credits: int | None) -> Ledger:
        """The ledger of a copy: these caps, and ``max_credits`` of its own if not None."""
        if max_credits is None:
            return self
        return Ledger(caps=(*self._caps, _Cap(max_credits)), tally=self._tally)

    @property
    def capped(self) -> bool:
        """Whether any cap applies (then every generation's cost is estimated)."""
        return any(cap.max_credits is not None for cap in self._caps)

    @property
    def spent(self) -> int:
        """Credits spent by the client and all its copies."""
        return self._caps[0].spent

    @property
    def reserved(self) -> int:
        """Credits reserved by calls under way, of the client and all its copies."""
        return self._caps[0].reserved

    @property
    def maybe_charged(self) -> int:
        """Generation calls that ended not knowing whether they were charged."""
        return self._tally.maybe_charged

    @property
    def uncounted_charges(self) -> int:
        """Generations charged for an amount neither reported nor estimated."""
        return self._tally.uncounted_charges

    def remaining(self) -> int | None:
        """What may still be spent through this client under all its caps (None: no cap)."""
        left = [r for cap in self._caps if (r := cap.remaining()) is not None]
        return min(left) if left else None

    def charge(self, estimate: int | None) -> Charge:
        """Reserve ``estimate`` credits on every cap, or raise `BudgetExceededError`."""
        if estimate is not None:
            for cap in self._caps:
                remaining = cap.remaining()
                if remaining is not None and estimate > remaining:
                    raise BudgetExceededError(
                        f"This generation would cost an estimated {count_credits(estimate)}, but "
                        f"only {remaining} of max_credits={cap.max_credits} remain (the rest "
                        "is spent or reserved by calls under way); nothing was sent.",
                        needed=estimate,
                        remaining=remaining,
                        max_credits=cap.max_credits,
                    )
            for cap in self._caps:
                cap.reserved += estimate
        return Charge(self, estimate)

    def _settle(self, reserved: int, spent: int, *, maybe: bool, uncounted: bool) -> None:
        for cap in self._caps:
            cap.reserved -= reserved
            cap.spent += spent
        self._tally.maybe_charged += maybe
        self._tally.uncounted_charges += uncounted


class Charge:
    """One generation call's reservation, settled by `finish` when the call ends.

    Take it before the call waits for anything (a request slot, room for a task), so
    that a call over the cap raises at once. Use ``with charge.sending():`` around the
    ``POST /generate`` alone, and `finish` it in a ``finally`` when the call ends: a
    call cancelled or failed while it waited is then released.
    """

    def __init__(self, ledger: Ledger, estimate: int | None) -> None:
        self._ledger = ledger
        self.estimate = estimate
        self.trace = CallTrace()
        self._reported: int | None = None
        self._finished = False

    def report(self, credits_used: int | None) -> None:
        """What the server said it charged (``creditsUsed``), when it said it."""
        if credits_used is not None:
            self._reported = max(0, credits_used)

    def answered(self, answer: Any) -> None:
        """`report` the ``creditsUsed`` of a ``POST /generate`` JSON answer."""
        value = answer.get("creditsUsed") if isinstance(answer, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.report(int(value))

    def sending(self) -> contextlib.AbstractContextManager[CallTrace]:
        """Trace the requests sent inside the block (not across a ``yield``)."""
        return tracing(self.trace)

    def finish(self) -> None:
        """Settle: spent, released, or spent at the estimate as maybe charged (once)."""
        if self._finished:
            return
        self._finished = True
        estimate = self.estimate
        trace = self.trace
        known = self._reported if self._reported is not None else estimate
        if trace.accepted:
            self._ledger._settle(estimate or 0, known or 0, maybe=False, uncounted=known is None)
        elif trace.sent:
            self._ledger._settle(estimate or 0, known or 0, maybe=True, uncounted=False)
        else:
            self._ledger._settle(estimate or 0, 0, maybe=False, uncounted=False)
