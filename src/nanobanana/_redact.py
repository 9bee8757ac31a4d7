"""Keeping the API key out of everything that outlives a call.

Errors are logged, pickled, sent to error trackers and shown whole in tracebacks, so
the key must be in none of what they hold: not in their text, not in a body the
server echoed it in, not in the request they keep (nor in the request of the httpx
error they were raised from). The requests that go to the API carry the key, so
what an error keeps is a copy with the ``Authorization`` header redacted.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from nanobanana._errors import NanoBananaError

__all__ = ["REDACTED", "forget_key", "scrub_body", "scrub_error", "without_key"]

#: What stands where the key was.
REDACTED = "[api key]"
# A key shorter than this is not replaced in text: it would garble ordinary words.
_MIN_SCRUBBED_KEY = 8

_E = TypeVar("_E", bound=NanoBananaError)


def without_key(request: httpx.Request) -> httpx.Request:
    """A copy of ``request`` to keep in an error: the same, but with the key redacted."""
    if "authorization" not in request.headers:
        return request
    headers = request.headers.copy()
    headers["authorization"] = f"Bearer {REDACTED}"
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=request.content,
        extensions=request.extensions,
    )


def forget_key(exc: BaseException) -> None:
    """Swap the request an httpx error holds for one without the key."""
    if isinstance(exc, httpx.HTTPError):
        try:
            request = exc.request
        except RuntimeError:  # httpx raises this for an error that has no request
            return
        exc.request = without_key(request)


def scrub_error(error: _E, key: str) -> _E:
    """``error`` with ``key`` taken out of its text and body, should the server echo it."""
    if len(key) < _MIN_SCRUBBED_KEY:
        return error
    if key in error.message:
        error.message = error.message.replace(key, REDACTED)
        error.args = (error.message,)
    body = getattr(error, "body", None)
    if body is not None and key in repr(body):
        error.body = _scrub_value(body, key)  # type: ignore[attr-defined]
    return error


def scrub_body(response: httpx.Response, key: str) -> None:
    """Take ``key`` out of a read response's body, before anything reads its text."""
    secret = key.encode()
    if len(key) >= _MIN_SCRUBBED_KEY and secret in response.content:
        # What httpx's aread sets; `text` is derived from it on first use.
        response._content = response.content.replace(secret, REDACTED.encode())


def _scrub_value(value: Any, key: str) -> Any:
    """``value`` (parsed JSON or text) with every occurrence of ``key`` redacted."""
    if isinstance(value, str):
        return value.replace(key, REDACTED)
    if isinstance(value, dict):
        return {_scrub_value(k, key): _scrub_value(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item, key) for item in value]
    return value
