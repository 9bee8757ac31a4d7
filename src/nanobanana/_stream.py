"""`GenerationStream`: a stream-mode generation as an async iterator of `ProgressEvent`.

The events come from one ``POST /generate`` with ``mode: "stream"`` (stream-mode docs):
``status`` events with a progress, then ``complete`` (the result) or ``error``. This
module opens the stream, has it read by an `EventPump` (`nanobanana._pump`, over
`nanobanana._sse`), hands each event to `nanobanana._events` to become a
`ProgressEvent`, finishes a cut stream by polling when it can, and closes it on every
way out.

Closing is the point of the design. The pump reads the response in a task of its own
and closes it, freeing its concurrency slot, as soon as the server has ended the
stream, whether or not anyone iterates: a stream kept in a variable and left with
``break`` holds its slot only while the server still sends. Until then, the slot is
the server's count too, and is kept.

The iteration is an async *generator*, and ``GenerationStream.__aiter__`` returns that
generator itself. A caller who leaves ``async for event in client.stream(...)`` with
``break`` (and no ``aclosing``) holds no reference to the stream or its generator any
more, and the event loop's async-generator finalizer (asyncio's and trio's both) then
runs its ``aclose()``: the pump is stopped, the response closed and the slot given
back, and a `ResourceWarning` says that a stream was dropped unclosed (if it was still
open). For that to happen at once rather than at the next cyclic garbage collection,
the generator must not refer back to the `GenerationStream` (a reference cycle): it
gets its client, body and a small state object as arguments instead.

A cancelled consumer keeps the slot until the response is really closed (the close
runs in the pump's task, shielded, and the consumer waits for it): a slot freed
before the server has seen the disconnect lets the next request in to a 429.

``aclose()`` from another task, while the generator is running in the consumer's
``__anext__``, cannot ``aclose()`` the generator ("already running"). Each wait of the
generator runs in a cancel scope kept on the state object instead; ``aclose()``
cancels it, and the generator closes the response and ends in its own task.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs
import httpx

from nanobanana._errors import (
    APIConnectionError,
    NanoBananaError,
    UnexpectedResponseError,
    note_request,
)
from nanobanana._events import CutError, EventTranslator, payloads
from nanobanana._models import ProgressEvent
from nanobanana._pump import EventPump, complete_result, fetch_result, settle_charge
from nanobanana._retry import RequestKind
from nanobanana._sse import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_SIZE,
    SSEReader,
    SSETooLargeError,
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
    # The reader of the open response (see `nanobanana._pump`).
    pump: EventPump | None = attrs.field(default=None, init=False, repr=False)
    # Set when the generator was finalized (dropped) with its response still open.
    dropped_open: bool = attrs.field(default=False, init=False, repr=False)

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

    def note(self, error: BaseException) -> None:
        """Record on ``error`` the request it follows (`nanobanana._errors.note_request`)."""
        if self.requested_at is not None and self.prompt is not None:
            note_request(
                error,
                requested_at=self.requested_at,
                prompt=self.prompt,
                model=self.model,
                mode="stream",
                generation_id=self.generation_id,
            )

    def __del__(self) -> None:
        # Last, once the generator and its finalizer are gone: as Python's own
        # unclosed files and sockets do, from a finalizer (-W error makes it loud).
        if self.dropped_open:
            seen = self.generation_id or (self.pump.generation_id if self.pump else None)
            of = f" of generation {seen}" if seen else ""
            warnings.warn(
                f"A stream{of} was dropped without being closed while its response was "
                "still open; it is closed now and its concurrency slot given back. Close "
                "streams yourself: `async with client.stream(...) as events:`, or "
                "`await stream.aclose()`.",
                ResourceWarning,
                stacklevel=1,
            )


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
    stops it (see there). Once closed, it yields nothing more. The response is read
    by an `EventPump`, which closes it and frees its slot as soon as the server has
    ended it, whether or not this generator is iterated to the end.
    """
    final: ProgressEvent | None = None
    cut: BaseException | None = None
    charge: Charge | None = None  # the spend cap's reservation (_budget)
    opening = client._requester.stream(
        "POST", "/generate", kind=RequestKind.GENERATE, json_body=body
    )
    pump: EventPump | None = None
    state.requested_at = client._now()
    try:
        try:
            try:
                with state.guard():
                    charge = await client._charge(body)
                    with charge.sending():
                        response = await opening.__aenter__()
                    await _check_content_type(response)
            except NanoBananaError as exc:
                state.note(exc)
                raise
            if state.stopped():
                return
            reader = SSEReader(response.aiter_bytes(), **reader_options)
            pump = state.pump = EventPump(
                opening=opening,
                reader=reader,
                fetch=partial(fetch_result, client._requester),
                # The server ended it: settle now, not when the caller closes the stream
                # (a stream kept in a variable after `break` may never be closed).
                on_last=partial(settle_charge, charge) if charge is not None else None,
            )
            pump.start()
            if announce:
                yield None
            loads = json.loads
            while final is None:
                with state.guard():
                    item = await pump.receive()
                if state.stopped():
                    return
                if item is None:  # cannot happen: the pump ends with its last item
                    cut = CutError("the stream's reader ended without a last event")
                    break
                what, payload = item
                if what == "cut":
                    cut = payload
                    break
                if what == "error":
                    raise _stream_error(payload, state)
                for sse in payload:
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
                # The pump closes the response, completes the result with one GET
                # and frees the slot; `aclose()` from another task cuts it short.
                with state.guard():
                    await pump.done.wait()
        except CutError as exc:  # a complete event without images, the id known: poll
            cut = exc
        except GeneratorExit:
            # Finalized by the event loop: the stream was dropped without aclose().
            state.dropped_open = not state.closed and pump is not None and not pump.done.is_set()
            raise
        finally:
            if pump is not None:
                await pump.stop()
            else:
                await opening.__aexit__(None, None, None)
        # The response is closed and the governor slot released before the result is
        # handed over: whatever the caller does next (a download, a poll) can use them.
        if state.stopped():
            return  # closed on purpose: no result, and no polling for one
        if final is not None:
            assert pump is not None  # noqa: S101 - a final event came from the pump
            final = complete_result(final, pump.result)
            if charge is not None and final.generation is not None:
                charge.report(final.generation.credits_used)
                charge.finish()  # (settled by the pump already, as a rule)
            yield final
            return
        generation_id = state.generation_id
        if generation_id is None:
            error = APIConnectionError(
                "The event stream was cut before the generation finished, and no event "
                "carried its generationId: the generation may still be running.",
                may_have_been_charged=True,
            )
            state.note(error)
            raise error from cut
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


def _stream_error(exc: BaseException, state: _State) -> BaseException:
    """The error to raise for a stream that broke while being read."""
    if isinstance(exc, SSETooLargeError):
        if state.generation_id is not None:
            exc = SSETooLargeError(
                f"{exc.message} Generation {state.generation_id} goes on: fetch it with "
                f"client.job({state.generation_id!r}).wait().",
                field=exc.field,
                body=exc.body,
            )
        state.note(exc)
    return exc


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
    - ``complete`` (last): ``generation`` is the full `Generation`. The stream's
      events do not say its ``model``, ``credits_used`` or ``created_at``, so when
      an event named the generation, the client asks for them with one
      ``GET /generate?id=`` on the stream's own concurrency slot once the stream
      has ended (no queueing, no retry, at most 5 s); if that fails, the result is
      what the stream said (``expires_at`` then counts from the request).

    Raises (from the iteration):
        GenerationFailedError: the server sent an ``error`` event (credits are spent).
        APIConnectionError: the stream was cut before any event carried the
            generation's id; it may still be running, and may have been charged. A
            stream cut after an id was seen is finished by polling instead.
        SSETooLargeError: an event exceeded ``max_event_size`` (or a line
            ``max_line_size``).
        UnexpectedResponseError: a 200 that is not ``text/event-stream``.

    The response is closed and the concurrency slot released as soon as the server
    has ended the stream (after ``complete`` or ``error``), whether or not the
    events are read to the end; earlier when the stream raises, when its ``async
    with`` block ends, on ``aclose()`` (also from another task: the loop then ends
    quietly), and when it is cancelled (then only once the connection is closed, so
    that the next request does not meet a 429). A stream dropped unclosed while its
    response is open (a loop left with ``break``) is closed by the event loop's
    finalizer, with a `ResourceWarning`; prefer ``async with``. A closed stream
    yields nothing; ``async with`` on it raises `RuntimeError`.

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
        """The generation's id once an event has carried it (to resume with ``client.job``).

        Events read ahead of the loop count too: after ``break``, it is the id of any
        event that arrived.
        """
        state = self._state
        if state.generation_id is None and state.pump is not None:
            return state.pump.generation_id
        return state.generation_id

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
