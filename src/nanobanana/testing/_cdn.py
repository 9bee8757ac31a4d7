"""The simulated CDN: signed, expiring image URLs on an origin apart from the API's.

``/img/<generation id>/<n>.png?expires=<unix>&sig=<hmac>`` serves image ``n`` of a
completed generation as a PNG. Expired URLs and bad signatures get 403, unknown images
404. Like some real CDN setups (api-reference-agent-notes.md), Python's default
urllib User-Agent is refused with 403.

The ``cdn_cut`` fault sends the real image's headers (its full ``Content-Length``)
and part of its bytes, then drops the connection: a body cut short, which a client
sees as a broken response, not as a smaller image. With ``framing="chunked"`` the
body is sent chunked and the connection dropped before the last chunk, which a client
must also see as broken; with ``framing="close"`` it has no length at all and the
connection is closed normally after part of it, so that to HTTP it is a whole body:
only the image's own end (PNG's ``IEND`` chunk) shows it is not. The ``cdn_stall`` fault sends the
same headers and part of the bytes, then nothing more until the client goes away: a
body that never ends, which only a deadline over the whole download gives up on.
"""

from __future__ import annotations

import functools
import hmac
from urllib.parse import quote, unquote

from nanobanana.testing._asgi import ClientGone, CutConnection, Exchange, RawResponse
from nanobanana.testing._call import Call
from nanobanana.testing._faults import Fault
from nanobanana.testing._png import PNG_SIGNATURE, render_image

__all__ = ["handle_image"]

_HUGE_DEFAULT = 32 * 1024 * 1024
_HUGE_CHUNK = 64 * 1024


@functools.lru_cache(maxsize=256)
def _image(prompt: str, index: int, size: int) -> bytes:
    return render_image(prompt, index, size=size)


async def _text(ex: Exchange, status: int, text: str) -> None:
    await ex.respond(status, text.encode(), content_type="text/plain; charset=utf-8")


async def _huge(ex: Exchange, size: int) -> None:
    # A body far larger than any image: clients should cap what they download.
    await ex.start(200, [("content-type", "image/png"), ("content-length", str(size))])
    if ex.method == "HEAD":
        await ex.write(b"", more=False)
        return
    chunk = PNG_SIGNATURE + bytes(_HUGE_CHUNK - len(PNG_SIGNATURE))
    sent = 0
    while sent < size:
        piece = chunk[: min(_HUGE_CHUNK, size - sent)]
        sent += len(piece)
        await ex.write(piece, more=sent < size)


async def _part(ex: Exchange, body: bytes, size: int | None) -> None:
    """Send the headers of ``body`` (its full length) and its first ``size`` bytes."""
    sent = _cut_size(body, size)
    await ex.start(200, [("content-type", "image/png"), ("content-length", str(len(body)))])
    if ex.method != "HEAD" and sent:
        await ex.write(body[:sent])


def _cut_size(body: bytes, size: int | None) -> int:
    return len(body) // 2 if size is None else max(0, min(size, len(body) - 1))


async def _cut(ex: Exchange, body: bytes, size: int | None, framing: str) -> None:
    """Send the headers of ``body`` and its first ``size`` bytes, then end the connection."""
    if framing == "length":
        await _part(ex, body, size)
        raise CutConnection
    sent = body[: _cut_size(body, size)] if ex.method != "HEAD" else b""
    if framing == "chunked":
        # No Content-Length: the server sends the body chunked.
        await ex.start(200, [("content-type", "image/png")])
        if sent:
            await ex.write(sent)
        raise CutConnection
    # "close": HTTP/1.1 with neither length nor chunks, ended by a plain close.
    ex.status = 200
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\nconnection: close\r\n"
        b"server: nanobanana-simulator\r\n\r\n"
    )
    raise RawResponse(head + sent)


async def _stall(ex: Exchange, body: bytes, size: int | None) -> None:
    """Send the headers of ``body`` and its first ``size`` bytes, then nothing: a stall."""
    await _part(ex, body, size)
    await ex.disconnected.wait()
    raise ClientGone


async def _response_fault(call: Call, fault: Fault, segment: str, index: str) -> bool:
    """Apply a CDN response fault; return whether it answered the request."""
    ex = call.ex
    if fault.kind == "cdn_html":
        page = b"<!DOCTYPE html><html><body><h1>Please enable JavaScript</h1></body></html>"
        await ex.respond(200, page, content_type="text/html; charset=utf-8")
        return True
    if fault.kind == "cdn_huge":
        await _huge(ex, fault.size or _HUGE_DEFAULT)
        return True
    if fault.kind == "cdn_redirect":
        location = fault.location
        if location is None:
            # Same image, other origin: clients must not carry Authorization across.
            base = call.cdn_base_url().replace("127.0.0.1", "localhost", 1)
            location = f"{base}/img/{segment}/{index}?{ex.raw_query}"
        await ex.respond(
            302, b"", content_type="text/plain; charset=utf-8", headers=[("location", location)]
        )
        return True
    if fault.kind == "status":
        await call.send_fault(fault)
        return True
    return False


async def handle_image(call: Call) -> None:
    """Serve ``GET``/``HEAD /img/...`` on the CDN origin."""
    ex, state = call.ex, call.state
    if ex.method not in ("GET", "HEAD"):
        await _text(ex, 405, "Method Not Allowed")
        return
    parts = ex.raw_path.split("/")
    if len(parts) != 4 or not parts[3].endswith(".png") or not parts[3][:-4].isdecimal():
        await _text(ex, 404, "Not Found")
        return
    segment, index_part = quote(unquote(parts[2]), safe=""), parts[3]
    fault = call.fault("response")
    if fault is not None and await _response_fault(call, fault, segment, index_part):
        return
    user_agent = ex.header("user-agent") or ""
    if user_agent.startswith("Python-urllib/"):
        await _text(ex, 403, "Forbidden")
        return
    generation_id, index = unquote(parts[2]), int(index_part[:-4])
    call.generation_id = generation_id
    expires_text = (ex.query.get("expires") or [""])[0]
    sig = (ex.query.get("sig") or [""])[0]
    if not expires_text.isdecimal() or not sig:
        await _text(ex, 403, "Forbidden: missing signature")
        return
    expires = int(expires_text)
    expected = state.signature(generation_id, index, expires)
    if not hmac.compare_digest(sig, expected):
        await _text(ex, 403, "Forbidden: bad signature")
        return
    if state.clock.now() > expires:
        # "Generated image URLs are valid for 15 days" (overview docs).
        await _text(ex, 403, "Forbidden: URL expired")
        return
    with state.lock:
        generation = state.generations.get(generation_id)
        ready = generation is not None and generation.status() == "completed"
    if generation is None or not ready or index >= generation.quantity:
        await _text(ex, 404, "Not Found")
        return
    body = _image(generation.prompt, index, state.config.image_size)
    if fault is not None and fault.kind == "cdn_cut":
        await _cut(ex, body, fault.size, fault.framing)
    if fault is not None and fault.kind == "cdn_stall":
        await _stall(ex, body, fault.size)
    await ex.respond(
        200,
        body,
        content_type="image/png",
        headers=[("cache-control", "public, max-age=1296000")],
    )
