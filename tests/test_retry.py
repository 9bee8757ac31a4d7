import random
import ssl
from datetime import datetime, timezone
from email.utils import format_datetime

import httpcore
import httpx
import pytest

from nanobanana import (
    APIConnectionError,
    InternalServerError,
    RateLimitError,
    ServerBusyError,
)
from nanobanana._retry import (
    CallRetries,
    Outcome,
    RequestKind,
    RetryPolicy,
    decide,
    outcome_of_exception,
    outcome_of_status,
    parse_retry_after,
)
from nanobanana._transport._connection import NotSentError

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CAP = 60.0

READ, GEN = RequestKind.READ, RequestKind.GENERATE


@pytest.mark.parametrize(
    ("kind", "outcome", "retry", "charged"),
    [
        (READ, Outcome.NOT_SENT, True, False),
        (READ, Outcome.MAYBE_SENT, True, False),
        (READ, Outcome.INVALID, False, False),
        (READ, Outcome.RATE_LIMITED, True, False),
        (READ, Outcome.BUSY, True, False),
        (READ, Outcome.SERVER_ERROR, True, False),
        (READ, Outcome.CLIENT_ERROR, False, False),
        (READ, Outcome.CERTIFICATE, False, False),
        (READ, Outcome.PROXY_REFUSED, False, False),
        (GEN, Outcome.NOT_SENT, True, False),
        (GEN, Outcome.MAYBE_SENT, False, True),
        (GEN, Outcome.INVALID, False, False),
        (GEN, Outcome.RATE_LIMITED, True, False),
        (GEN, Outcome.BUSY, True, False),
        (GEN, Outcome.SERVER_ERROR, False, True),
        (GEN, Outcome.CLIENT_ERROR, False, False),
        (GEN, Outcome.CERTIFICATE, False, False),
        (GEN, Outcome.PROXY_REFUSED, False, False),
    ],
)
def test_decision_table_resends_generate_only_when_nothing_was_charged(
    kind, outcome, retry, charged
):
    verdict = decide(kind, outcome)
    assert verdict.retry is retry
    assert verdict.may_have_been_charged is charged


def test_every_kind_and_outcome_has_a_decision():
    for kind in RequestKind:
        for outcome in Outcome:
            decide(kind, outcome)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.CLIENT_ERROR),
        (401, Outcome.CLIENT_ERROR),
        (402, Outcome.CLIENT_ERROR),
        (403, Outcome.CLIENT_ERROR),
        (404, Outcome.CLIENT_ERROR),
        (429, Outcome.RATE_LIMITED),
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (503, Outcome.BUSY),
        (504, Outcome.SERVER_ERROR),
    ],
)
def test_status_codes_map_to_outcomes(status, outcome):
    assert outcome_of_status(status) is outcome


REQ = httpx.Request("POST", "https://api.example/generate")


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (httpx.ConnectError("refused", request=REQ), Outcome.NOT_SENT),
        (httpx.ConnectTimeout("slow", request=REQ), Outcome.NOT_SENT),
        (httpx.PoolTimeout("pool", request=REQ), Outcome.NOT_SENT),
        (httpx.ReadTimeout("read", request=REQ), Outcome.MAYBE_SENT),
        (httpx.WriteTimeout("write", request=REQ), Outcome.MAYBE_SENT),
        (httpx.ReadError("reset", request=REQ), Outcome.MAYBE_SENT),
        (httpx.WriteError("broken pipe", request=REQ), Outcome.MAYBE_SENT),
        (httpx.RemoteProtocolError("disconnected", request=REQ), Outcome.MAYBE_SENT),
        (httpx.UnsupportedProtocol("ftp", request=REQ), Outcome.INVALID),
        (httpx.LocalProtocolError("bad header", request=REQ), Outcome.INVALID),
    ],
)
def test_transport_failures_are_classified_by_whether_the_request_left(exc, outcome):
    assert outcome_of_exception(exc) is outcome


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        # httpcore's texts: the CONNECT status line, or what the SOCKS handshake said.
        ("407 Proxy Authentication Required", Outcome.PROXY_REFUSED),
        ("403 Forbidden", Outcome.PROXY_REFUSED),
        ("400 Bad Request", Outcome.PROXY_REFUSED),
        ("408 Request Timeout", Outcome.NOT_SENT),
        ("429 Too Many Requests", Outcome.NOT_SENT),
        ("502 Bad Gateway", Outcome.NOT_SENT),
        ("503 Service Unavailable", Outcome.NOT_SENT),
        ("504 Gateway Timeout", Outcome.NOT_SENT),
        ("Invalid username/password", Outcome.PROXY_REFUSED),
        ("Requested NO AUTHENTICATION REQUIRED from proxy server, but got USERNAME/PASSWORD.",
         Outcome.PROXY_REFUSED),
        ("Proxy Server could not connect: Connection not allowed by ruleset.",
         Outcome.PROXY_REFUSED),
        ("Proxy Server could not connect: Connection refused.", Outcome.NOT_SENT),
        ("Proxy Server could not connect: Host unreachable.", Outcome.NOT_SENT),
    ],
)  # fmt: skip
def test_a_proxy_error_never_reached_the_api_and_a_refusal_is_permanent(text, outcome):
    exc = httpx.ProxyError(text, request=REQ)
    assert outcome_of_exception(exc) is outcome
    assert decide(GEN, outcome).may_have_been_charged is False


def _chained(outer: Exception, *causes: BaseException) -> Exception:
    # As httpx raises them: httpx's error from httpcore's, from the socket's or ssl's.
    current = outer
    for cause in causes:
        current.__cause__ = cause
        current = cause
    return outer


def test_a_certificate_failure_down_the_chain_is_permanent():
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    exc = _chained(httpx.ConnectError("tls", request=REQ), httpcore.ConnectError("tls"), verify)
    assert outcome_of_exception(exc) is Outcome.CERTIFICATE
    # trio wraps the ssl error in its own (__context__ rather than __cause__ is followed too).
    inner = httpcore.ConnectError("tls")
    inner.__context__ = verify
    assert outcome_of_exception(_chained(httpx.ConnectError("x", request=REQ), inner)) is (
        Outcome.CERTIFICATE
    )
    other = _chained(httpx.ConnectError("x", request=REQ), ssl.SSLError(1, "handshake"))
    assert outcome_of_exception(other) is Outcome.NOT_SENT


def test_a_write_the_transport_marks_as_never_sent_may_be_resent():
    not_sent = NotSentError("Connection closed before the request was sent.")
    exc = _chained(httpx.WriteError("closed", request=REQ), not_sent)
    assert outcome_of_exception(exc) is Outcome.NOT_SENT
    assert decide(GEN, outcome_of_exception(exc)).retry is True
    plain = _chained(httpx.WriteError("closed", request=REQ), httpcore.WriteError("closed"))
    assert outcome_of_exception(plain) is Outcome.MAYBE_SENT


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, tz=timezone.utc), usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("1", 1.0),
        ("  7 ", 7.0),
        ("120", CAP),  # capped
        ("99999999999999999999999999", CAP),  # huge
        ("1.5", 1.5),  # lenient decimal
        ("-1", None),  # negative
        ("-0.5", None),
        ("+5", None),
        ("abc", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("5 seconds", None),
        ("0x10", None),
        (_http_date(NOW + 30), 30.0),  # IMF-fixdate in the future
        (_http_date(NOW - 30), 0.0),  # past date
        (_http_date(NOW + 3600), CAP),  # far future is capped
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),
        ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),  # obsolete RFC 850 form
        ("Tue Nov 14 22:13:50 2023", 30.0),  # asctime form, no zone: GMT
        ("Tue, 14 Nov 2023 22:13:50 +0000", 30.0),
        ("Tue, 32 Nov 2023 22:13:50 GMT", None),  # invalid day
        ("Tue, 14 Nov 2023 25:13:50 GMT", None),  # invalid hour
        ("Mon, 01 Jan 1900 00:00:00 GMT", 0.0),  # long past
        ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),  # far future
        ("yesterday", None),
    ],
)
def test_retry_after_both_forms_capped_and_garbage_rejected(header, expected):
    result = parse_retry_after(header, now=NOW, cap=CAP)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_backoff_is_full_jitter_below_a_growing_capped_ceiling():
    policy = RetryPolicy(wait_initial=0.5, wait_max=4.0, wait_exp_base=2.0)
    rand = random.Random(7)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        waits = [policy.backoff(retry, rand) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # really spread over the range
        assert min(waits) < ceiling * 0.2


def test_retry_policy_rejects_zero_attempts():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# -- CallRetries: one call's account of its retries ---------------------------------------


def _refusal():
    return RateLimitError(
        "Too many requests.",
        response=_answer(429),
        body=None,
        retry_after=3.0,
        limit=1,
        active=1,
    )


def _answer(status):
    return httpx.Response(status, request=httpx.Request("GET", "https://api.test/x"))


def _busy():
    return ServerBusyError(
        "busy", response=_answer(503), body=None, retry_after=None, active_tasks=10
    )


def test_refusals_are_waited_out_until_patience_runs_out_then_say_so():
    retries = CallRetries(RetryPolicy(attempts=1, patience=10.0), random.Random(0))
    now, waits = 0.0, []
    for _ in range(3):
        waits.append(retries.wait(_refusal(), Outcome.RATE_LIMITED, now=now, retry_after=3.0))
        now += waits[-1]
    assert waits == [3.0, 3.0, 3.0]  # attempts=1 does not count refusals
    # The server says not before 12 s, past the 10 s of patience: no point waiting.
    with pytest.raises(RateLimitError, match=r"waiting 9 s for capacity through 4 refusals") as e:
        retries.wait(_refusal(), Outcome.RATE_LIMITED, now=now, retry_after=3.0)
    assert (e.value.waited, e.value.refusals) == (9.0, 4)


@pytest.mark.parametrize("seed", range(20))
def test_a_backoff_that_would_pass_patience_ends_at_it_for_a_last_attempt(seed):
    # patience=1.5 gave up as soon as the next jittered wait would pass it (after 0.87
    # to 1.41 s); now that wait is cut to the deadline, and the call tries once more.
    policy = RetryPolicy(patience=1.5, wait_initial=1.0)
    retries = CallRetries(policy, random.Random(seed))
    now, attempts = 0.0, [0.0]

    def refused_until_it_gives_up():
        nonlocal now
        while True:
            now += retries.wait(_busy(), Outcome.BUSY, now=now, retry_after=None)
            attempts.append(now)

    with pytest.raises(ServerBusyError) as info:
        refused_until_it_gives_up()
    assert attempts[-1] == pytest.approx(1.5)  # the last attempt, at the deadline
    assert all(a < 1.5 for a in attempts[:-1])
    assert info.value.refusals == len(attempts)
    assert info.value.waited == pytest.approx(1.5)


def test_a_last_attempt_that_wakes_a_hair_before_the_deadline_is_the_last():
    retries = CallRetries(RetryPolicy(patience=1.5, wait_initial=10.0), random.Random(0))
    retries.wait(_busy(), Outcome.BUSY, now=0.0, retry_after=None)
    last = retries.wait(_busy(), Outcome.BUSY, now=0.87, retry_after=None)
    assert last == pytest.approx(0.63)
    with pytest.raises(ServerBusyError):  # 0.87 + 0.63, rounded down: no second "last" try
        retries.wait(_busy(), Outcome.BUSY, now=1.4999999, retry_after=None)


def test_no_patience_gives_up_at_the_first_refusal_even_told_to_retry_at_once():
    retries = CallRetries(RetryPolicy(patience=0.0), random.Random(0))
    with pytest.raises(RateLimitError):  # (it retried for ever, with Retry-After: 0)
        retries.wait(_refusal(), Outcome.RATE_LIMITED, now=5.0, retry_after=0.0)


def test_failures_count_against_attempts_and_end_with_the_error_itself():
    retries = CallRetries(RetryPolicy(attempts=3, wait_initial=1.0), random.Random(0))
    error = InternalServerError("down", response=_answer(500), body=None)
    retries.started(0.0)
    waits = [retries.wait(error, Outcome.SERVER_ERROR, now=0.0, retry_after=None)]
    waits.append(retries.wait(error, Outcome.SERVER_ERROR, now=0.0, retry_after=None))
    with pytest.raises(InternalServerError) as info:
        retries.wait(error, Outcome.SERVER_ERROR, now=0.0, retry_after=None)
    assert info.value is error
    assert all(0.0 <= w <= 2.0 for w in waits)
    assert (retries.failures, retries.refusals) == (3, 0)


def test_a_failure_past_the_timeout_from_the_first_attempt_ends_the_call():
    retries = CallRetries(RetryPolicy(attempts=10, timeout=5.0, wait_initial=0.0), random.Random(0))
    retries.started(100.0)
    error = APIConnectionError("gone")
    assert retries.wait(error, Outcome.NOT_SENT, now=104.0, retry_after=None) == 0.0
    with pytest.raises(APIConnectionError):
        retries.wait(error, Outcome.NOT_SENT, now=105.5, retry_after=None)


def test_a_503_of_our_own_load_waits_for_room_and_restarts_patience():
    retries = CallRetries(RetryPolicy(patience=1.0), random.Random(0))
    busy = ServerBusyError(
        "busy", response=_answer(503), body=None, retry_after=None, active_tasks=10
    )
    assert retries.wait(busy, Outcome.BUSY, now=0.0, retry_after=None, own_load=True) == 0.0
    # Later, others' load: patience counts from this refusal, not the first one.
    assert retries.wait(busy, Outcome.BUSY, now=50.0, retry_after=0.5, own_load=False) == 0.5
    assert retries.retrying
