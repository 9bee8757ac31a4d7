"""Sending API requests: auth, the governor, the retry loop, error mapping, logging.

Every API request of a client goes through `Requester.call` (JSON answers) or
`Requester.stream` (SSE). Both share one loop, `Requester._send`, which
asks `nanobanana._retry.decide` what to do after each failure.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from nanobanana._errors import (
    APIConnectionError,
    APITimeoutError,
    MissingAPIKeyError,
    NanoBananaError,
    ProxyError,
    RateLimitError,
    ServerBusyError,
    TLSCertificateError,
    UnexpectedResponseError,
    make_status_error,
)
from nanobanana._redact import forget_key, scrub_body, scrub_error, without_key
from nanobanana._responses import MAX_ANSWER_SIZE, StreamContext, read_at_most
from nanobanana._retry import (
    REFUSALS,
    CallRetries,
    Outcome,
    RequestKind,
    RetryPolicy,
    certificate_failure,
    decide,
    outcome_of_exception,
    outcome_of_status,
    parse_retry_after,
)
from nanobanana._stats import Recorder
from nanobanana._watch import FREE_OUTCOMES, GENERATE_WATCH

if TYPE_CHECKING:
    from nanobanana._admission import Governor, Slot, TaskReservation
    from nanobanana._clock import Clock
    from nanobanana._config import Secret

__all__ = [
    "Binding",
    "OutOfTimeError",
    "Requester",
    "current_loop_token",
]

CERTIFICATE_HINT = (
    "The server's TLS certificate was not trusted, so nothing was sent and nothing is "
    "retried. Behind a proxy that inspects TLS, trust its CA with verify='ca.pem' or "
    "SSL_CERT_FILE."
)

PROXY_HINT = (
    "The proxy refused to open a tunnel to the API, so nothing was sent and nothing is "
    "retried. Check the proxy's credentials (http://user:password@proxy:port, in "
    "proxy= or HTTPS_PROXY) and that it allows the API's host, or set NO_PROXY if the "
    "API should be reached directly."
)


class OutOfTimeError(Exception):
    """Internal: a retry would have gone past the caller's deadline (``job.wait``)."""

    def __init__(self, error: NanoBananaError) -> None:
        super().__init__(str(error))
        self.error = error


def current_loop_token() -> object:
    """An object that identifies the running event loop (asyncio or trio)."""
    asyncio = sys.modules.get("asyncio")
    try:
        if asyncio is None:
            raise RuntimeError  # noqa: TRY301 - asyncio was never imported: not running
        return asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        if trio is None:
            raise
        return trio.lowlevel.current_trio_token()


_E = TypeVar("_E", bound=NanoBananaError)
_MAX_CACHED_URLS = 32


def _describe(exc: httpx.HTTPError) -> str:
    """``ReadTimeout: the text.``: the exception's name and text, as one sentence.

    For a certificate that failed verification, the text is the reason OpenSSL gave
    (``self-signed certificate``, ``Hostname mismatch, ...``), the same on every event
    loop: on trio httpx's own text is empty (trio wraps the ssl error in its
    ``BrokenResourceError``).
    """
    failure = certificate_failure(exc)
    if failure is not None:
        reason = getattr(failure, "verify_message", None) or failure.strerror or str(failure)
        text = f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason}"
    else:
        text = str(exc).rstrip(".") or type(exc).__name__
    return f"{type(exc).__name__}: {text.rstrip('.')}."


class Binding:
    """What a client and its ``with_options()`` copies share: closed, and the event loop."""

    def __init__(self) -> None:
        self.closed = False
        self.loop: object | None = None


class Requester:
    """Sends API requests for one client; holds no per-request state."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: httpx.URL,
        api_key: Secret | None,
        governor: Governor,
        retry: RetryPolicy,
        clock: Clock,
        rand: random.Random,
        timeout: httpx.Timeout | None,
        headers: Mapping[str, str],
        recorder: Recorder | None = None,
        borrowed: bool = False,
    ) -> None:
        self.http = http
        self.borrowed = borrowed
        self.base_url = str(base_url)
        self.api_key = api_key
        self.governor = governor
        self.retry = retry
        self.clock = clock
        self.rand = rand
        self.headers = dict(headers)
        self._extensions: dict[str, Any] = (
            {"timeout": timeout.as_dict()} if timeout is not None else {}
        )
        self.recorder = recorder or Recorder()
        self.binding = Binding()
        # Parsed once per path: httpx parses a URL given as text on every request (its
        # host through `ipaddress` too), a fifth of a fan-out's CPU in the profile; a
        # `httpx.URL` is taken as it is. Paths are a handful (/generate, /credits, ...).
        self._urls: dict[str, httpx.URL] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether this requester, or the client it was derived from, was closed."""
        return self._closed or self.binding.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value

    def derive(self, *, retry: RetryPolicy, timeout: httpx.Timeout | None) -> Requester:
        """A requester for a ``with_options()`` copy: its own retry policy and timeout.

        It shares all else: the pool, the governor, the counters, and the `Binding`
        (closing the client closes its copies; all are bound to one event loop).
        """
        derived = copy.copy(self)
        derived.retry = retry
        derived._extensions = {"timeout": timeout.as_dict()} if timeout is not None else {}
        derived._closed = False
        return derived

    def _check_usable(self) -> None:
        if self.closed:
            raise NanoBananaError("This AsyncNanoBanana client is closed; create a new one.")
        token = current_loop_token()
        binding = self.binding
        if binding.loop is None:
            binding.loop = token
        elif token is not binding.loop:
            raise NanoBananaError(
                "This AsyncNanoBanana client was first used in another event loop. Its "
                "connections belong to that loop: create one client per event loop "
                "(for example inside the `asyncio.run()` that uses it)."
            )

    def _build(
        self,
        method: str,
        path: str,
        *,
        json_body: Any,
        params: Mapping[str, str] | None,
        auth: bool,
        accept: str | None = None,
    ) -> httpx.Request:
        headers = self.headers
        if accept is not None:
            # identity: an event stream compressed on the way would arrive in bursts
            # (a borrowed client's defaults would ask for gzip otherwise).
            headers = {
                **headers,
                "Accept": accept,
                "Cache-Control": "no-store",
                "Accept-Encoding": "identity",
            }
        if auth:
            if self.api_key is None:
                raise MissingAPIKeyError(
                    "No API key: pass api_key=... or set NANOBANANA_API_KEY "
                    "(NANO_BANANA_API_KEY and NB_API_KEY are read too)."
                )
            headers = {**headers, "Authorization": f"Bearer {self.api_key.reveal()}"}
        content = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {**headers, "Content-Type": "application/json"}
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.base_url + path)
            if len(self._urls) < _MAX_CACHED_URLS:
                self._urls[path] = url
        if self.borrowed:
            # Built by the borrowed client, so that its default headers, cookies and
            # params apply; ours (Authorization above all) win where both are set.
            return self.http.build_request(
                method,
                url,
                params=params,
                headers=headers,
                content=content,
                extensions=self._extensions,
            )
        # Our own client has nothing to merge: skip the merging (it showed in the
        # fan-out profile).
        return httpx.Request(
            method,
            url,
            params=params,
            headers=headers,
            content=content,
            extensions=self._extensions,
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        kind: RequestKind,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        deadline: float | None = None,
        holds: bool = False,
        task: TaskReservation | None = None,
    ) -> Any:
        """Send a request (retrying as the table allows) and return its JSON body.

        ``holds``: the server holds the request for long (a sync generation). ``task``:
        the request starts an async task, in that room.
        """
        response, _ = await self._send(
            method,
            path,
            kind=kind,
            json_body=json_body,
            params=params,
            auth=auth,
            deadline=deadline,
            stream=False,
            holds=holds,
            task=task,
        )
        if len(response.content) > MAX_ANSWER_SIZE:
            raise UnexpectedResponseError(
                f"Unexpected response to {method} {path}: {response.status_code} with a "
                f"body over {MAX_ANSWER_SIZE:,} bytes; the rest was not read.",
                body=None,
                # A 2xx to POST /generate was accepted, and so charged.
                may_have_been_charged=kind is RequestKind.GENERATE,
            )
        try:
            return json.loads(response.content)
        except ValueError:
            raise self._scrub(
                UnexpectedResponseError(
                    f"Unexpected response to {method} {path}: {response.status_code} with a "
                    f"body that is not JSON "
                    f"({response.headers.get('content-type', 'no content type')}).",
                    body=response.text[:500],
                    # A 2xx to POST /generate was accepted, and so charged.
                    may_have_been_charged=kind is RequestKind.GENERATE,
                )
            ) from None

    @staticmethod
    def _closed_error(method: str, path: str) -> APIConnectionError:
        return APIConnectionError(
            f"{method} {path} was not sent: the client was closed while the call was under "
            "way (aclose() or the end of `async with`)."
        )

    def _scrub(self, error: _E) -> _E:
        """Take the key out of an error's text and body, should the server echo it."""
        return scrub_error(error, self.api_key.reveal() if self.api_key is not None else "")

    def _scrub_body(self, response: httpx.Response) -> None:
        """Take the key out of an error response's body, before anything reads it."""
        scrub_body(response, self.api_key.reveal() if self.api_key is not None else "")

    def stream(
        self,
        method: str,
        path: str,
        *,
        kind: RequestKind,
        json_body: Any = None,
    ) -> StreamContext:
        """Open a streaming request; the 2xx response holds its governor slot until exit.

        Use as ``async with requester.stream(...) as response:``.
        """

        async def send() -> tuple[httpx.Response, Slot]:
            return await self._send(
                method,
                path,
                kind=kind,
                json_body=json_body,
                params=None,
                auth=True,
                deadline=None,
                stream=True,
                holds=True,
                accept="text/event-stream",
            )

        return StreamContext(send, self.governor)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        kind: RequestKind,
        json_body: Any,
        params: Mapping[str, str] | None,
        auth: bool,
        deadline: float | None,
        stream: bool,
        holds: bool = False,
        task: TaskReservation | None = None,
        accept: str | None = None,
    ) -> tuple[httpx.Response, Slot]:
        self._check_usable()
        policy = self.retry
        clock = self.clock
        governor = self.governor
        recorder = self.recorder
        watch = GENERATE_WATCH.get() if kind is RequestKind.GENERATE else None
        retries = CallRetries(policy, self.rand)
        attempt = 0  # attempts sent, refusals included (for the logs and stats)
        while True:
            attempt += 1
            request = self._build(
                method, path, json_body=json_body, params=params, auth=auth, accept=accept
            )
            retry_after: float | None = None
            own_load = False
            queued_at = clock.monotonic()
            slot = await governor.acquire(retry=retries.retrying, holds=holds)
            if self.closed:  # closed while this call waited for a slot or a retry
                await governor.release(slot)
                raise self._closed_error(method, path)
            recorder.sending(method, path, kind, queued=clock.monotonic() - queued_at)
            keep_slot = False
            try:
                started = clock.monotonic()
                retries.started(started)
                if task is not None:
                    task.sent = True
                if watch is not None:
                    watch.sending()
                try:
                    # Always streamed, so that no answer is read past MAX_ANSWER_SIZE.
                    # auth=None: a borrowed client's own auth must not replace our key.
                    response = await self.http.send(request, stream=True, auth=None)
                    if not stream:
                        await read_at_most(response, MAX_ANSWER_SIZE)
                except RuntimeError as exc:
                    # httpx's "client has been closed", our pool's "transport was closed".
                    if self.closed:
                        raise self._closed_error(method, path) from exc
                    raise
                except httpx.HTTPError as exc:
                    outcome = outcome_of_exception(exc)
                    verdict = decide(kind, outcome)
                    cls: type[APIConnectionError] = APIConnectionError
                    hint = ""
                    if outcome is Outcome.CERTIFICATE:
                        cls, hint = TLSCertificateError, f" {CERTIFICATE_HINT}"
                    elif isinstance(exc, httpx.ProxyError):
                        cls = ProxyError
                        if outcome is Outcome.PROXY_REFUSED:
                            hint = f" {PROXY_HINT}"
                    elif isinstance(exc, httpx.TimeoutException):
                        cls = APITimeoutError
                    # Errors outlive the call (logs, error trackers): keep no key in them.
                    forget_key(exc)
                    error: NanoBananaError = cls(
                        f"{method} {path} failed: {_describe(exc)}{hint}",
                        request=without_key(request),
                        may_have_been_charged=verdict.may_have_been_charged,
                    )
                    error.__cause__ = exc
                    recorder.failed(method, path, attempt, exc, verdict, kind=kind)
                else:
                    status = response.status_code
                    elapsed = clock.monotonic() - started
                    recorder.answered(method, path, kind, attempt, response, elapsed=elapsed)
                    header_limit = response.headers.get("x-ratelimit-limit")
                    if status != 429 and header_limit is not None and header_limit.isdecimal():
                        # (A 429's limit goes with the refusal: on_rate_limited, below.)
                        await governor.learn(int(header_limit))
                    if status < 300:
                        await governor.on_success(slot)
                        keep_slot = stream
                        return response, slot
                    if stream:
                        await read_at_most(response, MAX_ANSWER_SIZE)
                    outcome = outcome_of_status(status)
                    verdict = decide(kind, outcome)
                    response.request = without_key(request)
                    self._scrub_body(response)
                    retry_after = parse_retry_after(
                        response.headers.get("retry-after"),
                        now=clock.time(),
                        cap=policy.retry_after_max,
                    )
                    error = self._scrub(
                        make_status_error(
                            response,
                            retry_after=retry_after,
                            may_have_been_charged=verdict.may_have_been_charged,
                        )
                    )
                    if isinstance(error, RateLimitError):
                        await governor.on_rate_limited(
                            slot, stated=error.limit, retry_after=retry_after
                        )
                    elif isinstance(error, ServerBusyError) and task is not None:
                        own_load = await task.busy(error.active_tasks)
                if watch is not None and outcome in FREE_OUTCOMES:
                    watch.not_charged()
            except BaseException:
                keep_slot = False
                raise
            finally:
                if not keep_slot:
                    await governor.release(slot)
            if not verdict.retry:
                raise error
            now = clock.monotonic()
            wait = retries.wait(error, outcome, now=now, retry_after=retry_after, own_load=own_load)
            if deadline is not None and now + wait > deadline:
                raise OutOfTimeError(error)
            recorder.retrying(
                method,
                path,
                attempt,
                outcome,
                wait,
                attempts=policy.attempts,
                refusals=retries.refusals if outcome in REFUSALS else None,
            )
            if own_load and task is not None:
                await task.room()
            else:
                await clock.sleep(wait)
