"""Configuration: arguments first, then environment variables, then defaults."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import attrs
import httpx

if TYPE_CHECKING:
    from nanobanana._retry import RetryPolicy

__all__ = [
    "API_KEY_ENV_VARS",
    "BASE_URL_ENV_VARS",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "HTTPX_DEFAULT",
    "NOT_GIVEN",
    "Secret",
    "resolve_api_key",
    "resolve_base_url",
    "resolve_timeout",
    "with_max_retries",
]


class _NotGiven:
    """Sentinel for "argument not passed", where None means something else."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: An argument's default that says "not passed" (httpx's ``USE_CLIENT_DEFAULT``).
NOT_GIVEN: Any = _NotGiven()

# Ours first, then the names the service's own agent CLI reads (api-reference-agent-notes).
API_KEY_ENV_VARS = ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY")
BASE_URL_ENV_VARS = ("NANOBANANA_BASE_URL", "NANO_BANANA_BASE_URL")
DEFAULT_BASE_URL = "https://www.nananobanana.com/api/v1"

# Sync generations take 10-60 s and the docs ask for at least 120 s (sync-mode docs).
DEFAULT_TIMEOUT = httpx.Timeout(180.0, connect=10.0)
#: httpx's own default (``httpx.AsyncClient()``): a borrowed client with it gets ours.
HTTPX_DEFAULT = httpx.Timeout(5.0)


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _check_key(value: str, source: str) -> Secret:
    # An HTTP header carries printable ASCII: a key pasted with a typographic quote or
    # an accent would otherwise fail at the first call with a bare UnicodeEncodeError.
    # The message never shows the key.
    if not (value.isascii() and value.isprintable()):
        raise ValueError(
            f"{source} holds characters an HTTP header cannot carry (keys are printable "
            "ASCII): check it for a stray quote, accent, tab or line break."
        )
    return Secret(value)


def resolve_api_key(api_key: str | None) -> Secret | None:
    """The key from the argument, else the environment; None when there is none."""
    if api_key is not None:
        if not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        api_key = api_key.strip()
        return _check_key(api_key, "api_key") if api_key else None
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return _check_key(value, f"${name}")
    return None


def resolve_base_url(base_url: str | httpx.URL | None) -> httpx.URL:
    """The base URL from the argument, else the environment, else the service's."""
    raw = base_url if base_url is not None else (_env(BASE_URL_ENV_VARS) or DEFAULT_BASE_URL)
    try:
        url = httpx.URL(str(raw))
    except httpx.InvalidURL as exc:
        raise ValueError(f"base_url is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {str(raw)!r}")
    if url.query or url.fragment:
        raise ValueError("base_url must not have a query or fragment")
    return url.copy_with(path=url.path.rstrip("/") or "")


def resolve_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """The ``timeout`` argument as an `httpx.Timeout` (None: no timeout at all)."""
    if timeout is None:
        return httpx.Timeout(None)
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return httpx.Timeout(float(timeout))
    raise TypeError("timeout must be a number, an httpx.Timeout or None")


def with_max_retries(policy: RetryPolicy, max_retries: int) -> RetryPolicy:
    """``policy`` with ``max_retries + 1`` attempts."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError("max_retries must be an int")
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    return attrs.evolve(policy, attempts=max_retries + 1)
