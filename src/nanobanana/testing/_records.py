"""What the simulator lets tests inspect: the request log, the ledger, generations."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import attrs

__all__ = ["GenerationRecord", "LedgerEntry", "RequestRecord", "fingerprint"]


def fingerprint(api_key: str) -> str:
    """A short, stable stand-in for an API key, so that logs never hold the key itself.

    Example:
        >>> fingerprint("nb_test_key") == fingerprint("nb_test_key")
        True
    """
    return "key_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _json(value: attrs.AttrsInstance) -> dict[str, Any]:
    def convert(_inst: object, _field: object, item: Any) -> Any:
        if isinstance(item, dt.datetime):
            return item.isoformat()
        if isinstance(item, tuple):
            return list(item)
        return item

    return attrs.asdict(value, value_serializer=convert)


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the simulator answered (or dropped), logged when it ended.

    Attributes:
        time: When the request arrived (``time.monotonic()``, real seconds).
        end: When its answer ended (same clock).
        origin: ``"api"`` or ``"cdn"``.
        method: The HTTP method.
        path: The request path (``/api/v1/generate``, ``/img/...``).
        query: The raw query string.
        mode: The ``mode`` of a ``POST /generate`` (``sync`` when omitted), else ``None``.
        key_fingerprint: `fingerprint` of the Bearer token presented, if any.
        authorization: Whether an ``Authorization`` header was present at all.
        status: The HTTP status sent, or ``None`` if no response was started.
        outcome: ``"response"`` (answered in full), ``"reset"`` (connection reset),
            ``"cut"`` (response cut on purpose) or ``"disconnected"`` (the client left).
        faults: The kinds of the faults that hit the request.
        generation_id: The generation the request created or read, if any.
        user_agent: The ``User-Agent`` header, if any.
    """

    time: float
    end: float
    origin: str
    method: str
    path: str
    query: str
    mode: str | None
    key_fingerprint: str | None
    authorization: bool
    status: int | None
    outcome: str
    faults: tuple[str, ...]
    generation_id: str | None
    user_agent: str | None

    def to_json(self) -> dict[str, Any]:
        """The record as the admin API shows it."""
        return _json(self)


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """One movement of credits.

    Attributes:
        time: When it happened (``time.monotonic()``).
        kind: ``"charge"`` or ``"refund"``.
        key_fingerprint: The account's `fingerprint`.
        generation_id: The generation charged for (also for a refunded 503, whose
            generation was never created).
        amount: Credits moved (positive for both kinds).
        balance: The account's credits afterwards.
        prompt: The generation's prompt.
        model: The model charged for.
    """

    time: float
    kind: str
    key_fingerprint: str
    generation_id: str
    amount: int
    balance: int
    prompt: str
    model: str

    def to_json(self) -> dict[str, Any]:
        """The entry as the admin API shows it."""
        return _json(self)


@attrs.frozen(kw_only=True)
class GenerationRecord:
    """A snapshot of one generation.

    Attributes:
        id: The generation id.
        key_fingerprint: The owning account's `fingerprint`.
        prompt: The prompt, as sent.
        model: The model used.
        mode: ``sync``, ``stream`` or ``async``.
        quantity: Images requested (after clamping).
        aspect_ratio: The aspect ratio asked for.
        reference_image_urls: The reference images sent.
        credits_used: Credits charged.
        status: ``processing``, ``completed`` or ``failed``.
        outcome: What it will end as: ``success``, ``failure`` or ``unsafe``.
        image_urls: The signed CDN URLs (also before completion, for tests).
        error_message: Why it failed, for failures.
        created_at: The simulated clock when it was accepted.
        generation_time: The seconds it takes (drawn when a range was set).
    """

    id: str
    key_fingerprint: str
    prompt: str
    model: str
    mode: str
    quantity: int
    aspect_ratio: str
    reference_image_urls: tuple[str, ...]
    credits_used: int
    status: str
    outcome: str
    image_urls: tuple[str, ...]
    error_message: str | None
    created_at: dt.datetime
    generation_time: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The snapshot as the admin API shows it."""
        return _json(self)
