"""Stream events to values: each event as a `ProgressEvent`, and what a stream has learnt.

The stream-mode docs define the events: ``status`` (a message and a progress),
``complete`` (the result in ``data``) and ``error``; any of them may carry the
``generationId``. `EventTranslator` turns them into values and keeps the progress a
consumer sees from going backwards. It does no I/O: `nanobanana._stream` reads the
events and decides what to do when the stream ends.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import attrs

from nanobanana._errors import GenerationFailedError, UnexpectedResponseError
from nanobanana._models import URL_LIFETIME, Generation, GenerationStatus, ProgressEvent

__all__ = ["CutError", "EventTranslator", "event_id", "payloads"]

# At most this many distinct status events are kept for reuse.
_SEEN_MAX = 256


class CutError(Exception):
    """Internal: the stream ended before its result in a way polling can finish."""


@attrs.define(eq=False)
class EventTranslator:
    """Turns one stream's events into `ProgressEvent` values, remembering what it saw."""

    prompt: str | None
    model: str | None
    generation_id: str | None = None
    max_progress: int = 0
    #: When the request was sent: the images expire 15 days after, at the earliest.
    requested_at: datetime | None = None
    # Status events repeat (heartbeats, the same step again): ProgressEvent is frozen,
    # so equal ones are shared instead of built anew, which is most of a stream's cost.
    _seen: dict[tuple[str, int, int, str | None], ProgressEvent] = attrs.field(
        factory=dict, init=False, repr=False
    )

    def note_id(self, event: dict[str, Any], data: Any) -> None:
        # Any event may carry the id, at the top or in `data` (PROTOCOL.md, mode stream);
        # once known, a cut stream can be finished with GET /generate?id=. Inline rather
        # than `event_id`: this runs for every event of every stream.
        found = event.get("generationId")
        if type(data) is dict:
            inner = data.get("generationId")
            if type(inner) is str and inner:
                found = inner
        if type(found) is str and found:
            self.generation_id = found

    def status(self, event: dict[str, Any]) -> ProgressEvent:
        # The hot path of a stream: exact type checks first, the general ones after.
        progress = event.get("progress")
        if type(progress) is not int or not 0 <= progress <= 100:
            progress = _progress(progress)
        message = event.get("message")
        if type(message) is not str:
            message = ""
        top = self.max_progress
        if progress > top:
            self.max_progress = top = progress
        key = (message, progress, top, self.generation_id)
        reused = self._seen.get(key)
        if reused is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            reused = self._seen[key] = ProgressEvent(
                type="status",
                message=message,
                progress=top,
                raw_progress=progress,
                # The 15 s heartbeat is a status with progress 0 "indistinguishable from
                # a status event except that its progress may be lower" (PROTOCOL.md).
                is_heartbeat=progress < top,
                generation_id=self.generation_id,
            )
        return reused

    def complete(self, event: dict[str, Any], data: Any) -> ProgressEvent:
        if not isinstance(data, dict):
            data = {}
        if data.get("success") is False:
            self.failed(event, data)
        urls = data.get("imageUrls")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            if self.generation_id is not None:
                raise CutError("complete event without imageUrls")
            raise UnexpectedResponseError(
                "Unexpected complete event: no list 'imageUrls', and no event carried a "
                "generationId to fetch the result with.",
                field="imageUrls",
                body=event,
            )
        generation = Generation(
            # The docs' complete event may omit generationId ("generationId"?); the
            # images are still the result, so the id is then "" rather than an error.
            id=self.generation_id or "",
            status=GenerationStatus.COMPLETED,
            image_urls=tuple(urls),
            prompt=self.prompt,
            model=self.model,
            credits_used=_opt_int(data.get("creditsUsed")),
            remaining_credits=_opt_int(data.get("remainingCredits")),
            # Events have no createdAt: the generation was created after the request.
            expires_at=self.requested_at + URL_LIFETIME if self.requested_at else None,
        )
        return self.completed(generation, event.get("message"))

    def completed(self, generation: Generation, message: Any) -> ProgressEvent:
        self.max_progress = 100
        return ProgressEvent(
            type="complete",
            message=message if isinstance(message, str) else "Generation complete",
            progress=100,
            raw_progress=100,
            generation_id=generation.id or None,
            generation=generation,
        )

    def failed(self, event: dict[str, Any], data: Any) -> None:
        message = event.get("message")
        detail = data.get("error") if isinstance(data, dict) else None
        parts = [p for p in (message, detail) if isinstance(p, str) and p.strip()]
        if len(parts) == 2 and parts[0] == parts[1]:
            parts.pop()
        reason = ": ".join(parts) or "no reason given"
        who = f"Generation {self.generation_id}" if self.generation_id else "The generation"
        raise GenerationFailedError(
            f"{who} failed: {reason} (credits are not refunded).",
            generation_id=self.generation_id,
        )


def event_id(event: dict[str, Any], data: Any = None) -> str | None:
    """The generation id an event carries, at its top or in its ``data``, if any.

    Any event may carry it (PROTOCOL.md, mode stream); ``data`` is the event's
    ``data`` when the caller has it at hand already.
    """
    if data is None:
        data = event.get("data")
    if type(data) is dict:
        inner = data.get("generationId")
        if type(inner) is str and inner:
            return inner
    found = event.get("generationId")
    return found if type(found) is str and found else None


def _progress(value: Any) -> int:
    # json.loads reads 1e400 as inf and accepts NaN; int() refuses both.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value):
        return 100 if value > 0 else 0
    return max(0, min(100, int(value)))


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) else None


def payloads(data: str) -> list[dict[str, Any]]:
    """The JSON objects in an event's data; junk is skipped, never fatal (PROTOCOL.md)."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
        if "\n" in data:
            # Several data lines in one event are joined with \n (SSE spec). When the
            # join is not JSON, read them one by one, as the docs' own clients do.
            found: list[dict[str, Any]] = []
            for line in data.split("\n"):
                found.extend(payloads(line))
            return found
    return [value] if isinstance(value, dict) else []
