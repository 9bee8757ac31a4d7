"""The library's log records: one logger, and every record with every documented field.

Every record the library writes to the ``nanobanana`` logger (and its children, such
as the simulator's ``nanobanana.testing``) goes through `emit`, which gives it all of
`LOG_FIELDS` as attributes (``extra=``), None where one does not apply. A formatter
that names a field (``%(event)s``) or a JSON shipper that reads them all then works on
every record, not only on those of API requests (docs/production.md lists them).

No field holds the API key: callers pass methods, paths without their query,
numbers, exception class names and generation ids (checked, where a server chose
them, not to be the key: ``_stats.py``).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["LOG_FIELDS", "emit", "log", "loggable_id"]

log = logging.getLogger("nanobanana")

# Keys shorter than this are not looked for, as in _redact.
_MIN_KEY = 8

#: The fields (``extra=``) of every record the library logs; None where one does not apply.
LOG_FIELDS = (
    "event",  # what happened: "response", "error", "retry", ... (docs/production.md)
    "method",
    "path",  # without the query: "/generate"
    "status",  # the HTTP status of a "response"
    "attempt",  # 1 for the first attempt of a call
    "wait",  # seconds before the next attempt ("retry")
    "elapsed",  # seconds the attempt took ("response")
    "reason",  # why a retry happens: a key of ClientStats.retries
    "error",  # the exception's class name
    "may_have_been_charged",
    "generation_id",
)


def loggable_id(found: object, key: str) -> str | None:
    """``found`` as a record's ``generation_id``: None unless a non-empty string.

    Never the key, even if a server were to echo it in (or as) an id.
    """
    if not isinstance(found, str) or not found:
        return None
    if len(key) >= _MIN_KEY and key in found:
        return None
    return found


def emit(
    level: int,
    message: str,
    *args: object,
    event: str,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    attempt: int | None = None,
    wait: float | None = None,
    elapsed: float | None = None,
    reason: str | None = None,
    error: str | None = None,
    may_have_been_charged: bool | None = None,
    generation_id: str | None = None,
    exc_info: bool = False,
    logger: logging.Logger = log,
) -> None:
    """Log ``message % args`` at ``level`` with every field of `LOG_FIELDS`.

    One keyword per field, so that a misspelt field is a type error. The record's
    place (``funcName``, ``lineno``) is the caller's.
    """
    if not logger.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "event": event,
        "method": method,
        "path": path,
        "status": status,
        "attempt": attempt,
        "wait": wait,
        "elapsed": elapsed,
        "reason": reason,
        "error": error,
        "may_have_been_charged": may_have_been_charged,
        "generation_id": generation_id,
    }
    logger.log(level, message, *args, extra=fields, exc_info=exc_info, stacklevel=2)
