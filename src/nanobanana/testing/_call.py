"""One simulated API call: authentication, the concurrency limit, faults, and its log line."""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any

import attrs

from nanobanana.testing._asgi import Exchange
from nanobanana.testing._faults import Category, Fault
from nanobanana.testing._records import RequestRecord, fingerprint
from nanobanana.testing._state import Account, State

__all__ = ["BUSY_MESSAGE", "Call", "busy_body", "concurrency_response"]

BUSY_MESSAGE = "Server is busy, too many concurrent tasks. Please retry later."

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{code} {phrase}</title></head>\n"
    "<body><center><h1>{code} {phrase}</h1></center><hr><center>nginx</center></body></html>\n"
)

# The documented error messages (overview docs, "Common Error Responses"), used when a
# fault asks for a status without giving a body.
_MESSAGES = {
    400: "Invalid request parameters",
    401: "Invalid API key",
    402: "Insufficient credits",
    403: "API access is not enabled for this account",
    404: "Not found",
    500: "Internal server error",
}


def busy_body(state: State) -> dict[str, Any]:
    """The 503 body of a full async task queue (async-mode docs, "Server Busy")."""
    active = max(state.running_async_tasks(), state.config.max_async_tasks)
    return {"error": BUSY_MESSAGE, "type": "server_busy", "activeTasks": active}


def concurrency_response(
    limit: int, active: int, retry_after: str | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The 429 body and headers (overview docs, "429 concurrency limit response example")."""
    body = {
        "error": "Too many concurrent API requests for this account",
        "type": "concurrency_limit",
        "limit": limit,
        "active": active,
    }
    headers = [("x-ratelimit-limit", str(limit)), ("x-ratelimit-active", str(active))]
    if retry_after is not None:
        headers.append(("retry-after", retry_after))
    return body, headers


@attrs.define
class Call:
    """What the simulator knows about one request while it handles it."""

    ex: Exchange
    state: State
    origin: str
    started: float = attrs.Factory(time.monotonic)
    faults: dict[Category, Fault] = attrs.Factory(dict)
    after_charge: Fault | None = None
    mode: str | None = None
    key_fingerprint: str | None = None
    generation_id: str | None = None
    outcome: str = "response"

    def fault(self, category: Category) -> Fault | None:
        """The fault of ``category`` that hit this call, if any."""
        return self.faults.get(category)

    def log(self) -> None:
        """Append this call to the request log."""
        ex = self.ex
        self.state.log(
            RequestRecord(
                time=self.started,
                end=time.monotonic(),
                origin=self.origin,
                method=ex.method,
                path=ex.path,
                query=ex.raw_query,
                mode=self.mode,
                key_fingerprint=self.key_fingerprint,
                authorization=ex.header("authorization") is not None,
                status=ex.status,
                outcome=self.outcome,
                faults=tuple(fault.kind for fault in self.faults.values()),
                generation_id=self.generation_id,
                user_agent=ex.header("user-agent"),
            )
        )

    def cdn_base_url(self) -> str:
        """Where image URLs point: the CDN origin, or this server when it serves both."""
        if self.state.cdn_base_url is not None:
            return self.state.cdn_base_url
        host = self.ex.header("host") or "127.0.0.1"
        return f"{self.ex.scope.get('scheme', 'http')}://{host}"

    def _bearer_token(self) -> str | None:
        header = self.ex.header("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def presented_key_fingerprint(self) -> str | None:
        """The `fingerprint` of the Bearer token sent, valid or not (for the log)."""
        token = self._bearer_token()
        return None if token is None else fingerprint(token)

    async def authenticate(self) -> Account | None:
        """Check the Bearer key; answer 401 or 403 and return ``None`` if it does not pass."""
        if self.ex.header("authorization") is None:
            await self.ex.error(401, "Missing API key. Use the Authorization: Bearer header.")
            return None
        token = self._bearer_token()
        if token is None:
            await self.ex.error(401, "Invalid Authorization header. Expected: Bearer <api key>")
            return None
        account = self.state.account(token)
        if account is None:
            await self.ex.error(401, "Invalid API key")
            return None
        if not account.api_access:
            await self.ex.error(403, "API access is not enabled for this account")
            return None
        return account

    async def enter(self, account: Account) -> bool:
        """Count this call in flight, or answer 429 if the account is at its limit.

        Every authenticated request counts, streams included, until its last byte is
        sent (overview docs: "each account allows only 1 concurrent request by default").
        """
        state = self.state
        state.arrive(account)
        self.ex.on_finish(lambda: state.depart(account))
        if state.try_enter(account):
            self.ex.on_finish(lambda: state.leave(account))
            return True
        with state.lock:
            limit, active = account.concurrency_limit, account.in_flight
        body, headers = concurrency_response(limit, active, state.config.retry_after)
        await self.ex.json(429, body, headers=headers)
        return False

    async def send_fault(self, fault: Fault, account: Account | None = None) -> None:
        """Answer with the status (and documented body) that a ``status`` fault asks for."""
        status = fault.status or 500
        headers: list[tuple[str, str]] = []
        payload: Any
        if status == 429:
            with self.state.lock:
                limit = (
                    account.concurrency_limit if account else self.state.config.concurrency_limit
                )
                active = account.in_flight if account else limit
            payload, headers = concurrency_response(
                limit, active, fault.retry_after or self.state.config.retry_after
            )
        elif status == 503:
            payload = busy_body(self.state)
            retry_after = fault.retry_after or self.state.config.busy_retry_after
            if retry_after is not None:
                headers.append(("retry-after", retry_after))
        else:
            phrase = _phrase(status)
            payload = {"error": _MESSAGES.get(status, phrase)}
            if fault.retry_after is not None:
                headers.append(("retry-after", fault.retry_after))
        if fault.body is not None:
            payload = fault.body
        if fault.html or self.origin == "cdn":
            page = _HTML_PAGE.format(code=status, phrase=_phrase(status))
            body = payload if isinstance(payload, str) and fault.body is not None else page
            await self.ex.respond(
                status,
                body.encode(),
                content_type=fault.content_type or "text/html; charset=utf-8",
                headers=headers,
            )
        elif isinstance(payload, str):
            await self.ex.respond(
                status,
                payload.encode(),
                content_type=fault.content_type or "text/plain; charset=utf-8",
                headers=headers,
            )
        else:
            await self.ex.json(status, payload, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
