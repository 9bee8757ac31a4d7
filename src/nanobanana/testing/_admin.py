"""The admin API under ``/_sim/`` on the API origin: steer a simulator from outside.

Bodies and answers are JSON with snake_case names that mirror the keyword arguments of
the in-process methods (`Simulator.inject` and friends). `ROUTES` lists every call,
and ``GET /_sim/`` (the address the ``nanobanana simulate`` banner prints) answers
with that list, so the API can be discovered from a browser or with curl.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from nanobanana.testing._asgi import Exchange
from nanobanana.testing._clock import iso8601
from nanobanana.testing._faults import DEFAULT_RANDOM_KINDS, Fault
from nanobanana.testing._state import State

__all__ = ["ROUTES", "AdminRoute", "handle_admin"]

_PREFIX = "/_sim"


@attrs.frozen(kw_only=True)
class AdminRoute:
    """One call of the admin API: ``method path``, its JSON body's fields, what it does."""

    method: str
    path: str
    body: str = ""
    does: str


#: Every call of the admin API (``GET /_sim/`` lists them; docs/testing.md documents them).
ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute(method="GET", path="/_sim/", does="this list of calls"),
    AdminRoute(method="GET", path="/_sim/requests", does="the request log"),
    AdminRoute(method="GET", path="/_sim/ledger", does="the credit ledger: charges, refunds"),
    AdminRoute(method="GET", path="/_sim/generations", does="every generation"),
    AdminRoute(method="GET", path="/_sim/generations/<id>", does="one generation"),
    AdminRoute(method="GET", path="/_sim/accounts", does="the accounts (key fingerprints)"),
    AdminRoute(
        method="POST",
        path="/_sim/accounts",
        body="api_key, credits, api_access, concurrency_limit, pro",
        does="add an account, or reset one",
    ),
    AdminRoute(method="GET", path="/_sim/faults", does="the armed faults"),
    AdminRoute(method="POST", path="/_sim/faults", body="kind, Fault fields", does="arm a fault"),
    AdminRoute(
        method="POST",
        path="/_sim/faults/random",
        body="rate, seed, kinds",
        does="hit each request with probability rate by a fault drawn from kinds",
    ),
    AdminRoute(method="DELETE", path="/_sim/faults", does="disarm every fault"),
    AdminRoute(method="GET", path="/_sim/clock", does="the simulated time"),
    AdminRoute(method="POST", path="/_sim/clock/advance", body="seconds", does="move the clock"),
    AdminRoute(
        method="GET", path="/_sim/generation-time", does="how long generations take, by model"
    ),
    AdminRoute(
        method="POST",
        path="/_sim/generation-time",
        body="seconds, model",
        does='set how long generations take: seconds, or a range ("0.5-2", [0.5, 2])',
    ),
    AdminRoute(method="POST", path="/_sim/hold", does="hold generations accepted from now on"),
    AdminRoute(method="POST", path="/_sim/release", does="release every hold"),
    AdminRoute(method="POST", path="/_sim/reset", does="forget everything"),
)


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


def _index() -> dict[str, Any]:
    return {
        "simulator": "nanobanana",
        "api": "/api/v1",
        "routes": [attrs.asdict(route) for route in ROUTES],
    }


def _generation_times(state: State) -> dict[str, Any]:
    return {
        "default": state.generation_time_of(None).to_json(),
        "models": {
            model.name: state.generation_time_of(model.name).to_json()
            for model in state.config.models
        },
    }


def _get(state: State, route: str) -> Any:
    with state.lock:
        if route == "/":
            return _index()
        if route == "/generation-time":
            return _generation_times(state)
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
            spec = state.set_generation_time(payload["seconds"], model=payload.get("model"))
            return {**spec.to_json(), "model": payload.get("model")}
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
