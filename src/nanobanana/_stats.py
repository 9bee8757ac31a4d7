"""What a client did: the counters of `AsyncNanoBanana.stats`, and structured log records.

`Requester._send` (``_http.py``) calls one `Recorder` hook at each step of a request:
``sending`` once a governor slot is held, ``answered`` when a status came back,
``failed`` when the transport failed, ``retrying`` before the wait of a retry; an
image download (``_download.py``) calls ``download_retrying`` before the wait of
each of its retries. Each hook

- updates the counters, under a lock: a `ClientStats` snapshot may be taken from any
  task (or thread) at any time;
- writes one record to the ``nanobanana`` logger whose fields (``extra=``) say what
  happened, so that logs shipped as JSON are counted without parsing messages; and
- updates the `CallTrace` of the generation call under way, if any: whether its
  request may have reached the server, and whether the server accepted it. The spend
  cap (``_budget.py``) reads it to tell a call that was charged from one that never
  left, also when the call was cancelled.

No field of a record holds the API key: the fields are the method, the path without
the query, numbers, and a generation id that is checked not to be the key. Nor does
one hold an image URL's query, where a signed URL keeps its signature.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import types
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import attrs

from nanobanana._logs import emit, log, loggable_id
from nanobanana._retry import Decision, Outcome, RequestKind, decide, outcome_of_status

if TYPE_CHECKING:
    import httpx

    from nanobanana._admission import GovernorStats
    from nanobanana._budget import Ledger

__all__ = [
    "REASONS",
    "CallTrace",
    "ClientStats",
    "FrozenCounts",
    "Recorder",
    "tracing",
]

#: The reasons of retries, as `ClientStats.retries` and the ``reason`` field name them.
REASONS: Mapping[Outcome, str] = types.MappingProxyType(
    {
        Outcome.RATE_LIMITED: "429",
        Outcome.BUSY: "503",
        Outcome.SERVER_ERROR: "5xx",
        Outcome.NOT_SENT: "connect",  # connect error or timeout, pool timeout
        Outcome.MAYBE_SENT: "network",  # read/write error or timeout, dropped connection
        Outcome.INVALID: "invalid",
        Outcome.CERTIFICATE: "certificate",  # never retried, but failures are counted
        Outcome.PROXY_REFUSED: "proxy",  # the same
        Outcome.CLIENT_ERROR: "4xx",
    }
)

# Bodies larger than this are not parsed for a generation id to log.
_MAX_PEEK = 64 * 1024


class FrozenCounts(Mapping[str, int]):
    """A read-only mapping of counts by name: `ClientStats.requests` and ``retries``.

    Unlike `types.MappingProxyType`, it pickles and deep-copies (stats are shipped to
    other processes: multiprocessing, Celery), and it hashes, as a frozen value does.
    It equals any mapping with the same items: ``stats.requests == {"GET /models": 1}``.
    """

    __slots__ = ("_counts",)
    _counts: dict[str, int]

    def __init__(self, counts: Mapping[str, int] | None = None, /) -> None:
        object.__setattr__(self, "_counts", dict(counts or {}))

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenCounts):
            return self._counts == other._counts
        if isinstance(other, Mapping):
            return self._counts == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._counts.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._counts!r})"

    def __reduce__(self) -> tuple[type[FrozenCounts], tuple[dict[str, int]]]:
        return (type(self), (dict(self._counts),))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")


@attrs.frozen(kw_only=True)
class ClientStats:
    """A snapshot of a client's counters since it was created (`AsyncNanoBanana.stats`).

    A client and its ``with_options()`` copies share one set of counters, as they
    share one connection pool, governor and credits ledger; only ``credits_remaining``
    is that of the client asked (a copy may have a cap of its own).

    Attributes:
        requests: API requests sent, by endpoint (``"POST /generate"``,
            ``"GET /generate"``, ``"GET /credits"``, ``"GET /models"``); each retry is
            one more. Image downloads go to the CDN and are not counted.
        retries: retries by reason: ``"429"``, ``"503"``, ``"5xx"``, ``"connect"``
            (failed before the request left), ``"network"`` (a read failed after it
            was sent; only reads are resent then). Image downloads' retries are
            counted too, by the same reasons (a body cut short is ``"network"``, a
            page that is no image ``"5xx"``); their log records name the CDN's path.
        rate_limited: 429 answers seen (the account's concurrency limit).
        server_busy: 503 answers seen (the server's async queue was full).
        credits_spent: credits charged: the ``creditsUsed`` the server reported, else
            the estimate, for a generation it accepted without saying (a stream's
            result) or whose fate is unknown (see ``maybe_charged``). Estimates are
            made when a cap applies (``max_credits``); ``uncounted_charges`` counts
            the generations left out for want of one.
        credits_reserved: credits reserved by generation calls under way.
        credits_remaining: what this client may still spend under its caps (its
            own ``max_credits`` and those of the clients it was copied from), or None
            without a cap.
        maybe_charged: generation calls that ended without knowing whether they were
            charged (a 500, a read timeout or a dropped connection after sending, a
            cancellation while the request was out).
        uncounted_charges: generations charged for an amount neither reported nor
            estimated, so not in ``credits_spent``.
        time_queued: seconds requests spent waiting for a slot of the governor, in
            total.
        in_flight: API requests in flight now (holding a governor slot).
        queued: API requests waiting for a slot now.
    """

    requests: Mapping[str, int] = attrs.field(converter=FrozenCounts)
    retries: Mapping[str, int] = attrs.field(converter=FrozenCounts)
    rate_limited: int
    server_busy: int
    credits_spent: int
    credits_reserved: int
    credits_remaining: int | None
    maybe_charged: int
    uncounted_charges: int
    time_queued: float
    in_flight: int
    queued: int


@attrs.define
class CallTrace:
    """What one generation call's requests did, as far as its charge is concerned.

    ``sent``: a request is, or may have been, received by the server, and no answer
    since said that nothing was charged. ``accepted``: a 2xx came back (accepted,
    so charged).
    """

    sent: bool = False
    accepted: bool = False


_TRACE: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar(
    "nanobanana_call_trace", default=None
)


@contextlib.contextmanager
def tracing(trace: CallTrace) -> Iterator[CallTrace]:
    """Make ``trace`` the trace of the requests this task sends inside the block."""
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def _generation_id(response: httpx.Response) -> str | None:
    """The generation a request names (``?id=``) or a 2xx answer created, for logs."""
    request = response.request
    found: Any = request.url.params.get("id")
    if found is None and response.status_code < 300:
        with contextlib.suppress(Exception):  # not read (a stream), not JSON, ...
            content = response.content
            if len(content) <= _MAX_PEEK:
                body = json.loads(content)
                found = body.get("generationId") if isinstance(body, dict) else None
    key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return loggable_id(found, key)


def _requested_id(exc: BaseException) -> str | None:
    """The ``?id=`` of the request an httpx error was raised for, if any."""
    try:
        request = exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when it has none
        return None
    found = request.url.params.get("id")
    return found if isinstance(found, str) and found else None


class Recorder:
    """The counters of one client (shared by its copies), and the hooks that feed them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._retries: dict[str, int] = {}
        self._rate_limited = 0
        self._server_busy = 0
        self._time_queued = 0.0

    def sending(self, method: str, path: str, kind: RequestKind, *, queued: float) -> None:
        """An attempt holds its governor slot (after ``queued`` seconds) and goes out."""
        endpoint = f"{method} {path}"
        with self._lock:
            self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
            self._time_queued += max(0.0, queued)
        # Only a POST /generate can charge: a submit waiting for room polls jobs under
        # its trace, and those polls must not make its refunded request look sent.
        trace = _TRACE.get()
        if trace is not None and kind is RequestKind.GENERATE:
            trace.sent = True

    def answered(
        self,
        method: str,
        path: str,
        kind: RequestKind,
        attempt: int,
        response: httpx.Response,
        *,
        elapsed: float,
    ) -> None:
        """An attempt got an answer with a status (a 2xx or an error)."""
        status = response.status_code
        if status in (429, 503):
            with self._lock:
                if status == 429:
                    self._rate_limited += 1
                else:
                    self._server_busy += 1
        charged = False
        if status >= 300:
            charged = decide(kind, outcome_of_status(status)).may_have_been_charged
        trace = _TRACE.get()
        if trace is not None and kind is RequestKind.GENERATE:
            if status < 300:
                trace.accepted = True
            elif not charged:
                trace.sent = False  # 429, 503, 4xx: refused, nothing charged
        level = logging.DEBUG if status < 300 else logging.INFO
        if log.isEnabledFor(level):
            emit(
                level,
                "%s %s -> %d in %.0f ms",
                method,
                path,
                status,
                elapsed * 1000,
                event="response",
                method=method,
                path=path,
                status=status,
                attempt=attempt,
                elapsed=elapsed,
                may_have_been_charged=charged,
                generation_id=_generation_id(response),
            )

    def failed(
        self,
        method: str,
        path: str,
        attempt: int,
        exc: BaseException,
        verdict: Decision,
        *,
        kind: RequestKind,
    ) -> None:
        """An attempt failed in the transport: no status came back."""
        trace = _TRACE.get()
        if trace is not None and kind is RequestKind.GENERATE and not verdict.may_have_been_charged:
            trace.sent = False  # it never left (connect error), or could not be sent
        if log.isEnabledFor(logging.INFO):
            emit(
                logging.INFO,
                "%s %s -> %s",
                method,
                path,
                type(exc).__name__,
                event="error",
                method=method,
                path=path,
                attempt=attempt,
                error=type(exc).__name__,
                may_have_been_charged=verdict.may_have_been_charged,
                generation_id=_requested_id(exc),
            )

    def _count_retry(self, outcome: Outcome) -> str:
        """Count a retry under its reason (``retries`` of the stats), and return it."""
        reason = REASONS[outcome]
        with self._lock:
            self._retries[reason] = self._retries.get(reason, 0) + 1
        return reason

    def retrying(
        self,
        method: str,
        path: str,
        attempt: int,
        outcome: Outcome,
        wait: float,
        *,
        attempts: int,
        refusals: int | None = None,
    ) -> None:
        """Attempt ``attempt`` failed for ``outcome``; the next one follows in ``wait`` s.

        ``refusals``: for a 429 or 503 (charged nothing, waited out with patience rather
        than counted against ``attempts``), how many the call has met so far.
        """
        reason = self._count_retry(outcome)
        if log.isEnabledFor(logging.INFO):
            which = (
                f"refusal {refusals}, waited out"
                if refusals is not None
                else f"attempt {attempt + 1} of {attempts}"
            )
            emit(
                logging.INFO,
                "retrying %s %s in %.2f s after %s (%s)",
                method,
                path,
                wait,
                outcome.value,
                which,
                event="retry",
                method=method,
                path=path,
                attempt=attempt,
                wait=wait,
                reason=reason,
            )

    def download_retrying(
        self,
        url: str,
        attempt: int,
        outcome: Outcome,
        wait: float,
        *,
        status: int | None,
        generation_id: str | None,
    ) -> None:
        """Attempt ``attempt`` of an image download failed; the next follows in ``wait`` s.

        ``url`` is the image's URL without its query (a signed URL's signature is
        there, ``_download._redact``): it names the CDN in the message, and its path is
        the ``path`` field. ``status`` is that of the failed answer (None when the
        transport failed): a download has no "response" record of its own.
        """
        reason = self._count_retry(outcome)
        emit(
            logging.INFO,
            "retrying download GET %s in %.2f s after %s (attempt %d)",
            url,
            wait,
            outcome.value,
            attempt,
            event="retry",
            method="GET",
            path=urlsplit(url).path or "/",
            status=status,
            attempt=attempt,
            wait=wait,
            reason=reason,
            generation_id=generation_id,
        )

    def snapshot(self, *, governor: GovernorStats, ledger: Ledger) -> ClientStats:
        """The counters now, with the governor's and the ledger's figures."""
        with self._lock:
            requests = dict(self._requests)
            retries = dict(self._retries)
            rate_limited, server_busy = self._rate_limited, self._server_busy
            time_queued = self._time_queued
        return ClientStats(
            requests=requests,
            retries=retries,
            rate_limited=rate_limited,
            server_busy=server_busy,
            credits_spent=ledger.spent,
            credits_reserved=ledger.reserved,
            credits_remaining=ledger.remaining(),
            maybe_charged=ledger.maybe_charged,
            uncounted_charges=ledger.uncounted_charges,
            time_queued=time_queued,
            in_flight=governor.active,
            queued=governor.waiting,
        )
