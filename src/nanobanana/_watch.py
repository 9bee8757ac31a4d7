"""The batch journal's watch on ``POST /generate``: told when a charge may start.

`nanobanana._http` calls the watch of the current task around each attempt of a
``POST /generate``; `nanobanana._batch` sets one per item, so that the journal records
"may have been charged" before the bytes leave.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from nanobanana._retry import Outcome

__all__ = ["FREE_OUTCOMES", "GENERATE_WATCH", "GenerateWatch"]


class GenerateWatch(Protocol):
    """Told, in the calling task, when its ``POST /generate`` may reach the server.

    The batch journal records "a request for this item may have been charged" before
    the bytes leave, so that a run stopped by ``kill -9`` before the answer came back
    is not paid for twice by the next one.
    """

    def sending(self) -> None:
        """An attempt is about to be sent (it may be accepted, and charged)."""

    def not_charged(self) -> None:
        """That attempt was refused (429, 503, 4xx) or never left: nothing was charged."""


#: The watch of the current task, if any (contextvars are per task).
GENERATE_WATCH: ContextVar[GenerateWatch | None] = ContextVar(
    "nanobanana_generate_watch", default=None
)

#: Outcomes of an attempt that charged nothing (the watch is told `not_charged`).
FREE_OUTCOMES = frozenset(
    {
        Outcome.NOT_SENT,
        Outcome.INVALID,
        Outcome.CERTIFICATE,
        Outcome.PROXY_REFUSED,
        Outcome.RATE_LIMITED,
        Outcome.BUSY,
        Outcome.CLIENT_ERROR,
    }
)
