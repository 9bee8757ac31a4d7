"""The simulator as a raw ASGI 3 application.

Routes (``origin`` decides which a given instance serves):

- API origin: ``/api/v1/models``, ``/api/v1/credits``, ``/api/v1/generate``, and the
  admin API under ``/_sim/`` (see ``_admin.py``).
- CDN origin: ``/img/<generation id>/<n>.png`` (see ``_cdn.py``).

The app keeps no event-loop state of its own (generations finish by the clock), so it
runs under any asyncio ASGI server; ``origin="both"`` serves everything on one port.
"""

from __future__ import annotations

from typing import Any

from nanobanana.testing._admin import handle_admin
from nanobanana.testing._asgi import (
    ClientGone,
    CutConnection,
    Exchange,
    RawResponse,
    Receive,
    ResetConnection,
    Scope,
    Send,
)
from nanobanana.testing._call import Call
from nanobanana.testing._cdn import handle_image
from nanobanana.testing._faults import RequestInfo
from nanobanana.testing._generate import handle_generate, handle_poll, parse_mode, read_payload
from nanobanana.testing._state import State

__all__ = ["API_PREFIX", "SimApp"]

API_PREFIX = "/api/v1"


class SimApp:
    """The ASGI application of one simulator.

    Args:
        state: The simulator's shared state.
        origin: ``"api"``, ``"cdn"`` or ``"both"`` (one server for everything).
    """

    def __init__(self, state: State, *, origin: str = "both") -> None:
        if origin not in ("api", "cdn", "both"):
            raise ValueError("origin must be 'api', 'cdn' or 'both'")
        self.state = state
        self.origin = origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        ex = Exchange(scope, receive, send)
        try:
            await self._route(ex)
        finally:
            await ex.close()

    async def _route(self, ex: Exchange) -> None:
        path = ex.path
        serves_api = self.origin in ("api", "both")
        serves_cdn = self.origin in ("cdn", "both")
        admin = path == "/_sim" or path.startswith("/_sim/")
        if serves_api and admin and self.state.config.admin:
            await handle_admin(ex, self.state)
        elif serves_api and (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            await self._logged(Call(ex, self.state, "api"), path.removeprefix(API_PREFIX))
        elif serves_cdn and path.startswith("/img/"):
            await self._logged(Call(ex, self.state, "cdn"), path)
        else:
            await ex.read_body()
            await ex.error(404, "Not found")

    async def _logged(self, call: Call, endpoint: str) -> None:
        """Handle ``call``, then log it whatever happened to the connection."""
        call.ex.on_finish(call.log)
        call.key_fingerprint = call.presented_key_fingerprint()
        try:
            await self._handle(call, endpoint)
        except ResetConnection:
            call.outcome = "reset"
            raise
        except (CutConnection, RawResponse):
            call.outcome = "cut"
            raise
        except ClientGone:
            call.outcome = "disconnected"
        except Exception:
            call.outcome = "error"
            raise
        finally:
            # Normally done just before the last byte; here for answers that never ended.
            call.ex.finish()

    async def _handle(self, call: Call, endpoint: str) -> None:
        ex, state = call.ex, self.state
        body = await ex.read_body()
        if ex.body_too_large:
            await ex.error(413, "Request body too large")
            return
        payload = None
        if call.origin == "api" and ex.method == "POST" and endpoint == "/generate":
            payload = read_payload(body)
            call.mode = parse_mode(payload)
        info = RequestInfo(origin=call.origin, method=ex.method, endpoint=endpoint, mode=call.mode)
        with state.lock:
            call.faults = state.faults.take(info)
        # Not used up (nor logged) unless the request gets as far as the charge.
        call.after_charge = call.faults.pop("after_charge", None)
        delay = call.fault("delay")
        if delay is not None and not await ex.sleep(delay.seconds):
            raise ClientGone
        fault = call.fault("response")
        if fault is not None:
            if fault.kind == "reset":
                # Read but not processed: nothing is charged.
                raise ResetConnection
            if fault.kind == "content_type":
                ex.content_type_override = fault.content_type
            elif fault.kind == "status" and call.origin == "api":
                await call.send_fault(fault)
                return
        if call.origin == "cdn":
            await handle_image(call)
        else:
            await self._api(call, endpoint, payload)

    async def _api(self, call: Call, endpoint: str, payload: Any) -> None:
        ex = call.ex
        allowed = {"/models": ("GET",), "/credits": ("GET",), "/generate": ("GET", "POST")}
        methods = allowed.get(endpoint)
        if methods is None:
            await ex.error(404, f"Not found: {ex.path}")
            return
        if ex.method not in methods and not (ex.method == "HEAD" and "GET" in methods):
            await ex.error(405, "Method not allowed", headers=[("allow", ", ".join(methods))])
            return
        if endpoint == "/models":
            # "No authentication required" (overview docs, GET /models).
            models = [model.to_json() for model in self.state.config.models]
            await ex.json(200, {"data": models})
            return
        account = await call.authenticate()
        if account is None or not await call.enter(account):
            return
        if endpoint == "/credits":
            with self.state.lock:
                balance = account.credits
            await ex.json(200, {"data": {"credits": balance}})
        elif ex.method == "POST":
            await handle_generate(call, account, payload)
        else:
            await handle_poll(call, account)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
