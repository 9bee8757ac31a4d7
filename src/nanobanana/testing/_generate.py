"""``POST /generate``: validation, credits, the three modes; and ``GET /generate?id=``.

Prompt markers let a test or a demo steer one call without code:

- ``[fail]``: the generation fails (sync: 500; stream: an ``error`` event; async: the
  poll says ``failed`` with an ``errorMessage``). Credits are not refunded.
- ``[unsafe]``: the content-safety check trips (sync: 200 with ``success: false,
  warning: true``; stream: an ``error`` event; async: ``failed``). Credits are spent.
- ``[slow=2.5]``: the generation takes 2.5 seconds.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import attrs

from nanobanana.testing._asgi import ClientGone, ResetConnection
from nanobanana.testing._call import Call, busy_body
from nanobanana.testing._catalogue import SimModel
from nanobanana.testing._sse import stream_generation
from nanobanana.testing._state import Account, Generation

__all__ = [
    "BAD_JSON",
    "FAILURE_MESSAGE",
    "SAFETY_MESSAGE",
    "handle_generate",
    "handle_poll",
    "parse_mode",
    "read_payload",
]

MODES = ("sync", "stream", "async")
FAILURE_MESSAGE = "Generation failed due to server error"  # async-mode docs, "Failed"
SAFETY_MESSAGE = "Content safety check failed"  # sync-mode docs, "Warning Response"
_ASYNC_MESSAGE = (
    "Generation started. Use GET /api/v1/generate?id={generationId} to poll for results."
)
_MARKER = re.compile(r"\[(fail|unsafe|slow=(\d+(?:\.\d+)?))\]", re.IGNORECASE)
_ASPECT = re.compile(r"^\d{1,2}:\d{1,2}$")


BAD_JSON: Any = object()


class _Invalid(Exception):  # noqa: N818 - control flow for a 400
    pass


@attrs.frozen(kw_only=True)
class _Order:
    prompt: str
    mode: str
    model: SimModel
    references: tuple[str, ...]
    aspect_ratio: str
    quantity: int


def parse_mode(payload: object) -> str | None:
    """The request's ``mode`` for fault matching: ``sync`` when omitted, ``None`` if unusable."""
    if not isinstance(payload, dict):
        return None
    mode = payload.get("mode", "sync")
    return mode if mode in MODES else None


def _order(payload: object, call: Call) -> _Order:
    config = call.state.config
    if not isinstance(payload, dict):
        raise _Invalid("Request body must be a JSON object")
    prompt = payload.get("prompt")
    if prompt is None:
        raise _Invalid("Missing required parameter: prompt")
    if not isinstance(prompt, str):
        raise _Invalid("prompt must be a string")
    if not prompt.strip():
        raise _Invalid("prompt must not be empty")
    mode = payload.get("mode", "sync")
    if mode not in MODES:
        raise _Invalid('Invalid mode. Expected one of "sync", "stream", "async"')
    name = payload.get("selectedModel") or config.default_model
    if not isinstance(name, str):
        raise _Invalid("selectedModel must be a string")
    model = config.model(name)
    if model is None:
        raise _Invalid(f"Unknown model: {name}. See GET /api/v1/models")
    references = payload.get("referenceImageUrls") or []
    if not isinstance(references, list) or not all(isinstance(u, str) for u in references):
        raise _Invalid("referenceImageUrls must be an array of strings")
    if references and not model.supports_image_input:
        raise _Invalid(f"Model {name} does not support image input")
    aspect = payload.get("aspectRatio") or "default"
    if not isinstance(aspect, str) or (aspect != "default" and not _ASPECT.match(aspect)):
        raise _Invalid('aspectRatio must be "default" or a ratio such as "16:9"')
    quantity = payload.get("quantity", 1)
    if quantity is None:
        quantity = 1
    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)):
        raise _Invalid("quantity must be a number")
    if not math.isfinite(quantity) or quantity != int(quantity):
        raise _Invalid("quantity must be a whole number")
    # Out-of-range values are clamped, not refused; streaming emits one image (overview).
    quantity = 1 if mode == "stream" else min(max(int(quantity), 1), config.max_quantity)
    return _Order(
        prompt=prompt,
        mode=mode,
        model=model,
        references=tuple(references),
        aspect_ratio=aspect,
        quantity=quantity,
    )


def _unit_cost(order: _Order) -> int:
    # "In image-to-image mode, each additional reference image costs 1 extra credit"
    # (overview docs): we read "additional" as beyond the first, so one reference image
    # costs the model's price and each further one adds 1. "Extra-image fees are
    # included in the unit cost", which is then multiplied by quantity.
    return order.model.credits_cost + max(0, len(order.references) - 1)


def _outcome(call: Call, order: _Order) -> tuple[str, float, str | None, str | None]:
    """(outcome, duration, error message, forced id) from markers, then an outcome fault."""
    outcome, duration = "success", call.state.generation_time(order.model.name)
    for match in _MARKER.finditer(order.prompt):
        word = match.group(1).lower()
        if word == "fail":
            outcome = "failure"
        elif word == "unsafe":
            outcome = "unsafe"
        else:
            duration = float(match.group(2))
    error, forced_id = None, None
    fault = call.fault("generation")
    if fault is not None:
        outcome = fault.outcome or outcome
        duration = duration if fault.generation_time is None else fault.generation_time
        error, forced_id = fault.error_message, fault.generation_id
    if outcome == "failure":
        error = error or FAILURE_MESSAGE
    elif outcome == "unsafe":
        error = error or SAFETY_MESSAGE
    return outcome, duration, error, forced_id


def read_payload(body: bytes) -> Any:
    """The request's JSON, or `BAD_JSON` if it is not JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return BAD_JSON


async def handle_generate(call: Call, account: Account, payload: Any) -> None:
    """Serve an authenticated, in-flight ``POST /generate`` (``payload``: `read_payload`)."""
    state, ex = call.state, call.ex
    if payload is BAD_JSON:
        await ex.error(400, "Invalid JSON body")
        return
    try:
        order = _order(payload, call)
    except _Invalid as exc:
        await ex.error(400, str(exc))
        return
    if order.model.requires_pro and not account.pro:
        await ex.error(403, f"Model {order.model.name} requires a Pro subscription")
        return
    outcome, duration, error, forced_id = _outcome(call, order)
    unit = _unit_cost(order)
    total = unit * order.quantity
    available: int | None = None
    busy, balance = False, 0
    with state.lock:
        generation_id = forced_id if forced_id is not None else state.new_id()
        generation = Generation(
            id=generation_id,
            key_fingerprint=account.fingerprint,
            prompt=order.prompt,
            model=order.model.name,
            mode=order.mode,
            quantity=order.quantity,
            aspect_ratio=order.aspect_ratio,
            reference_image_urls=order.references,
            credits_used=total,
            created_at=state.clock.now(),
            started=time.monotonic(),
            duration=duration,
            outcome=outcome,
            error_message=error,
            image_urls=state.image_urls(generation_id, order.quantity, call.cdn_base_url()),
            holds=tuple(state.holds),
        )
        # Check and charge under one lock: an account with a limit above 1 may send
        # concurrent requests, and must not overdraw.
        if account.credits < total:
            available = account.credits
        else:
            # "Credits are deducted when the task is submitted" (async-mode docs).
            state.charge(account, generation)
            balance = account.credits
            busy = order.mode == "async" and (
                state.running_async_tasks() >= state.config.max_async_tasks
            )
            if busy:
                # "When the server is busy, consumed credits are automatically refunded"
                # (async-mode docs): the ledger shows the charge and its refund.
                state.refund(account, generation)
            else:
                state.add_generation(generation)
    if available is not None:
        await ex.error(402, "Insufficient credits", creditsRequired=total, credits=available)
        return
    call.generation_id = generation.id
    if busy:
        headers = [("retry-after", r)] if (r := state.config.busy_retry_after) else []
        await ex.json(503, busy_body(state), headers=headers)
        return
    fault = call.after_charge
    with state.lock:
        applies = fault is not None and state.faults.consume(fault)
    if fault is not None and applies:
        # The account is charged and the generation runs, but the answer is lost.
        call.faults["after_charge"] = fault
        if fault.kind == "reset":
            raise ResetConnection
        await call.send_fault(fault, account)
        return
    if order.mode == "stream":
        await stream_generation(call, generation)
    elif order.mode == "async":
        await ex.json(
            200,
            {
                "success": True,
                "async": True,
                "generationId": generation.id,
                "message": _ASYNC_MESSAGE,
                "creditsUsed": total,
                "remainingCredits": balance,
            },
        )
    else:
        await _sync(call, generation, balance)


async def _sync(call: Call, generation: Generation, balance: int) -> None:
    ex = call.ex
    if not await ex.race(generation.wait()):
        raise ClientGone  # the generation goes on and stays pollable

    if generation.outcome == "success":
        await ex.json(
            200,
            {
                "success": True,
                "generationId": generation.id,
                "imageUrls": list(generation.image_urls),
                "creditsUsed": generation.credits_used,
                "remainingCredits": balance,
            },
        )
    elif generation.outcome == "unsafe":
        await ex.json(
            200,
            {
                "success": False,
                "warning": True,
                "generationId": generation.id,
                "message": SAFETY_MESSAGE,
                "creditsUsed": generation.credits_used,
                "remainingCredits": balance,
            },
        )
    else:
        # The sync docs do not show a failure; a 500 after the charge is what a client
        # must expect (PROTOCOL.md: "POST /generate: do NOT resend"), with the id.
        await ex.error(
            500,
            generation.error_message or FAILURE_MESSAGE,
            type="generation_failed",
            generationId=generation.id,
        )


async def handle_poll(call: Call, account: Account) -> None:
    """Serve an authenticated, in-flight ``GET /generate?id=``."""
    ex = call.ex
    generation_id = (ex.query.get("id") or [""])[0]
    if not generation_id:
        await ex.error(400, "Missing required parameter: id")
        return
    call.generation_id = generation_id
    with call.state.lock:
        generation = call.state.generations.get(generation_id)
        # Another account's generation is as unknown as a missing one.
        if generation is None or generation.key_fingerprint != account.fingerprint:
            data = None
        else:
            data = generation.poll_json()
    if data is None:
        await ex.error(404, "Generation not found")
        return
    await ex.json(200, {"data": data})
