"""Stream mode: the SSE timeline of one generation, and the faults that garble it.

Framing follows the stream-mode docs: each event is ``data: <json>`` and a blank line;
``status`` events with rising progress, a heartbeat every ``heartbeat_interval``
seconds (exactly ``{"type":"status","message":"Processing...","progress":0}``), then
``complete`` or ``error``, and the server closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from nanobanana.testing._asgi import ClientGone, CutConnection
from nanobanana.testing._call import Call
from nanobanana.testing._faults import Fault
from nanobanana.testing._state import Generation

__all__ = ["HEARTBEAT", "stream_generation"]

HEARTBEAT: dict[str, Any] = {"type": "status", "message": "Processing...", "progress": 0}
_START: dict[str, Any] = {"type": "status", "message": "Starting generation...", "progress": 0}
# (fraction of the generation time, progress, message); the stream docs show 0 and 50.
_STEPS = ((0.25, 25, "Generating image..."), (0.5, 50, "Processing..."), (0.75, 75, "Finishing..."))
# With sse_split, messages carry multi-byte characters so that splits land inside them.
_UNICODE_SUFFIX = " \u2026 \u00e9t\u00e9 \U0001f34c"
_JUNK = (
    b": keep-alive\n\n",
    b"data: this is not json\n\n",
    b"data: [DONE]\n\n",
    b'data: {"type": "status", "progr\n\n',
    ": \U0001f34c comment\n\n".encode(),
    b"data: <html><body>502 Bad Gateway</body></html>\n\n",
)
_DEFAULT_OVERSIZE = 1024 * 1024 + 1


def _frame(event: dict[str, Any]) -> bytes:
    # Compact, as in the stream docs, and raw UTF-8 (not \u escapes), as Node sends it.
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def _final(generation: Generation) -> dict[str, Any]:
    if generation.outcome == "success":
        return {
            "type": "complete",
            "message": "Generation complete",
            "progress": 100,
            "data": {
                "success": True,
                "imageUrls": list(generation.image_urls),
                "generationId": generation.id,
            },
        }
    message = generation.error_message or "Generation failed"
    data: dict[str, Any] = {"success": False, "error": message}
    if generation.outcome == "unsafe":
        data["warning"] = True
    return {"type": "error", "message": message, "data": data}


async def _timeline(
    generation: Generation, interval: float, gone: asyncio.Event, suffix: str
) -> AsyncGenerator[dict[str, Any], None]:
    """The events of one generation, each when it is due; stops early if the client left."""
    done = asyncio.ensure_future(generation.wait())
    left = asyncio.ensure_future(gone.wait())
    try:
        yield _START
        steps = deque(
            (generation.started + generation.duration * fraction, progress, message + suffix)
            for fraction, progress, message in _STEPS
        )
        next_beat = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if steps and (steps[0][0] <= now or done.done()):
                _, progress, message = steps.popleft()
                yield {"type": "status", "message": message, "progress": progress}
            elif done.done():
                break
            elif next_beat <= now:
                next_beat = now + interval
                yield HEARTBEAT
            else:
                wake = min(next_beat, steps[0][0] if steps else math.inf)
                await asyncio.wait(
                    {done, left}, timeout=wake - now, return_when=asyncio.FIRST_COMPLETED
                )
                if left.done():
                    return
        yield _final(generation)
    finally:
        for task in (done, left):
            task.cancel()
        await asyncio.gather(done, left, return_exceptions=True)


class _Writer:
    """Writes events, applying the stream fault (if any) to the bytes."""

    def __init__(self, call: Call, fault: Fault | None, generation_id: str | None) -> None:
        self._call = call
        self._fault = fault
        self._kind = fault.kind if fault else None
        self._generation_id = generation_id
        self._sent = 0
        self._sizes: Iterator[int] = itertools.cycle(fault.chunk_sizes if fault else (1,))

    def _tag(self, event: dict[str, Any]) -> dict[str, Any]:
        if self._generation_id is None or "generationId" in event:
            return event
        return {**event, "generationId": self._generation_id}

    async def send(self, event: dict[str, Any]) -> None:
        fault, kind = self._fault, self._kind
        parts: list[bytes] = []
        if fault is not None and kind == "sse_junk":
            start = self._sent * fault.count
            parts.extend(_JUNK[(start + i) % len(_JUNK)] for i in range(fault.count))
        if fault is not None and kind == "sse_heartbeats" and self._sent:
            parts.extend(_frame(self._tag(HEARTBEAT)) for _ in range(fault.count))
        parts.append(_frame(self._tag(event)))
        if fault is not None and kind == "sse_oversize" and not self._sent:
            size = fault.size or _DEFAULT_OVERSIZE
            parts.append(_frame(self._tag({**HEARTBEAT, "message": "x" * size})))
        await self._write(b"".join(parts))
        self._sent += 1
        if fault is not None and kind == "sse_cut" and self._sent >= fault.after_events:
            raise CutConnection

    async def _write(self, data: bytes) -> None:
        ex = self._call.ex
        if self._fault is None or self._kind != "sse_split":
            await ex.write(data)
            return
        pos = 0
        while pos < len(data):
            size = next(self._sizes)
            await ex.write(data[pos : pos + size])
            pos += size
            # A pause, so that the pieces reach the client as separate reads.
            if not await ex.sleep(self._fault.pause):
                raise ClientGone


async def stream_generation(call: Call, generation: Generation) -> None:
    """Answer a stream-mode ``POST /generate`` for an accepted, charged ``generation``."""
    config = call.state.config
    fault = call.fault("stream")
    with_ids = config.stream_event_ids
    if fault is not None and fault.with_id is not None:
        with_ids = fault.with_id
    writer = _Writer(call, fault, generation.id if with_ids else None)
    suffix = _UNICODE_SUFFIX if fault is not None and fault.kind == "sse_split" else ""
    await call.ex.start(
        200,
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ],
    )
    timeline = _timeline(generation, config.heartbeat_interval, call.ex.disconnected, suffix)
    async with contextlib.aclosing(timeline):
        async for event in timeline:
            await writer.send(event)
    if call.ex.disconnected.is_set():
        # "If the client disconnects ... the generation task continues" (stream docs).
        raise ClientGone
    await call.ex.write(b"", more=False)
