"""Fault injection: what can go wrong, which requests it hits, and how often.

A `Fault` is a frozen description: its ``kind`` says what happens, the match fields
(``origin``, ``method``, ``path``, ``mode``) say which requests it hits, and ``times``
how many of them. Faults fall into five categories, and one request takes at most one
fault of each (the first armed match, in injection order), so a delay, a cut stream
and a failing generation can hit the same request:

| category | kinds |
|---|---|
| delay | ``delay`` |
| response | ``status``, ``reset``, ``content_type``, and the ``cdn_*`` kinds below |
| after_charge | ``status`` and ``reset`` with ``after_charge=True`` |
| stream | ``sse_cut``, ``sse_split``, ``sse_junk``, ``sse_heartbeats``, ``sse_oversize`` |
| generation | ``outcome`` |

The CDN's own kinds are ``cdn_html``, ``cdn_huge``, ``cdn_redirect``, ``cdn_cut`` and
``cdn_stall``.

An ``after_charge`` fault is used up only when a request gets as far as the charge (a
request refused with 400 or 402 leaves it armed for the next one); the others are used
up when they match.

Random faults draw from named presets (`PRESETS`) with a seeded generator.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, Literal

import attrs

__all__ = [
    "CDN_TRANSIENT_KINDS",
    "DEFAULT_RANDOM_KINDS",
    "FAULT_KINDS",
    "PRESETS",
    "Fault",
    "FaultPlan",
    "RequestInfo",
]

Category = Literal["delay", "response", "after_charge", "stream", "generation"]

_CATEGORIES: dict[str, Category] = {
    "delay": "delay",
    "status": "response",
    "reset": "response",
    "content_type": "response",
    "cdn_html": "response",
    "cdn_huge": "response",
    "cdn_redirect": "response",
    "cdn_cut": "response",
    "cdn_stall": "response",
    "sse_cut": "stream",
    "sse_split": "stream",
    "sse_junk": "stream",
    "sse_heartbeats": "stream",
    "sse_oversize": "stream",
    "outcome": "generation",
}
FAULT_KINDS: tuple[str, ...] = tuple(_CATEGORIES)
_CDN_KINDS = frozenset({"cdn_html", "cdn_huge", "cdn_redirect", "cdn_cut", "cdn_stall"})
_OUTCOMES = frozenset({"success", "failure", "unsafe"})
_FRAMINGS = frozenset({"length", "chunked", "close"})


@attrs.frozen(kw_only=True)
class RequestInfo:
    """What fault matching knows about a request.

    Attributes:
        origin: ``"api"`` or ``"cdn"``.
        method: The HTTP method, upper case.
        endpoint: The path below the API base (``/generate``) or the CDN path (``/img/...``).
        mode: The ``mode`` of a ``POST /generate`` (``sync`` when omitted), else ``None``.
    """

    origin: str
    method: str
    endpoint: str
    mode: str | None = None

    @property
    def is_generate(self) -> bool:
        """Whether this is a ``POST /generate`` on the API origin."""
        return self.origin == "api" and self.method == "POST" and self.endpoint == "/generate"


def _retry_after(value: object) -> str | None:
    # Accept numbers for convenience; strings are sent verbatim so that tests can inject
    # garbage or HTTP-dates (PROTOCOL.md: Retry-After is delta-seconds or an HTTP-date).
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    raise TypeError("retry_after must be a string, a number or None")


def _sizes(sizes: Iterable[int]) -> tuple[int, ...]:
    return tuple(sizes)


def _upper(value: str | None) -> str | None:
    return None if value is None else value.upper()


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted fault: what happens, to which requests, how many times.

    Attributes:
        kind: One of `FAULT_KINDS` (see the module docstring and `Simulator.inject`).
        id: Set when the fault is armed; ``0`` for templates.
        times: How many matching requests it hits; ``None`` for every one.
        origin: ``"api"`` (default) or ``"cdn"`` (implied by the ``cdn_*`` kinds).
        method: Match only this HTTP method.
        path: Match this path or anything below it (``/generate``, ``/credits``, ``/img``).
        mode: Match only ``POST /generate`` in this mode.
        after_charge: ``status``/``reset`` only: act after ``POST /generate`` charged the
            account and created the generation, instead of before processing.
        status: ``status``: the HTTP status to answer with.
        body: ``status``: a JSON value or text to send instead of the documented body.
        retry_after: ``status``: the ``Retry-After`` header, verbatim (numbers allowed).
        html: ``status``: send an HTML error page (``text/html``) instead of JSON.
        seconds: ``delay``: how long to wait before answering.
        content_type: ``content_type``: the ``Content-Type`` to send instead of the real one.
        after_events: ``sse_cut``: how many events to send before cutting the stream.
        with_id: ``sse_cut``: whether the events carry ``generationId`` (``None``: the
            simulator's ``stream_event_ids`` setting).
        chunk_sizes: ``sse_split``: byte counts to cut the stream into, cycled.
        pause: ``sse_split``: seconds between chunks, so that they arrive separately.
        count: ``sse_junk``/``sse_heartbeats``: extra lines or heartbeats per event.
        size: ``sse_oversize``: bytes in the oversize line; ``cdn_huge``: body bytes;
            ``cdn_cut``: bytes of the image sent before the cut, ``cdn_stall``: before
            the stall (default: half of it).
        framing: ``cdn_cut``: how the cut body is framed: ``"length"`` (its full
            ``Content-Length``, then the connection dropped), ``"chunked"`` (chunked
            coding, the connection dropped before the last chunk) or ``"close"`` (no
            length: the body ends when the connection is closed, normally, which to
            HTTP looks like a whole body).
        location: ``cdn_redirect``: where to redirect (default: the same image on
            another origin, ``localhost`` instead of ``127.0.0.1``).
        outcome: ``outcome``: ``"success"``, ``"failure"`` or ``"unsafe"``.
        generation_time: ``outcome``: seconds the generation takes.
        error_message: ``outcome``: the failure's ``errorMessage``.
        generation_id: ``outcome``: the id to give the generation (e.g. ``"../../x"``).
    """

    kind: str = attrs.field()
    id: int = 0
    times: int | None = 1
    origin: str = attrs.field(
        default=attrs.Factory(lambda s: "cdn" if s.kind in _CDN_KINDS else "api", takes_self=True)
    )
    method: str | None = attrs.field(default=None, converter=_upper)
    path: str | None = None
    mode: str | None = None
    after_charge: bool = False
    status: int | None = None
    body: Any = None
    retry_after: str | None = attrs.field(default=None, converter=_retry_after)
    html: bool = False
    seconds: float = 0.0
    content_type: str | None = None
    after_events: int = 1
    with_id: bool | None = None
    chunk_sizes: tuple[int, ...] = attrs.field(default=(1, 2, 3, 5, 7), converter=_sizes)
    pause: float = 0.001
    count: int = 3
    size: int | None = None
    location: str | None = None
    framing: str = "length"
    outcome: str | None = None
    generation_time: float | None = None
    error_message: str | None = None
    generation_id: str | None = None

    @kind.validator
    def _check(self, _attribute: object, kind: str) -> None:
        if kind not in _CATEGORIES:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if self.origin not in ("api", "cdn"):
            raise ValueError("origin must be 'api' or 'cdn'")
        if kind == "status" and self.status is None:
            raise ValueError("a 'status' fault needs status=")
        if kind == "content_type" and self.content_type is None:
            raise ValueError("a 'content_type' fault needs content_type=")
        if kind == "outcome" and self.outcome is not None and self.outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(_OUTCOMES)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or None for always)")
        if self.after_charge and kind not in ("status", "reset"):
            raise ValueError("after_charge applies to 'status' and 'reset' faults only")
        if self.framing not in _FRAMINGS:
            raise ValueError(f"framing must be one of {sorted(_FRAMINGS)}")
        if kind == "sse_split" and (not self.chunk_sizes or min(self.chunk_sizes) < 1):
            raise ValueError("chunk_sizes must be positive byte counts")

    @property
    def category(self) -> Category:
        """Which of the five categories the fault belongs to."""
        return "after_charge" if self.after_charge else _CATEGORIES[self.kind]

    def applies_to(self, request: RequestInfo) -> bool:
        """Whether this fault can act on ``request`` at all (regardless of the filters)."""
        if request.origin != self.origin:
            return False
        if self.category in ("stream", "generation", "after_charge"):
            if not request.is_generate:
                return False
            return self.category != "stream" or request.mode == "stream"
        return True

    def matches(self, request: RequestInfo) -> bool:
        """Whether this fault's filters select ``request``."""
        if not self.applies_to(request):
            return False
        if self.method is not None and self.method != request.method:
            return False
        if self.mode is not None and self.mode != request.mode:
            return False
        if self.path is not None:
            prefix = self.path.rstrip("/")
            if request.endpoint != prefix and not request.endpoint.startswith(prefix + "/"):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The fault as the admin API shows it."""
        return attrs.asdict(self, recurse=False) | {"chunk_sizes": list(self.chunk_sizes)}


# Named faults for `random_faults` (and handy for `inject`).
PRESETS: dict[str, Fault] = {
    "429": Fault(kind="status", status=429),
    "500": Fault(kind="status", status=500),
    "503": Fault(kind="status", status=503),
    "500_after_charge": Fault(kind="status", status=500, after_charge=True),
    "html_error": Fault(kind="status", status=502, html=True),
    "garbage_retry_after": Fault(kind="status", status=429, retry_after="soon, maybe"),
    "reset_before": Fault(kind="reset"),
    "reset_after": Fault(kind="reset", after_charge=True),
    "delay": Fault(kind="delay", seconds=0.05),
    "wrong_content_type": Fault(kind="content_type", content_type="text/html; charset=utf-8"),
    "sse_cut": Fault(kind="sse_cut"),
    "sse_split": Fault(kind="sse_split"),
    "sse_junk": Fault(kind="sse_junk"),
    "sse_heartbeats": Fault(kind="sse_heartbeats"),
    "sse_oversize": Fault(kind="sse_oversize"),
    "cdn_html": Fault(kind="cdn_html"),
    "cdn_410": Fault(kind="status", status=410, origin="cdn"),
    # The CDN faults a download must survive (retried, nothing lost): a 5xx, a reset
    # connection, a body cut short of its Content-Length, an HTML page answered 200.
    "cdn_500": Fault(kind="status", status=500, origin="cdn"),
    "cdn_503": Fault(kind="status", status=503, origin="cdn"),
    "cdn_reset": Fault(kind="reset", origin="cdn"),
    "cdn_cut": Fault(kind="cdn_cut"),
    # The same cut with no Content-Length: chunked (the last chunk missing), or ended by
    # a normal close of the connection, which only the image's own end shows.
    "cdn_cut_chunked": Fault(kind="cdn_cut", framing="chunked"),
    "cdn_cut_close": Fault(kind="cdn_cut", framing="close"),
}

#: CDN failures that pass (the image is still there), as preset names: a download
#: that retries them saves every image. For ``random_faults(kinds=CDN_TRANSIENT_KINDS)``.
CDN_TRANSIENT_KINDS: tuple[str, ...] = (
    "cdn_500",
    "cdn_503",
    "cdn_reset",
    "cdn_cut",
    "cdn_cut_chunked",
    "cdn_cut_close",
    "cdn_html",
)

# Faults a correct client survives without paying twice: nothing charged, or retried safely.
DEFAULT_RANDOM_KINDS: tuple[str, ...] = (
    "429",
    "503",
    "reset_before",
    "delay",
    "sse_split",
    "sse_junk",
    "sse_heartbeats",
)


@attrs.define
class _Armed:
    fault: Fault
    remaining: int | None


@attrs.define
class _RandomFaults:
    rate: float
    seed: int | None
    kinds: tuple[str, ...]
    rng: random.Random


@attrs.define
class FaultPlan:
    """The armed faults of one simulator (mutable; guarded by the simulator's lock)."""

    _armed: list[_Armed] = attrs.Factory(list)
    _random: _RandomFaults | None = None
    _next_id: int = 1

    def add(self, fault: Fault) -> Fault:
        """Arm ``fault`` and return it with its id."""
        fault = attrs.evolve(fault, id=self._next_id)
        self._next_id += 1
        self._armed.append(_Armed(fault, fault.times))
        return fault

    def set_random(self, *, rate: float, seed: int | None, kinds: tuple[str, ...]) -> None:
        """Hit each request with probability ``rate`` by a preset drawn from ``kinds``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        unknown = [kind for kind in kinds if kind not in PRESETS]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; expected some of {sorted(PRESETS)}")
        self._random = _RandomFaults(rate, seed, kinds, random.Random(seed))

    def clear(self) -> None:
        """Disarm every scripted and random fault."""
        self._armed.clear()
        self._random = None

    def armed(self) -> list[dict[str, Any]]:
        """The armed faults with their remaining counts, for the admin API."""
        listed = [a.fault.to_json() | {"remaining": a.remaining} for a in self._armed]
        if self._random is not None:
            r = self._random
            listed.append(
                {"kind": "random", "rate": r.rate, "seed": r.seed, "kinds": list(r.kinds)}
            )
        return listed

    def take(self, request: RequestInfo) -> dict[Category, Fault]:
        """Pick (and use up) the faults that hit ``request``, at most one per category."""
        chosen: dict[Category, Fault] = {}
        for armed in self._armed:
            fault = armed.fault
            if fault.category in chosen or not fault.matches(request):
                continue
            chosen[fault.category] = fault
            if armed.remaining is not None and fault.category != "after_charge":
                armed.remaining -= 1
        self._armed = [a for a in self._armed if a.remaining is None or a.remaining > 0]
        if self._random is not None:
            self._draw_random(self._random, request, chosen)
        return chosen

    def consume(self, fault: Fault) -> bool:
        """Use up one hit of an ``after_charge`` fault; ``False`` if none is left."""
        if fault.id == 0:  # a random preset, not an armed fault
            return True
        for armed in self._armed:
            if armed.fault.id == fault.id:
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._armed.remove(armed)
                return True
        return False  # another request used it up meanwhile

    @staticmethod
    def _draw_random(r: _RandomFaults, request: RequestInfo, chosen: dict[Category, Fault]) -> None:
        # One roll per request keeps a seeded run reproducible for a given request order.
        if r.rng.random() >= r.rate:
            return
        candidates = [
            PRESETS[kind]
            for kind in r.kinds
            if PRESETS[kind].applies_to(request) and PRESETS[kind].category not in chosen
        ]
        if candidates:
            fault = r.rng.choice(candidates)
            chosen[fault.category] = fault
