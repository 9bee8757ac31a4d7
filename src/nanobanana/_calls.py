"""What the calls send and how their answers read: request bodies in, values or errors out.

The client (`nanobanana._client`) sends; this module knows the protocol's shapes
(PROTOCOL.md, the mode docs): the ``POST /generate`` body with its checks, the
``data`` envelope of the GET answers, the sync answer that is a result, a refusal or
a safety verdict, and the async answer that must carry a ``generationId``. The batch
engine builds its bodies here too: one set of rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nanobanana._errors import (
    ContentSafetyError,
    GenerationFailedError,
    UnexpectedResponseError,
    note_request,
)
from nanobanana._models import Generation

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "check_id",
    "data_of",
    "generate_body",
    "opt_int",
    "read_async_answer",
    "read_sync_answer",
]


def generate_body(
    prompt: str,
    *,
    mode: str,
    model: str | None,
    reference_image_urls: Sequence[str] | None,
    aspect_ratio: str | None,
    quantity: int | None,
) -> dict[str, Any]:
    """The ``POST /generate`` body, or a `TypeError` / `ValueError` naming the bad argument."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    body: dict[str, Any] = {"prompt": prompt, "mode": mode}
    if model is not None:
        if not isinstance(model, str) or not model:
            raise TypeError("model must be a non-empty str (a name from client.models())")
        body["selectedModel"] = model
    if reference_image_urls is not None:
        if isinstance(reference_image_urls, (str, bytes)):
            raise TypeError("reference_image_urls must be a list of URLs, not a single string")
        urls = list(reference_image_urls)
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"reference image URL must be an http(s) URL: {url!r}")
        if urls:
            body["referenceImageUrls"] = urls
    if aspect_ratio is not None:
        if not isinstance(aspect_ratio, str) or not aspect_ratio:
            raise TypeError("aspect_ratio must be a str such as '16:9'")
        body["aspectRatio"] = aspect_ratio
    if quantity is not None:
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise TypeError("quantity must be an int")
        if quantity < 1:
            raise ValueError("quantity must be at least 1 (the server caps the maximum)")
        body["quantity"] = quantity
    return body


def data_of(body: Any, what: str) -> Any:
    """The ``data`` field of a GET answer (``what`` names the call in the error)."""
    if not isinstance(body, dict) or "data" not in body:
        raise UnexpectedResponseError(
            f"Unexpected response to {what}: no field 'data'.", field="data", body=body
        )
    return body["data"]


def opt_int(value: Any) -> int | None:
    """A JSON number as an int; None for anything else (and for NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # json.loads reads 1e400 as inf and accepts NaN, which int() refuses.
    return int(value) if math.isfinite(value) else None


def check_id(generation_id: str) -> None:
    """Refuse an id that cannot name a generation."""
    if not isinstance(generation_id, str) or not generation_id.strip():
        raise ValueError("generation_id must be a non-empty str")


def _seen_id(answer: Any) -> str | None:
    found = answer.get("generationId") if isinstance(answer, dict) else None
    return found if isinstance(found, str) and found else None


def read_sync_answer(
    answer: Any, *, prompt: str, model: str | None, requested_at: datetime
) -> Generation:
    """A sync ``POST /generate`` 200: the `Generation`, or the error it means.

    A 200 is a refusal only when it says so (``success: false``, or the safety check's
    ``warning``; sync-mode docs): an answer without ``success`` but with the images is
    a result, and one with neither is an unreadable answer that was charged.
    """
    if isinstance(answer, dict) and (answer.get("success") is False or answer.get("warning")):
        generation_id = _seen_id(answer)
        message = answer.get("message") or answer.get("error") or "Generation refused"
        if answer.get("warning"):
            raise ContentSafetyError(
                f"{message} (generation {generation_id}); the credits were spent.",
                generation_id=generation_id,
                credits_used=opt_int(answer.get("creditsUsed")),
                remaining_credits=opt_int(answer.get("remainingCredits")),
            )
        raise GenerationFailedError(str(message), generation_id=generation_id)
    try:
        return Generation.from_sync_json(
            answer, prompt=prompt, model=model, requested_at=requested_at
        )
    except UnexpectedResponseError as exc:
        # A 2xx: accepted, and so charged. Say so, as for a 500.
        error = UnexpectedResponseError(
            exc.message, field=exc.field, body=exc.body, may_have_been_charged=True
        )
        note_request(
            error,
            requested_at=requested_at,
            prompt=prompt,
            model=model,
            mode="sync",
            generation_id=_seen_id(answer),
        )
        raise error from None


def read_async_answer(
    answer: Any, *, prompt: str, model: str | None, requested_at: datetime
) -> str:
    """An async ``POST /generate`` 200: the job's id, or the error its absence means."""
    generation_id = _seen_id(answer)
    if generation_id is None:
        error = UnexpectedResponseError(
            "Unexpected response to POST /generate (async): no field 'generationId'.",
            field="generationId",
            body=answer,
            may_have_been_charged=True,
        )
        note_request(error, requested_at=requested_at, prompt=prompt, model=model, mode="async")
        raise error
    return generation_id
