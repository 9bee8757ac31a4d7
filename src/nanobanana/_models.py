"""Frozen values parsed from the wire: `Generation`, `Model`, `ProgressEvent`.

Parsing ignores fields it does not know (the live service adds fields before its docs
do) and raises `UnexpectedResponseError` naming the field when a required one
is missing or of the wrong type.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import attrs

from nanobanana._errors import UnexpectedResponseError

__all__ = ["URL_LIFETIME", "Generation", "GenerationStatus", "Model", "ProgressEvent"]

#: "Generated image URLs are valid for 15 days" (overview docs, section 7).
URL_LIFETIME = timedelta(days=15)


class GenerationStatus(str, enum.Enum):
    """The ``processingStatus`` of a generation."""

    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


def _obj(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UnexpectedResponseError(
            f"Unexpected response: {what} is {type(data).__name__}, expected an object.",
            field=what,
            body=data,
        )
    return data


def _req(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data or data[key] is None:
        raise UnexpectedResponseError(
            f"Unexpected response: {what} has no field {key!r}.", field=key, body=data
        )
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise UnexpectedResponseError(
            f"Unexpected response: field {key!r} of {what} has the wrong type "
            f"({type(value).__name__}).",
            field=key,
            body=data,
        )
    return value


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # json.loads reads 1e400 as inf and accepts NaN, which int() refuses.
    return int(value) if math.isfinite(value) else None


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _urls(data: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise UnexpectedResponseError(
            f"Unexpected response: field {key!r} of {what} is not a list of URLs.",
            field=key,
            body=data,
        )
    return tuple(value)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    # The docs' createdAt is UTC ("...000Z"); a time without an offset is read as UTC
    # too, so that every datetime of a Generation compares with every other.
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _expiry(generation: Generation) -> datetime | None:
    created = generation.created_at
    return created + URL_LIFETIME if created is not None else None


def _status(value: Any, data: dict[str, Any]) -> GenerationStatus:
    try:
        return GenerationStatus(value)
    except ValueError:
        raise UnexpectedResponseError(
            f"Unexpected response: unknown processingStatus {value!r}.",
            field="processingStatus",
            body=data,
        ) from None


@attrs.frozen(kw_only=True)
class Generation:
    """One generation: its status and, once completed, its image URLs.

    ``remaining_credits`` is only known from a sync or stream call's answer; a poll
    does not report it. ``created_at`` comes from a poll (a stream's result is
    completed with one, see `AsyncNanoBanana.stream`); a sync answer has none.

    ``expires_at`` is when the image URLs stop working: "generated image URLs are
    valid for 15 days" (overview docs), so ``created_at`` plus 15 days. Without a
    ``created_at`` (a sync answer; a stream's result whose extra ``GET`` failed), the
    client sets it to 15 days after it sent the request, which is at most the
    generation's duration early: download before it. It is ``None`` only when neither
    is known. `attrs.evolve` copies it as it is: pass ``expires_at`` too when you
    change ``created_at``.
    """

    id: str
    status: GenerationStatus
    image_urls: tuple[str, ...] = ()
    prompt: str | None = None
    model: str | None = None
    credits_used: int | None = None
    remaining_credits: int | None = None
    created_at: datetime | None = None
    error_message: str | None = None
    expires_at: datetime | None = attrs.field(default=attrs.Factory(_expiry, takes_self=True))

    @classmethod
    def from_json(cls, data: Any) -> Generation:
        """Parse the ``data`` object of ``GET /generate?id=``."""
        what = "the generation"
        data = _obj(data, what)
        return cls(
            id=_req(data, "id", str, what),
            status=_status(_req(data, "processingStatus", str, what), data),
            image_urls=_urls(data, "outputImageUrls", what),
            prompt=_opt_str(data, "prompt"),
            model=_opt_str(data, "modelUsed"),
            credits_used=_opt_int(data, "creditsUsed"),
            remaining_credits=_opt_int(data, "remainingCredits"),
            created_at=_timestamp(data.get("createdAt")),
            error_message=_opt_str(data, "errorMessage"),
        )

    @classmethod
    def from_sync_json(
        cls,
        data: Any,
        *,
        prompt: str,
        model: str | None,
        requested_at: datetime | None = None,
    ) -> Generation:
        """Parse a successful sync-mode ``POST /generate`` answer.

        ``requested_at``, when the request was sent, sets ``expires_at`` (the answer
        has no ``createdAt``).
        """
        what = "the generate response"
        data = _obj(data, what)
        _req(data, "imageUrls", list, what)  # a sync result is its images: never optional
        return cls(
            id=_req(data, "generationId", str, what),
            status=GenerationStatus.COMPLETED,
            image_urls=_urls(data, "imageUrls", what),
            prompt=prompt,
            model=model,
            credits_used=_opt_int(data, "creditsUsed"),
            remaining_credits=_opt_int(data, "remainingCredits"),
            expires_at=requested_at + URL_LIFETIME if requested_at is not None else None,
        )


@attrs.frozen(kw_only=True)
class Model:
    """An entry of the model catalogue (``GET /models``)."""

    name: str
    display_name: str
    credits_cost: int
    supports_image_input: bool = False
    supports_aspect_ratio: bool = False
    requires_pro: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Model:
        """Parse one element of ``GET /models``'s ``data`` list."""
        what = "a model"
        data = _obj(data, what)
        name = _req(data, "name", str, what)
        cost = _req(data, "creditsCost", (int, float), what)
        if not math.isfinite(cost):
            raise UnexpectedResponseError(
                f"Unexpected response: field 'creditsCost' of {what} is {cost}.",
                field="creditsCost",
                body=data,
            )
        return cls(
            name=name,
            display_name=_opt_str(data, "displayName") or name,
            credits_cost=int(cost),
            supports_image_input=data.get("supportsImageInput") is True,
            supports_aspect_ratio=data.get("supportsAspectRatio") is True,
            requires_pro=data.get("requiresPro") is True,
        )


@attrs.frozen(kw_only=True)
class ProgressEvent:
    """One event of a stream: progress (``status``) or the result (``complete``).

    ``progress`` is the highest progress reported so far (0-100): it never goes
    backwards, so a progress bar can show it as it is. ``raw_progress`` is what this
    event itself said: the stream's heartbeat says 0 even after 50 (stream-mode docs).
    ``is_heartbeat`` marks status events that report less than was already reported.
    """

    type: Literal["status", "complete"]
    message: str = ""
    progress: int = 0
    raw_progress: int = 0
    is_heartbeat: bool = False
    generation_id: str | None = None
    generation: Generation | None = None
