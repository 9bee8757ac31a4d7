"""When a failed request may be sent again, and after how long.

The whole decision is `decide`, a lookup in one table keyed by the kind of
request and what happened to it. Credits are taken when ``POST /generate`` is accepted
and are not refunded when a generation fails (async-mode docs), so a generate request
is resent only when the server said nothing was charged (429, 503: overview and
async-mode docs) or when it provably never left this machine (connect error or
timeout, pool timeout, a connection found closed before the first byte was written,
a proxy that failed to open a tunnel). GETs are always safe to resend. A certificate
that fails verification, and a proxy that refuses the tunnel (407, 403), are permanent:
nothing is retried.
"""

from __future__ import annotations

import enum
import math
import random
import re
import ssl
from collections.abc import Iterator
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

import attrs
import httpx

from nanobanana._errors import NanoBananaError, RateLimitError, ServerBusyError

__all__ = [
    "REFUSALS",
    "CallRetries",
    "Decision",
    "Outcome",
    "RequestKind",
    "RetryPolicy",
    "certificate_failure",
    "decide",
    "none_or_at_least_zero",
    "out_of_patience",
    "outcome_of_exception",
    "outcome_of_status",
    "parse_retry_after",
    "proxy_refused",
]


class RequestKind(enum.Enum):
    """What a request costs if it is accepted twice."""

    READ = "read"  # GET /models, /credits, /generate?id=: free to repeat.
    GENERATE = "generate"  # POST /generate: charged on acceptance.


class Outcome(enum.Enum):
    """What happened to one attempt, as far as retrying is concerned."""

    NOT_SENT = "not sent"  # connect error/timeout, pool timeout, proxy 502/503/504
    MAYBE_SENT = "maybe sent"  # read/write error or timeout, dropped connection
    INVALID = "invalid"  # a request that can never succeed (bad URL, unsupported scheme)
    CERTIFICATE = "certificate"  # the server's TLS certificate failed verification
    PROXY_REFUSED = "proxy refused"  # the proxy refused the tunnel (407, 403): not sent
    RATE_LIMITED = "429"
    BUSY = "503"
    SERVER_ERROR = "5xx"
    CLIENT_ERROR = "4xx"


def none_or_at_least_zero(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: None (no limit) or a number of seconds, 0 or more."""
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name!r} must be None or at least 0, not {value!r}")


@attrs.frozen
class Decision:
    """The verdict for one failed attempt."""

    retry: bool
    may_have_been_charged: bool = False


_RETRY = Decision(retry=True)
_RAISE = Decision(retry=False)
_RAISE_CHARGED = Decision(retry=False, may_have_been_charged=True)

_TABLE: dict[tuple[RequestKind, Outcome], Decision] = {
    (RequestKind.READ, Outcome.NOT_SENT): _RETRY,
    (RequestKind.READ, Outcome.MAYBE_SENT): _RETRY,
    (RequestKind.READ, Outcome.INVALID): _RAISE,
    (RequestKind.READ, Outcome.CERTIFICATE): _RAISE,
    (RequestKind.READ, Outcome.PROXY_REFUSED): _RAISE,
    (RequestKind.READ, Outcome.RATE_LIMITED): _RETRY,
    (RequestKind.READ, Outcome.BUSY): _RETRY,
    (RequestKind.READ, Outcome.SERVER_ERROR): _RETRY,
    (RequestKind.READ, Outcome.CLIENT_ERROR): _RAISE,
    (RequestKind.GENERATE, Outcome.NOT_SENT): _RETRY,
    (RequestKind.GENERATE, Outcome.MAYBE_SENT): _RAISE_CHARGED,
    (RequestKind.GENERATE, Outcome.INVALID): _RAISE,
    (RequestKind.GENERATE, Outcome.CERTIFICATE): _RAISE,
    (RequestKind.GENERATE, Outcome.PROXY_REFUSED): _RAISE,
    # 429: "nothing was charged" (PROTOCOL.md); 503: "credits are automatically refunded".
    (RequestKind.GENERATE, Outcome.RATE_LIMITED): _RETRY,
    (RequestKind.GENERATE, Outcome.BUSY): _RETRY,
    (RequestKind.GENERATE, Outcome.SERVER_ERROR): _RAISE_CHARGED,
    (RequestKind.GENERATE, Outcome.CLIENT_ERROR): _RAISE,
}


def decide(kind: RequestKind, outcome: Outcome) -> Decision:
    """May an attempt of this kind that ended this way be sent again?"""
    return _TABLE[kind, outcome]


def outcome_of_status(status: int) -> Outcome:
    """Classify an error status."""
    if status == 429:
        return Outcome.RATE_LIMITED
    if status == 503:
        return Outcome.BUSY
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.CLIENT_ERROR


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it, down the ``__cause__``/``__context__`` chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The failed certificate verification down `exc`'s chain, if there is one.

    On trio it is two links down, under trio's ``BrokenResourceError``; on asyncio
    httpx's error carries its text already.
    """
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
    return None


# A CONNECT answered with one of these will be answered so again: the proxy wants
# credentials (407), or does not allow the host (403), ... 408 and 429 pass with time.
_CONNECT_STATUS = re.compile(r"([1-5]\d\d)\b")
# SOCKS failures that will not fix themselves (httpcore's texts): wrong or missing
# credentials, and a host the proxy's rules do not allow.
_SOCKS_REFUSALS = ("username/password", "but got", "not allowed by ruleset")


def proxy_refused(exc: httpx.ProxyError) -> bool:
    """Whether the proxy refused the tunnel for good (407, 403, SOCKS authentication).

    httpx raises `httpx.ProxyError` only when the ``CONNECT`` or SOCKS handshake with
    the proxy fails, with httpcore's text: ``407 Proxy Authentication Required`` (the
    proxy's status line), ``Invalid username/password``, ``Proxy Server could not
    connect: Connection refused.``. A 4xx other than 408 and 429 is a refusal; a 5xx
    (the proxy could not reach the API) is not.
    """
    text = str(exc)
    status = _CONNECT_STATUS.match(text)
    if status is not None:
        code = int(status.group(1))
        return 400 <= code < 500 and code not in {408, 429}
    return any(marker in text for marker in _SOCKS_REFUSALS)


def outcome_of_exception(exc: httpx.HTTPError) -> Outcome:
    """Classify a transport failure by whether the request can have left the machine.

    httpx's exception is the last of a chain (httpx's, httpcore's, the socket's or
    ssl's): a certificate that failed verification is found down it, and so is the
    transport's mark for a connection found closed before any byte was written
    (``nanobanana_not_sent``). A `httpx.ProxyError` comes from the handshake with the
    proxy, before the request: nothing reached the API.
    """
    if isinstance(exc, httpx.ProxyError):
        return Outcome.PROXY_REFUSED if proxy_refused(exc) else Outcome.NOT_SENT
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        if certificate_failure(exc) is not None:
            return Outcome.CERTIFICATE
        return Outcome.NOT_SENT
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)):
        return Outcome.INVALID
    if any(getattr(e, "nanobanana_not_sent", False) for e in _causes(exc)):
        return Outcome.NOT_SENT
    return Outcome.MAYBE_SENT


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry (stamina-style: a value, not code).

    Two kinds of failure are told apart. A refusal that charged nothing (429: the
    account's limit; 503: the server's async queue) is not a failure of the call: it
    waits for capacity (``Retry-After``, else full-jitter backoff) for as long as
    ``patience`` allows, however many refusals that takes. Other retryable failures (a
    5xx on a read, a dropped connection before sending) count against ``attempts``.

    Attributes:
        attempts: total attempts per call for failures other than refusals, the first
            included (``max_retries + 1``).
        wait_initial: the backoff ceiling of the first retry, in seconds.
        wait_max: the largest backoff ceiling.
        wait_exp_base: how fast the ceiling grows per retry.
        retry_after_max: the longest ``Retry-After`` we obey; larger values are capped.
        timeout: the budget for the attempts and waits of one call after failures
            other than refusals, from its first attempt (None: no budget).
        patience: how long one call waits out refusals that charged nothing (429,
            503), from the first refusal (None: for ever). A backoff that would pass
            it ends at it, for a last attempt (a ``Retry-After`` that would pass it ends
            the call at once); when patience is spent, the
            `RateLimitError` or `ServerBusyError` says how long it waited and how many
            refusals it saw. Ten minutes by default: real generations take 10-60 s.
    """

    attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    wait_initial: float = attrs.field(default=0.5, validator=attrs.validators.ge(0.0))
    wait_max: float = attrs.field(default=30.0, validator=attrs.validators.ge(0.0))
    wait_exp_base: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    retry_after_max: float = attrs.field(default=60.0, validator=attrs.validators.ge(0.0))
    timeout: float | None = attrs.field(default=600.0, validator=none_or_at_least_zero)
    patience: float | None = attrs.field(default=600.0, validator=none_or_at_least_zero)

    def backoff(self, retry: int, rand: random.Random) -> float:
        """Full-jitter exponential backoff before retry number ``retry`` (1-based)."""
        ceiling = min(self.wait_max, self.wait_initial * self.wait_exp_base ** (retry - 1))
        return rand.uniform(0.0, ceiling)


_DELTA = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 section 10.2.3).

    Accepts delta-seconds (and, leniently, a decimal) and HTTP-dates. A date in the
    past means 0; anything above ``cap`` is capped. Garbage, negative numbers and
    non-finite values give None (the caller then backs off with jitter).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA.fullmatch(text):
        seconds = float(text)
        return min(cap, seconds) if math.isfinite(seconds) else cap
    if text[0] in "+-" or text[0].isdigit():
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" and asctime dates: HTTP-dates are always GMT.
        when = when.replace(tzinfo=timezone.utc)
    try:
        delta = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return min(cap, max(0.0, delta))


def out_of_patience(error: NanoBananaError, waited: float, refusals: int) -> NanoBananaError:
    """``error`` (a 429 or 503), saying how long the call waited and how often it was refused."""
    if isinstance(error, (RateLimitError, ServerBusyError)):
        error.waited = waited
        error.refusals = refusals
    text = (
        f"{error.message.rstrip('.')}. Gave up after waiting {waited:.0f} s for capacity "
        f"through {refusals} refusal{'s' if refusals != 1 else ''} (RetryPolicy.patience)."
    )
    error.message = text
    error.args = (text,)
    return error


#: Refusals that charged nothing: waited out with patience, not counted as failures.
REFUSALS = frozenset({Outcome.RATE_LIMITED, Outcome.BUSY})

#: How early a wait that ends at the patience deadline may wake (a clock's rounding)
#: and still count as having reached it: no second "last" attempt a hair before it.
_EARLY = 0.001


@attrs.define
class CallRetries:
    """One call's account of its retries under a `RetryPolicy`.

    Refusals that charged nothing (429, 503) are waited out until ``patience`` runs out,
    counted from the first refusal; other retryable failures count against
    ``attempts`` and the policy's ``timeout``, from the first attempt. `wait` is the one
    place that turns an outcome into "again in so many seconds" or "give up".

    Attributes:
        failures: retryable failures other than refusals so far.
        refusals: 429s and 503s so far.
    """

    policy: RetryPolicy
    rand: random.Random
    failures: int = 0
    refusals: int = 0
    first_attempt: float | None = None
    first_refusal: float | None = None

    @property
    def retrying(self) -> bool:
        """Whether an attempt has failed already (the next one is a retry)."""
        return self.failures + self.refusals > 0

    def started(self, now: float) -> None:
        """An attempt is being sent at ``now``."""
        if self.first_attempt is None:
            self.first_attempt = now

    def wait(
        self,
        error: NanoBananaError,
        outcome: Outcome,
        *,
        now: float,
        retry_after: float | None,
        own_load: bool = False,
    ) -> float:
        """Seconds until the next attempt after ``error``; raises it when the call must end.

        Args:
            error: what the attempt ended with (a retryable outcome).
            outcome: its kind.
            now: the monotonic time.
            retry_after: the server's ``Retry-After``, parsed.
            own_load: a 503 caused by this client's own jobs filling the server's task
                cap: nothing to wait out (the caller queues for room), and patience
                starts afresh.

        Raises:
            NanoBananaError: ``error``, when ``attempts`` or ``timeout`` are spent, or
                (via `out_of_patience`) saying how long it waited, when ``patience`` is.
        """
        policy = self.policy
        if outcome in REFUSALS:
            self.refusals += 1
            if own_load:
                self.first_refusal = None
                return 0.0
            if self.first_refusal is None:
                self.first_refusal = now
            if retry_after is not None:
                wait = retry_after
            else:
                wait = policy.backoff(self.refusals, self.rand)
            if policy.patience is not None:
                deadline = self.first_refusal + policy.patience
                # A backoff that would pass the deadline ends at it, for one last attempt:
                # giving up at once would leave part of the patience unused. Not so a
                # Retry-After that passes it: the server said it refuses until then (and
                # a 429's cool-down would hold the last attempt past the deadline).
                late = retry_after is not None and now + wait > deadline
                if late or now >= deadline - _EARLY:
                    raise out_of_patience(error, now - self.first_refusal, self.refusals)
                wait = min(wait, deadline - now)
            return wait
        self.failures += 1
        if self.failures >= policy.attempts:
            raise error
        wait = policy.backoff(self.failures, self.rand)
        started = self.first_attempt if self.first_attempt is not None else now
        if policy.timeout is not None and now + wait > started + policy.timeout:
            raise error
        return wait
