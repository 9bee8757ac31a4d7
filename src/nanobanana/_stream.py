"""`GenerationStream`: a stream-mode generation as an async iterator of `ProgressEvent`.

The events come from one ``POST /generate`` with ``mode: "stream"`` (stream-mode docs):
``status`` events with a progress, then ``complete`` (the result) or ``error``. This
module opens the stream, reads it (`nanobanana._sse`), hands each event to
`nanobanana._events` to become a `ProgressEvent`, finishes a cut stream by polling
when it can, and closes it on every way out.

Closing is the point of the design. The iteration is an async *generator*, and
``GenerationStream.__aiter__`` returns that generator itself. A caller who leaves
``async for event in client.stream(...)`` with ``break`` (and no ``aclosing``) holds
no reference to the stream or its generator any more, and the event loop's
async-generator finalizer (asyncio's and trio's both) then runs its ``aclose()``:
the response is closed and the governor slot given back, so a thousand abandoned
loops do not exhaust a ``max_concurrency=1`` client. For that to happen at once
rather than at the next cyclic garbage collection, the generator must not refer
back to the `GenerationStream` (a reference cycle): it gets its client, body
and a small state object as arguments instead. A stream the caller keeps in a
variable keeps its generator alive too, so ``break`` leaves it open (slot held) until
``aclose()``, the end of its ``async with`` block, or its collection.

``aclose()`` from another task, while the generator is running in the consumer's
``__anext__``, cannot ``aclose()`` the generator ("already running"). Each wait of the
generator runs in a cancel scope kept on the state object instead; ``aclose()``
cancels it, and the generator closes the response and ends in its own task.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs
import httpx

from nanobanana._errors import (
    APIConnectionError,
    UnexpectedResponseError,
)
from nanobanana._events import CutError, EventTranslator, payloads
from nanobanana._models import ProgressEvent
from nanobanana._redact import forget_key
from nanobanana._retry import RequestKind
from nanobanana._sse import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_SIZE,
    SSEReader,
    SSETooLargeError,
    StreamIdleError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator
    from types import TracebackType

    from typing_extensions import Self

    from nanobanana._budget import Charge
    from nanobanana._client import AsyncNanoBanana

__all__ = ["GenerationStream"]

_EVENT_STREAM = "text/event-stream"
# How much of a wrong (non-SSE) 200 body to read for the error message.
_PEEK = 4096
# After `complete`, how much more to read while waiting for the end of the response.
_DRAIN_BYTES = 64 * 1024
_DRAIN_SECONDS = 0.5


@attrs.define(eq=False)
class _State(EventTranslator):
    """What one stream has learnt so far; shared by the stream object and its generator."""

    closed: bool = False
    # The scope of the wait the generator is in (opening the response, a read, a
    # poll): `aclose` from another task cancels it, since a running async generator
    # cannot be aclose()d ("asynchronous generator is already running").
    scope: anyio.CancelScope | None = attrs.field(default=None, init=False, repr=False)
    # Made by such an `aclose`, set by the generator as it ends.
    ended: anyio.Event | None = attrs.field(default=None, init=False, repr=False)

    def stopped(self) -> bool:
        # `closed`, re-read after an await (a method, so that type checkers do not
        # carry an earlier check of the attribute across the await).
        return self.closed

    def guard(self) -> anyio.CancelScope:
        """A cancel scope for one wait of the generator, already cancelled once closed."""
        self.scope = scope = anyio.CancelScope()
        if self.closed:
            scope.cancel()
        return scope


async def _check_content_type(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() == _EVENT_STREAM:
        return
    head = b""
    try:
        async for chunk in response.aiter_bytes():
            head += chunk
            if len(head) >= _PEEK:
                break
    except httpx.TransportError:
        pass  # What arrived is enough for the message; the error below is the news.
    text = head[:_PEEK].decode("utf-8", "replace")
    raise UnexpectedResponseError(
        f"Unexpected response to POST /generate (stream): {response.status_code} with "
        f"content type {content_type or 'none'!r}, expected {_EVENT_STREAM}.",
        field="content-type",
        body=text,
        may_have_been_charged=True,
    )


async def _run(
    client: AsyncNanoBanana,
    body: dict[str, Any],
    state: _State,
    reader_options: dict[str, Any],
    *,
    announce: bool,
) -> AsyncGenerator[ProgressEvent | None, None]:
    """The stream's events; with ``announce``, first a ``None`` once the response is open.

    Every wait runs in ``state.guard()``, and after each one a ``state.closed`` ends
    the generator quietly: that is how `GenerationStream.aclose` from another task
    stops it (see there). Once closed, it yields nothing more.
    """
    final: ProgressEvent | None = None
    cut: BaseException | None = None
    charge: Charge | None = None  # the spend cap's reservation (_budget)
    opening = client._requester.stream(
        "POST", "/generate", kind=RequestKind.GENERATE, json_body=body
    )
    try:
        try:
            with state.guard():
                charge = await client._charge(body)
                with charge.sending():
                    response = await opening.__aenter__()
                await _check_content_type(response)
            if state.stopped():
                return
            if announce:
                yield None
            reader = SSEReader(response.aiter_bytes(), **reader_options)
            loads = json.loads
            try:
                while final is None:
                    with state.guard():
                        batch = await reader.read()
                    if state.stopped():
                        return
                    if not batch:
                        cut = CutError("the stream ended before a complete or error event")
                        break
                    for sse in batch:
                        text = sse.data
                        try:
                            found = loads(text)
                        except ValueError:
                            found = None
                        for event in (found,) if type(found) is dict else payloads(text):
                            data = event.get("data")
                            state.note_id(event, data)
                            kind = event.get("type")
                            if kind == "status":
                                yield state.status(event)
                            elif kind == "complete":
                                final = state.complete(event, data)
                                break
                            elif kind == "error":
                                state.failed(event, data)
                            # Other types are newer than this client: skipped.
                        if final is not None:
                            break
                if final is not None:
                    # "After generation completes (complete) or fails (error), the server
                    # automatically closes the SSE connection" (stream-mode docs): the end
                    # is right behind, and reading it keeps the connection reusable.
                    with state.guard():
                        await reader.drain(max_bytes=_DRAIN_BYTES, max_seconds=_DRAIN_SECONDS)
            except (httpx.TransportError, StreamIdleError, CutError) as exc:
                forget_key(exc)  # it becomes our error's cause
                cut = exc
            except SSETooLargeError as exc:
                if state.generation_id is None:
                    raise
                raise SSETooLargeError(
                    f"{exc.message} Generation {state.generation_id} goes on: fetch it with "
                    f"client.job({state.generation_id!r}).wait().",
                    field=exc.field,
                    body=exc.body,
                ) from None
            finally:
                await reader.aclose()
        finally:
            await opening.__aexit__(None, None, None)
        # The response is closed and the governor slot released before the result is
        # handed over: whatever the caller does next (a download, a poll) can use them.
        if state.stopped():
            return  # closed on purpose: no result, and no polling for one
        if final is not None:
            if charge is not None and final.generation is not None:
                charge.report(final.generation.credits_used)
                charge.finish()  # settled now, not when the caller closes the stream
            yield final
            return
        generation_id = state.generation_id
        if generation_id is None:
            raise APIConnectionError(
                "The event stream was cut before the generation finished, and no event "
                "carried its generationId: the generation may still be running.",
                may_have_been_charged=True,
            ) from cut
        # The generation goes on when the client disconnects and "can be retrieved via
        # GET /api/v1/generate?id=" (stream-mode docs): finish by polling.
        with state.guard():
            generation = await client.job(generation_id).wait()
        if charge is not None:
            charge.report(generation.credits_used)
            charge.finish()
        if state.stopped():
            return
        yield state.completed(generation, "Generation complete (fetched after the stream was cut)")
    finally:
        if charge is not None:
            charge.finish()
        state.scope = None
        if state.ended is not None:
            state.ended.set()


async def _nothing() -> AsyncGenerator[ProgressEvent | None, None]:
    return
    yield  # pragma: no cover - makes this an async generator


class GenerationStream:
    """A stream-mode generation: an async iterator of `ProgressEvent`.

    Get one from ``client.stream(...)``. Iterate it directly, or use it as an async
    context manager to close it at a point of your choosing:

    ```python
    async with client.stream("a banana in space") as events:
        async for event in events:
            print(f"{event.progress:3d}% {event.message}")
            if event.type == "complete":
                print(event.generation.image_urls)
    ```

    The request is sent when iteration starts, or on ``async with`` (so errors such
    as 401 or 402 raise there). Events:

    - ``status``: ``progress`` never goes backwards (show that); ``raw_progress`` is
      what the event said; ``is_heartbeat`` marks a status below what was reported.
    - ``complete`` (last): ``generation`` is the full `Generation`.

    Raises (from the iteration):
        GenerationFailedError: the server sent an ``error`` event (credits are spent).
        APIConnectionError: the stream was cut before any event carried the
            generation's id; it may still be running, and may have been charged. A
            stream cut after an id was seen is finished by polling instead.
        SSETooLargeError: an event exceeded ``max_event_size`` (or a line
            ``max_line_size``).
        UnexpectedResponseError: a 200 that is not ``text/event-stream``.

    The response is closed and the concurrency slot released when the stream ends,
    raises or is cancelled, when its ``async with`` block ends, on ``aclose()`` (also
    from another task: the loop then ends quietly), and when it is garbage-collected.
    Leaving a loop with ``break`` (or an exception in the loop body) closes it (a
    moment later, by the event loop's finalizer) only when nothing else refers to the
    stream, as in ``async for event in client.stream(...)``; a stream kept in a
    variable stays open, holding its slot, until one of the above. So prefer
    ``async with``. A closed stream yields nothing;
    ``async with`` on it raises `RuntimeError`.

    Args:
        client: the client that sends the request and, after a cut, polls.
        body: the ``POST /generate`` body (``mode`` ``"stream"``).
        idle_timeout: seconds without a byte (not even a heartbeat) after which the
            stream counts as cut; None waits forever. Default 30 s, two heartbeats.
        max_event_size: the largest event accepted, in characters.
        max_line_size: the longest line accepted, in bytes.
    """

    def __init__(
        self,
        client: AsyncNanoBanana,
        body: dict[str, Any],
        *,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> None:
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError("idle_timeout must be a positive number of seconds or None")
        if max_event_size < 1 or max_line_size < 1:
            raise ValueError("max_event_size and max_line_size must be positive")
        self._client = client
        self._body = body
        model = body.get("selectedModel")
        self._state = _State(
            prompt=body.get("prompt"), model=model if isinstance(model, str) else None
        )
        self._options: dict[str, Any] = {
            "idle_timeout": idle_timeout,
            "max_event_size": max_event_size,
            "max_line_size": max_line_size,
        }
        self._gen: AsyncGenerator[ProgressEvent | None, None] | None = None

    @property
    def generation_id(self) -> str | None:
        """The generation's id once an event has carried it (to resume with ``client.job``)."""
        return self._state.generation_id

    @property
    def progress(self) -> int:
        """The highest progress reported so far (0-100)."""
        return self._state.max_progress

    def __repr__(self) -> str:
        return (
            f"<GenerationStream generation_id={self._state.generation_id!r} "
            f"progress={self._state.max_progress}>"
        )

    def _start(self, *, announce: bool) -> AsyncGenerator[ProgressEvent | None, None]:
        if self._state.closed:
            self._gen = _nothing()
        else:
            self._gen = _run(
                self._client, self._body, self._state, self._options, announce=announce
            )
        return self._gen

    def __aiter__(self) -> AsyncIterator[ProgressEvent]:
        # The generator itself, not a wrapper: see the module docstring.
        gen = self._gen if self._gen is not None else self._start(announce=False)
        return cast("AsyncIterator[ProgressEvent]", gen)

    async def __anext__(self) -> ProgressEvent:
        gen = self._gen if self._gen is not None else self._start(announce=False)
        event = await gen.__anext__()
        return cast("ProgressEvent", event)

    async def __aenter__(self) -> Self:
        if self._state.closed:
            raise RuntimeError("This stream is closed; make a new one with client.stream().")
        if self._gen is not None:
            raise RuntimeError("This stream has already started; use `async with` first.")
        # Send the request now and stop at the open response, so that an error
        # status raises from `async with`, as httpx's client.stream() does.
        # StopAsyncIteration: closed from another task while opening; the block's
        # loop then sees no events.
        with contextlib.suppress(StopAsyncIteration):
            await self._start(announce=True).__anext__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the response (if open) and release its slot; harmless to repeat.

        May be called from another task while one is iterating (a watchdog, say): the
        iterating task's wait is cancelled, its loop ends quietly (no more events, no
        polling for the result, since the close was deliberate), and this returns
        once the response is closed and the slot released.
        """
        state = self._state
        state.closed = True
        gen = self._gen
        if gen is None:
            return
        # True while an `__anext__` of it is in progress, also when suspended in an await.
        if not getattr(gen, "ag_running", False):
            await gen.aclose()
            return
        # Another task is inside the generator: stop its wait and let it finish.
        if state.ended is None:
            state.ended = anyio.Event()
        ended = state.ended
        if state.scope is not None:
            state.scope.cancel()
        await ended.wait()
