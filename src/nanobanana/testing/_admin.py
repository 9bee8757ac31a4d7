"""The admin API under ``/_sim/`` on the API origin: steer a simulator from outside.

Bodies and answers are JSON with snake_case names that mirror the keyword arguments of
the in-process methods (`Simulator.inject` and friends):

| call | body | does |
|---|---|---|
| ``GET /_sim/requests`` | | the request log |
| ``GET /_sim/ledger`` | | the credit ledger |
| ``GET /_sim/generations[/<id>]`` | | generations (or one) |
| ``GET /_sim/accounts`` | | accounts (key fingerprints, never keys) |
| ``POST /_sim/accounts`` | ``api_key, credits, api_access, concurrency_limit, pro`` | add/update |
| ``GET /_sim/faults`` | | armed faults |
| ``POST /_sim/faults`` | ``kind`` and `Fault` fields | arm a fault |
| ``POST /_sim/faults/random`` | ``rate, seed, kinds`` | random faults |
| ``DELETE /_sim/faults`` | | disarm all |
| ``GET /_sim/clock`` | | the simulated time |
| ``POST /_sim/clock/advance`` | ``seconds`` | move the clock |
| ``POST /_sim/generation-time`` | ``seconds, model`` | set generation time |
| ``POST /_sim/hold`` / ``POST /_sim/release`` | | hold / release generations |
| ``POST /_sim/reset`` | | forget everything |
"""

from __future__ import annotations

import json
from typing import Any

from nanobanana.testing._asgi import Exchange
from nanobanana.testing._clock import iso8601
from nanobanana.testing._faults import DEFAULT_RANDOM_KINDS, Fault
from nanobanana.testing._state import State

__all__ = ["handle_admin"]

_PREFIX = "/_sim"


class _BadRequestError(Exception):
    pass


def _object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _BadRequestError("body is not JSON") from exc
    if not isinstance(payload, dict):
        raise _BadRequestError("body must be a JSON object")
    return payload


def _clock(state: State) -> dict[str, Any]:
    now = state.clock.now()
    return {"now": iso8601(now), "timestamp": now}


def _get(state: State, route: str) -> Any:
    with state.lock:
        if route == "/requests":
            return [record.to_json() for record in state.requests]
        if route == "/ledger":
            return [entry.to_json() for entry in state.ledger]
        if route == "/generations":
            return [g.snapshot().to_json() for g in state.generations.values()]
        if route.startswith("/generations/"):
            generation = state.generations.get(route.removeprefix("/generations/"))
            return None if generation is None else generation.snapshot().to_json()
        if route == "/accounts":
            return [account.to_json() for account in state.accounts.values()]
        if route == "/faults":
            return state.faults.armed()
        if route == "/clock":
            return _clock(state)
    raise LookupError(route)


def _post(state: State, route: str, payload: dict[str, Any]) -> Any:
    try:
        if route == "/accounts":
            api_key = payload.pop("api_key")
            return state.add_account(api_key, **payload).to_json()
        if route == "/faults":
            with state.lock:
                return state.faults.add(Fault(**payload)).to_json()
        if route == "/faults/random":
            kinds = tuple(payload.get("kinds", DEFAULT_RANDOM_KINDS))
            with state.lock:
                state.faults.set_random(
                    rate=payload.get("rate", 0.3), seed=payload.get("seed"), kinds=kinds
                )
                return state.faults.armed()
        if route == "/clock/advance":
            state.clock.advance(float(payload["seconds"]))
            return _clock(state)
        if route == "/generation-time":
            state.set_generation_time(float(payload["seconds"]), model=payload.get("model"))
            return {"seconds": float(payload["seconds"]), "model": payload.get("model")}
        if route == "/hold":
            state.hold()
            return {"holds": len(state.holds)}
        if route == "/release":
            state.release_holds()
            return {"holds": 0}
        if route == "/reset":
            state.reset()
            return {"reset": True}
    except (KeyError, TypeError, ValueError) as exc:
        raise _BadRequestError(f"{type(exc).__name__}: {exc}") from exc
    raise LookupError(route)


def _dispatch(state: State, method: str, route: str, body: bytes) -> Any:
    if method == "GET":
        data = _get(state, route)
        if data is None:
            raise LookupError(route)
        return data
    if method == "POST":
        return _post(state, route, _object(body))
    if method == "DELETE" and route == "/faults":
        with state.lock:
            state.faults.clear()
        return []
    raise LookupError(route)


async def handle_admin(ex: Exchange, state: State) -> None:
    """Serve one ``/_sim/...`` request."""
    route = ex.path.removeprefix(_PREFIX).rstrip("/") or "/"
    body = await ex.read_body()
    try:
        data = _dispatch(state, ex.method, route, body)
    except _BadRequestError as exc:
        await ex.error(400, str(exc))
        return
    except LookupError:
        await ex.error(404, f"not found: {ex.method} {ex.path}")
        return
    await ex.json(200, {"data": data})
