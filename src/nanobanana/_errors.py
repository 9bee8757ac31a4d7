"""The exceptions nanobanana raises.

Every error the library raises on purpose is a `NanoBananaError`:

```text
NanoBananaError
├── MissingAPIKeyError            a call that needs a key found none
├── BudgetExceededError           would pass max_credits; nothing sent  .needed, .remaining
├── UnknownModelError             not in GET /models, so its cost is unknown  .model
├── UnexpectedResponseError       a 2xx body we cannot read (not JSON, field missing)
│   └── SSETooLargeError          an event-stream line or event over the size limit
├── APIConnectionError            network failure, nothing usable came back
│   ├── APITimeoutError
│   │   └── StreamIdleError       an event stream went silent (no heartbeat either)
│   ├── TLSCertificateError       the server's certificate failed verification (not retried)
│   └── ProxyError                the proxy would not open a way to the API; nothing sent
├── APIStatusError                .status_code, .body, .response, .generation_id
│   ├── BadRequestError           400
│   ├── AuthenticationError       401
│   ├── InsufficientCreditsError  402
│   ├── PermissionDeniedError     403
│   ├── NotFoundError             404
│   ├── RateLimitError            429  .retry_after, .limit, .active
│   ├── InternalServerError       500 and other 5xx
│   └── ServerBusyError           503  .retry_after, .active_tasks
├── GenerationFailedError         job or stream ended in failure  .generation_id
├── ContentSafetyError            sync 200 with success:false + warning  .generation_id
├── JobTimeoutError               job.wait() ran out of time  .generation_id
└── DownloadError                 an image could not be saved  .url, .generation_id, .saved
```

Errors that may follow a charged ``POST /generate`` (a 500, a read timeout, a dropped
connection after the request was sent) carry ``may_have_been_charged = True`` and say
so in their message: credits are taken on acceptance and not refunded on failure
(async-mode docs), so the client never resends such a request on its own. Raised by
``generate()``, ``stream()`` or ``submit()``, they also carry what the client knows
of that request, to reconcile it with: ``requested_at``, ``prompt``, ``model``,
``mode``, and ``generation_id`` when one was seen.

No message, ``repr`` or attribute text of these errors contains the API key.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    import httpx

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ContentSafetyError",
    "DownloadError",
    "GenerationFailedError",
    "InsufficientCreditsError",
    "InternalServerError",
    "JobTimeoutError",
    "MissingAPIKeyError",
    "NanoBananaError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProxyError",
    "RateLimitError",
    "SSETooLargeError",
    "ServerBusyError",
    "StreamIdleError",
    "TLSCertificateError",
    "UnexpectedResponseError",
    "UnknownModelError",
]

CHARGE_WARNING = (
    "The generation may have been charged; it was not resent. Check `credits()` or "
    "`get_generation()` before trying again."
)


def _with_warning(message: str) -> str:
    sentence = message if message.endswith((".", "!", "?")) else f"{message}."
    return f"{sentence} {CHARGE_WARNING}"


class NanoBananaError(Exception):
    """Raised for every failure of this library; catch it to catch them all."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _AfterGenerate:
    """What an error raised for a ``POST /generate`` knows of that request.

    Mixed into the errors that can follow a charged request (`APIConnectionError`,
    `APIStatusError`, `UnexpectedResponseError`); `note_request` fills it in.
    """

    #: Whether the generation may have been charged (credits are not refunded).
    may_have_been_charged: bool = False
    #: The generation's id, when the client saw one (fetch it with ``client.job(id)``).
    generation_id: str | None = None
    #: When the call was made (UTC): a generation it created was created after this.
    requested_at: datetime | None = None
    #: The prompt of the request.
    prompt: str | None = None
    #: The model asked for (None: the service's default).
    model: str | None = None
    #: ``"sync"``, ``"stream"`` or ``"async"``.
    mode: str | None = None


def note_request(
    error: BaseException,
    *,
    requested_at: datetime,
    prompt: str,
    model: str | None,
    mode: str,
    generation_id: str | None = None,
) -> None:
    """Record on ``error`` the ``POST /generate`` it was raised for (others: no-op)."""
    if not isinstance(error, _AfterGenerate):
        return
    error.requested_at = requested_at
    error.prompt = prompt
    error.model = model
    error.mode = mode
    if generation_id is not None and error.generation_id is None:
        error.generation_id = generation_id


class MissingAPIKeyError(NanoBananaError):
    """Raised when a call that needs an API key is made and none was configured."""


class BudgetExceededError(NanoBananaError):
    """Raised before a generation is sent when its estimated cost would pass ``max_credits``.

    Nothing was sent, so nothing was charged. ``needed`` is the estimate (see
    ``client.estimate_credits()``), ``remaining`` what the cap still allows (credits
    neither spent nor reserved by calls in flight), and ``max_credits`` the cap that
    refused: the client's, or that of the ``with_options()`` copy the call was made on.
    """

    def __init__(
        self, message: str, *, needed: int, remaining: int, max_credits: int | None = None
    ) -> None:
        super().__init__(message)
        self.needed = needed
        self.remaining = remaining
        self.max_credits = max_credits


class UnknownModelError(NanoBananaError, ValueError):
    """Raised when a model's cost is needed and the catalogue (``GET /models``) lacks it.

    A spend cap (``max_credits``) and ``estimate_credits()`` need the model's price;
    the live catalogue is authoritative, so a model it does not list (after one more
    look) is refused before anything is sent, as the server would refuse it. It is a
    `ValueError` too, like the other bad arguments.
    """

    def __init__(self, message: str, *, model: str, known: tuple[str, ...]) -> None:
        super().__init__(message)
        self.model = model
        self.known = known


class UnexpectedResponseError(_AfterGenerate, NanoBananaError):
    """Raised when a successful response cannot be read: not JSON, or a field is missing.

    A 2xx to ``POST /generate`` means the generation was accepted and charged, so an
    unreadable one carries ``may_have_been_charged = True``, like a 500 would.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        body: Any = None,
        may_have_been_charged: bool = False,
    ) -> None:
        if may_have_been_charged:
            message = _with_warning(message)
        super().__init__(message)
        self.field = field
        self.body = body
        self.may_have_been_charged = may_have_been_charged


class APIConnectionError(_AfterGenerate, NanoBananaError):
    """Raised when the network failed and no usable response came back."""

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        may_have_been_charged: bool = False,
    ) -> None:
        if may_have_been_charged:
            message = _with_warning(message)
        super().__init__(message)
        self.request = request
        self.may_have_been_charged = may_have_been_charged


class APITimeoutError(APIConnectionError):
    """Raised when a request timed out (connect, read, write or pool)."""


class TLSCertificateError(APIConnectionError):
    """Raised when the server's TLS certificate failed verification; never retried.

    Nothing was sent (the handshake comes first), so nothing was charged. Behind a
    proxy that inspects TLS, trust its CA with ``verify=`` or ``SSL_CERT_FILE``.
    """


class ProxyError(APIConnectionError):
    """Raised when the proxy would not open a way to the API (``CONNECT`` or SOCKS).

    Nothing reached the API, so nothing was charged. A refusal (407: the proxy wants
    credentials; 403: the API's host is not on its allow-list) is raised at once; a
    proxy that could not reach the API (502, 503, 504) is retried first.
    """


class SSETooLargeError(UnexpectedResponseError):
    """Raised when a line or an event of an event stream is larger than the set maximum."""


class StreamIdleError(APITimeoutError):
    """Raised when an event stream sent nothing, not even a heartbeat, for too long."""


class APIStatusError(_AfterGenerate, NanoBananaError):
    """Raised when the API answered with an error status (4xx or 5xx)."""

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any,
        may_have_been_charged: bool = False,
        generation_id: str | None = None,
    ) -> None:
        if may_have_been_charged:
            message = _with_warning(message)
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.may_have_been_charged = may_have_been_charged
        #: The generation the error is about, when the body names one (a 500 after a
        #: generation was accepted may): ``client.job(generation_id)`` finds it.
        self.generation_id = generation_id


class BadRequestError(APIStatusError):
    """Raised on 400: the parameters were rejected (missing prompt, bad mode, ...)."""


class AuthenticationError(APIStatusError):
    """Raised on 401: the API key is missing or invalid."""


class InsufficientCreditsError(APIStatusError):
    """Raised on 402: the account has too few credits for this generation."""


class PermissionDeniedError(APIStatusError):
    """Raised on 403: API access is not enabled on the account (or the model needs Pro)."""


class NotFoundError(APIStatusError):
    """Raised on 404: no such generation (or endpoint)."""


class RateLimitError(APIStatusError):
    """Raised on 429 once patience is spent: the account's concurrent-request limit.

    Nothing was charged for the refused request. ``waited`` and ``refusals`` say how
    long the call waited for capacity and how many refusals it saw
    (`RetryPolicy.patience`).
    """

    waited: float | None = None
    refusals: int | None = None

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any,
        retry_after: float | None,
        limit: int | None,
        active: int | None,
    ) -> None:
        super().__init__(message, response=response, body=body)
        self.retry_after = retry_after
        self.limit = limit
        self.active = active


class InternalServerError(APIStatusError):
    """Raised on 500 and other 5xx (except 503) once retries are spent, or at once for POSTs."""


class ServerBusyError(APIStatusError):
    """Raised on 503 once patience is spent: the async queue is full; credits were refunded.

    ``waited`` and ``refusals`` are as on `RateLimitError`.
    """

    waited: float | None = None
    refusals: int | None = None

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any,
        retry_after: float | None,
        active_tasks: int | None,
    ) -> None:
        super().__init__(message, response=response, body=body)
        self.retry_after = retry_after
        self.active_tasks = active_tasks


class GenerationFailedError(NanoBananaError):
    """Raised when a job or a stream ended in failure (credits are not refunded)."""

    def __init__(self, message: str, *, generation_id: str | None) -> None:
        super().__init__(message)
        self.generation_id = generation_id


class ContentSafetyError(NanoBananaError):
    """Raised when a sync generation was refused by the safety check (credits spent)."""

    def __init__(
        self,
        message: str,
        *,
        generation_id: str | None,
        credits_used: int | None,
        remaining_credits: int | None,
    ) -> None:
        super().__init__(message)
        self.generation_id = generation_id
        self.credits_used = credits_used
        self.remaining_credits = remaining_credits


class JobTimeoutError(NanoBananaError):
    """Raised when ``job.wait(timeout=...)`` ran out of time; the job may still finish."""

    def __init__(self, message: str, *, generation_id: str) -> None:
        super().__init__(message)
        self.generation_id = generation_id


class DownloadError(NanoBananaError):
    """Raised when an image could not be saved: expired, not an image, or unreachable.

    What it holds to recover with:

    - ``generation_id``: the generation the images belong to (when ``download()`` was
      given a `Generation`): ``client.get_generation(id)`` fetches it again.
    - ``saved``: the images of the same ``download()`` call that were written whole
      (the others are fetched even when one fails).
    - ``unsaved_urls``: the URLs whose images were not saved, in full (a signed URL
      keeps its signature, so that it can be downloaded again: do not log them).
    - ``url``: the URL of the image the message is about, without its query string
      (signed image URLs carry secrets there), and ``status_code`` if it answered one.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status_code: int | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code
        self.generation_id = generation_id
        self.saved: tuple[Path, ...] = ()
        self.unsaved_urls: tuple[str, ...] = ()


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
}

_HINTS: dict[int, str] = {
    401: "Check the API key (NANOBANANA_API_KEY).",
    402: "Top up the account's credits.",
    403: "API access must be enabled on the account.",
    429: "The account's concurrent-request limit was exceeded; nothing was charged.",
    503: "The server's async queue is full; the credits were refunded.",
}


def parse_error_body(response: httpx.Response) -> Any:
    """The error body as JSON when it is JSON, else its text (an HTML page from a proxy)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return response.text


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    return None


def make_status_error(
    response: httpx.Response,
    *,
    retry_after: float | None = None,
    may_have_been_charged: bool = False,
) -> APIStatusError:
    """Build the typed error for an error response (its body must have been read)."""
    body = parse_error_body(response)
    status = response.status_code
    server_message: str | None = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        server_message = body["error"]
    elif isinstance(body, str) and body.strip() and len(body) <= 200 and "<" not in body:
        server_message = body.strip()
    reason = response.reason_phrase or "Error"
    message = f"{status} {reason}"
    if server_message:
        message += f": {server_message.rstrip('.')}"
    hint = _HINTS.get(status)
    if hint:
        message += f". {hint}"
    fields = body if isinstance(body, dict) else {}
    generation_id = fields.get("generationId")
    if not isinstance(generation_id, str) or not generation_id:
        generation_id = None
    if status == 429:
        return RateLimitError(
            message,
            response=response,
            body=body,
            retry_after=retry_after,
            limit=_int_or_none(fields.get("limit"))
            or _int_or_none(response.headers.get("x-ratelimit-limit")),
            active=_int_or_none(fields.get("active"))
            or _int_or_none(response.headers.get("x-ratelimit-active")),
        )
    if status == 503:
        return ServerBusyError(
            message,
            response=response,
            body=body,
            retry_after=retry_after,
            active_tasks=_int_or_none(fields.get("activeTasks")),
        )
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(
        message,
        response=response,
        body=body,
        may_have_been_charged=may_have_been_charged,
        generation_id=generation_id,
    )
