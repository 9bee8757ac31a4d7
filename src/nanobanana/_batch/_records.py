"""Journal records: what a run writes about an item, and what the next run makes of it.

One JSON object per line, with the item's ``key`` and a ``status``:

| status | written | the next run |
|---|---|---|
| ``sending`` | before a generation request leaves | ``maybe_charged`` |
| ``submitted`` | when the generation's id is known | polls it (free) |
| ``not_charged`` | that request was refused (429, 503, 4xx) or never left | generates it |
| ``completed`` | the outcome: done, images saved | reads it back |
| ``failed``, ``lost``, ``maybe_charged`` | the outcome: paid for, or maybe | reads it back |
| ``timeout``, ``error`` | the outcome: may still be finished | polls it if the id is known |

``retry_failed`` makes the next run generate ``failed``, ``lost`` and ``maybe_charged``
items again (which costs credits). Outcome records carry what the result had: the
prompt, the generation id, image URLs, files, credits and the error (type, message).
The records of the command line's ``batch --output`` before this module existed have
the same fields and resume the same way.
"""

from __future__ import annotations

import enum
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx

from nanobanana._batch._values import BatchResult, BatchStatus
from nanobanana._errors import (
    APIConnectionError,
    APIStatusError,
    ContentSafetyError,
    GenerationFailedError,
    NanoBananaError,
    make_status_error,
)
from nanobanana._models import Generation, GenerationStatus

__all__ = ["FINAL", "Plan", "PlanKind", "outcome_record", "plan_for", "replay"]

SENDING = "sending"
SUBMITTED = "submitted"
NOT_CHARGED = "not_charged"
#: Outcomes a later run reads back instead of running the item again.
FINAL = frozenset({"completed", "failed", "lost", "maybe_charged"})
_PAID_FAILURES = frozenset({"failed", "lost", "maybe_charged"})


class PlanKind(enum.Enum):
    """What a run does with an item, given its journal record."""

    NEW = "new"  # generate it
    RESUME = "resume"  # poll its generation id, then download
    REPLAY = "replay"  # yield the recorded outcome; send nothing


@attrs.frozen
class Plan:
    """An item's plan: the kind, the generation id to resume, the record to replay."""

    kind: PlanKind
    generation_id: str | None = None
    record: dict[str, Any] | None = None


_NEW = Plan(PlanKind.NEW)


def _charged_without_id(record: dict[str, Any]) -> bool:
    error = record.get("error")
    return isinstance(error, dict) and bool(error.get("may_have_been_charged"))


def plan_for(
    record: dict[str, Any] | None, *, retry_failed: bool, download_dir: Path | None
) -> Plan:
    """The plan for an item whose last journal record is ``record`` (None: none)."""
    if record is None:
        return _NEW
    status = record.get("status")
    generation_id = record.get("generation_id")
    if not isinstance(generation_id, str) or not generation_id:
        generation_id = None
    if status == SENDING or (
        status == "error" and generation_id is None and _charged_without_id(record)
    ):
        status = "maybe_charged"  # sent, and no answer seen: it may have been charged
    if status in _PAID_FAILURES:
        return _NEW if retry_failed else Plan(PlanKind.REPLAY, generation_id, record)
    if status == "completed":
        if generation_id is None:
            return _NEW  # not a record this module writes
        if download_dir is not None and generation_id is not None and not _all_saved(record):
            return Plan(PlanKind.RESUME, generation_id)  # saving what was not saved is free
        return Plan(PlanKind.REPLAY, generation_id, record)
    if generation_id is not None:
        return Plan(PlanKind.RESUME, generation_id)
    return _NEW


def _all_saved(record: dict[str, Any]) -> bool:
    files = record.get("files") or []
    if record.get("image_urls") and not files:
        return False  # it finished before a download_dir was asked for
    return all(Path(str(path)).is_file() for path in files)


def _error_document(error: NanoBananaError) -> dict[str, Any]:
    document: dict[str, Any] = {"type": type(error).__name__, "message": error.message}
    if getattr(error, "may_have_been_charged", False):
        document["may_have_been_charged"] = True
    if isinstance(error, APIStatusError):
        document["status_code"] = error.status_code
    return document


def outcome_record(result: BatchResult) -> dict[str, Any]:
    """The journal record of an item's outcome."""
    generation = result.generation
    return {
        "key": result.key,
        "index": result.index,
        "prompt": result.prompt,
        "status": result.status,
        "generation_id": result.generation_id,
        "image_urls": list(generation.image_urls) if generation else [],
        "files": [os.fspath(path) for path in result.files],
        "credits_used": result.credits_used,
        "model": generation.model if generation else None,
        "created_at": generation.created_at.isoformat()
        if generation and generation.created_at
        else None,
        "error": _error_document(result.error) if result.error is not None else None,
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _replayed_error(
    status: str, record: dict[str, Any], generation_id: str | None
) -> NanoBananaError:
    error = record.get("error")
    document: dict[str, Any] = error if isinstance(error, dict) else {}
    message = _str(document.get("message")) or f"the item ended as {status!r} in an earlier run"
    if status == "lost":
        response = httpx.Response(
            404,
            json={"error": f"Generation {generation_id} not found"},
            request=httpx.Request("GET", "https://journal.invalid/generate"),
        )
        return make_status_error(response)
    if status == "maybe_charged":
        if record.get("status") == SENDING or not document:
            return APIConnectionError(
                "A generation request for this item was under way when an earlier run "
                "stopped, and no answer came back.",
                may_have_been_charged=True,
            )
        error = APIConnectionError(message)  # the recorded message carries the warning
        error.may_have_been_charged = True
        return error
    if document.get("type") == "ContentSafetyError":
        return ContentSafetyError(
            message, generation_id=generation_id, credits_used=None, remaining_credits=None
        )
    return GenerationFailedError(message, generation_id=generation_id)


def replay(record: dict[str, Any], *, index: int, prompt: str, key: str) -> BatchResult:
    """The result an earlier run recorded, read back."""
    status = record.get("status")
    generation_id = _str(record.get("generation_id"))
    final: BatchStatus = "maybe_charged"  # "sending", or an error that may have charged
    if status in ("completed", "failed", "lost"):
        final = status
    paid = _int(record.get("credits_used"))
    files = tuple(Path(str(path)) for path in record.get("files") or ())
    if final == "completed" and generation_id is not None:
        created = _str(record.get("created_at"))
        generation = Generation(
            id=generation_id,
            status=GenerationStatus.COMPLETED,
            image_urls=tuple(str(url) for url in record.get("image_urls") or ()),
            prompt=_str(record.get("prompt")) or prompt,
            model=_str(record.get("model")),
            credits_used=paid,
            created_at=_timestamp(created),
        )
        return BatchResult(
            index=index,
            prompt=prompt,
            generation=generation,
            files=files,
            key=key,
            generation_id=generation_id,
            credits_used=paid,
            from_journal=True,
        )
    return BatchResult(
        index=index,
        prompt=prompt,
        error=_replayed_error(final, record, generation_id),
        files=files,
        status=final,
        key=key,
        generation_id=generation_id,
        credits_used=paid,
        from_journal=True,
    )
