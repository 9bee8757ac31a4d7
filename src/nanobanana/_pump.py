"""Reading a stream in a task of its own, so that its end is seen whether or not it is iterated.

An open stream holds one of the account's few concurrency slots (often its only one),
and the server counts it until its last byte. If the stream were read only when its
consumer asks for the next event, a consumer that stops asking (``break`` out of a
loop over a stream kept in a variable) would keep the slot after the server has
ended the stream, and the client's next call would wait for it forever. So an
`EventPump` reads the events as they arrive, into a bounded queue the consumer
(`nanobanana._stream`) takes them from, and when the server ends the stream (a
``complete`` or ``error`` event, or the connection's end) it closes the response and
gives the slot back itself.

After a ``complete`` event that names its generation it first sends one
``GET /generate?id=`` on the same slot (no governor queue, no retry, at most
`RESULT_TIMEOUT`), so that the result is as complete as a polled one: the stream's
events have no ``modelUsed``, ``creditsUsed`` or ``createdAt`` (stream-mode docs). A
failure of that request loses nothing: the consumer falls back to what the stream said.
Then (``on_last``) the call's spend-cap reservation is settled at what it cost, so that
a stream kept unclosed after ``break`` does not hold its credits either.

The task is not in any task group: it must outlive the call that started it (the
consumer is a generator, suspended between events). It is an asyncio task, or a trio
system task; it catches everything it can meet, and the consumer stops it (`stop`)
whenever it leaves, cancelled or not. Under asyncio it is stopped with the task's own
``cancel()``: an anyio cancel scope delivers its cancellation only to a task waiting
on a future not yet done, and a reader of a server that never pauses (bytes that are
no event, sent without end) always has its next bytes ready, so it would read on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
import httpx

from nanobanana._events import CutError, event_id, payloads
from nanobanana._logs import emit, loggable_id
from nanobanana._models import Generation, GenerationStatus, ProgressEvent
from nanobanana._redact import forget_key
from nanobanana._responses import MAX_ANSWER_SIZE, STREAM_CLOSE_TIMEOUT, read_at_most
from nanobanana._retry import RequestKind, decide, outcome_of_exception
from nanobanana._sse import SSETooLargeError, StreamIdleError
from nanobanana._stats import CallTrace, tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from nanobanana._budget import Charge
    from nanobanana._http import Requester
    from nanobanana._responses import StreamContext
    from nanobanana._sse import SSEReader

__all__ = [
    "RESULT_TIMEOUT",
    "EventPump",
    "Item",
    "complete_result",
    "fetch_result",
    "settle_charge",
    "wait_uncancelled",
]

#: The longest the one ``GET /generate?id=`` after a ``complete`` event may take.
RESULT_TIMEOUT = 5.0
# Event data read ahead of a consumer that is away, at most (then the socket waits):
# hundreds of this protocol's events (a heartbeat every 15 s: hours of them), and a
# bound on what a hostile server costs. Larger costs a consumer that does read: the
# more events are alive at once, the more the garbage collector has to walk.
_MAX_PENDING = 64 * 1024
# After the last event, how much more to read while waiting for the end of the response.
_DRAIN_BYTES = 64 * 1024
_DRAIN_SECONDS = 0.5
# The events after which the server closes the stream (stream-mode docs).
_LAST = frozenset({"complete", "error"})

#: ``("events", [sse, ...])``: the events read, in order (their data still JSON
#: text); ``("cut", exception)``: the stream ended before its last event;
#: ``("error", exception)``: to raise as it is.
Item = tuple[Literal["events", "cut", "error"], Any]

# Tasks are weakly referenced by the event loop: hold them until they end.
_running: set[object] = set()


def _spawn(main: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], object] | None:
    """Run ``main`` in a task of its own; returns the task's ``cancel`` under asyncio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio  # noqa: PLC0415 - only under trio, where it is imported already

        trio.lowlevel.spawn_system_task(main, name="nanobanana stream reader")
        return None
    task = loop.create_task(main(), name="nanobanana stream reader")
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task.cancel


async def wait_uncancelled(event: anyio.Event, timeout: float) -> None:  # noqa: ASYNC109
    """Wait for ``event`` (at most ``timeout`` s) even in a cancelled task, then re-raise.

    anyio's shielded scope keeps out anyio's (and trio's) cancellation but not
    asyncio's own ``task.cancel()``, which may come more than once: each is caught and
    waited through, and the last is raised once the wait is over.
    """
    deadline = anyio.current_time() + timeout
    cancelled: BaseException | None = None
    while not event.is_set() and anyio.current_time() < deadline:
        try:
            with anyio.CancelScope(deadline=deadline, shield=True):
                await event.wait()
        except anyio.get_cancelled_exc_class() as exc:  # noqa: PERF203 - rare, and needed
            cancelled = exc
    if cancelled is not None:
        raise cancelled


async def fetch_result(requester: Requester, generation_id: str) -> Generation | None:
    """``GET /generate?id=`` once, on a slot the caller holds; None on any failure.

    Sent without the governor (the stream's slot is still taken, and its response is
    closed) and without retries: it only completes a result the caller already has.
    Counted and logged as every API request is (`Recorder`), under a trace of its own:
    the stream's call is charged by its ``POST``, never by this read.
    """
    method, path = "GET", "/generate"
    recorder = requester.recorder
    clock = requester.clock
    with tracing(CallTrace()):
        try:
            request = requester._build(
                method, path, json_body=None, params={"id": generation_id}, auth=True
            )
            recorder.sending(method, path, RequestKind.READ, queued=0.0)
            started = clock.monotonic()
            response = await requester.http.send(request, stream=True, auth=None)
            await read_at_most(response, MAX_ANSWER_SIZE)
        except httpx.HTTPError as exc:
            forget_key(exc)
            verdict = decide(RequestKind.READ, outcome_of_exception(exc))
            recorder.failed(method, path, 1, exc, verdict, kind=RequestKind.READ)
            _unused(requester, generation_id, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - whatever it is, the stream's result stands
            forget_key(exc)
            _unused(requester, generation_id, exc)
            return None
        elapsed = clock.monotonic() - started
        recorder.answered(method, path, RequestKind.READ, 1, response, elapsed=elapsed)
    if response.status_code != 200:
        _unused(requester, generation_id, None)
        return None
    try:
        body = json.loads(response.content)
        generation = Generation.from_json(body.get("data") if isinstance(body, dict) else None)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the stream's result stands
        _unused(requester, generation_id, exc)
        return None
    if generation.id != generation_id or generation.status is not GenerationStatus.COMPLETED:
        _unused(requester, generation_id, None)
        return None
    return generation


def _unused(requester: Requester, generation_id: str, exc: BaseException | None) -> None:
    """Log that the ``GET`` after ``complete`` gave nothing to use (its answer is logged too)."""
    key = requester.api_key.reveal() if requester.api_key is not None else ""
    emit(
        logging.DEBUG,
        "GET /generate (stream result) unused%s; the stream's result stands",
        f" ({type(exc).__name__})" if exc is not None else "",
        event="stream_result_unused",
        method="GET",
        path="/generate",
        error=type(exc).__name__ if exc is not None else None,
        may_have_been_charged=False,
        generation_id=loggable_id(generation_id, key),
    )


def complete_result(final: ProgressEvent, polled: Generation | None) -> ProgressEvent:
    """The ``complete`` event, its generation completed with what a poll of it said.

    The stream's events say nothing of the model, the credits or the creation time;
    the poll does. The images are the stream's.
    """
    streamed = final.generation
    if polled is None or streamed is None or polled.id != streamed.id:
        return final
    generation = attrs.evolve(
        streamed,
        prompt=polled.prompt if polled.prompt is not None else streamed.prompt,
        model=polled.model or streamed.model,
        credits_used=(
            polled.credits_used if polled.credits_used is not None else streamed.credits_used
        ),
        created_at=polled.created_at or streamed.created_at,
        expires_at=polled.expires_at or streamed.expires_at,
        image_urls=streamed.image_urls or polled.image_urls,
    )
    return attrs.evolve(final, generation=generation)


def settle_charge(charge: Charge, pump: EventPump) -> None:
    """Settle a stream's reservation once the server has ended it (`EventPump` on_last).

    At what the ``complete`` event or the ``GET`` after it said was charged, as the
    result handed over says, else at the estimate (an ``error`` event spends it too).
    """
    last = pump.last_event or {}
    if last.get("type") == "complete":
        charge.answered(last.get("data"))
        if pump.result is not None:
            charge.report(pump.result.credits_used)
    charge.finish()


def _parse(text: str) -> list[dict[str, Any]]:
    """The JSON objects of one event's data (`payloads`, with its fast path first)."""
    try:
        found = json.loads(text)
    except ValueError:
        return payloads(text)
    return [found] if type(found) is dict else []


def _first_id(events: list[dict[str, Any]]) -> str | None:
    return next((found for event in events if (found := event_id(event))), None)


class EventPump:
    """Reads one stream's events ahead of its consumer; closes it when the server ends it.

    Args:
        opening: the open stream request, holding the response and the slot.
        reader: the event reader over the response's body.
        fetch: sends the ``GET /generate?id=`` that completes a ``complete`` result.
        on_last: called (in the pump's task, before the slot is given back) once the
            server has ended the stream with its last event and that fetch is over:
            what the generation cost is then known, whether or not anyone reads on. Not
            called for a ``complete`` without its images (the consumer polls for them),
            a cut stream (the generation may go on), or a consumer that left first.
    """

    def __init__(
        self,
        *,
        opening: StreamContext,
        reader: SSEReader,
        fetch: Callable[[str], Awaitable[Generation | None]] | None,
        on_last: Callable[[EventPump], object] | None = None,
    ) -> None:
        self._opening = opening
        self._reader = reader
        self._fetch = fetch
        self._on_last = on_last
        self._items: collections.deque[tuple[Item, int]] = collections.deque()
        self._pending = 0
        self._arrived: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._reading = anyio.CancelScope()
        self._cancel_task: Callable[[], object] | None = None
        self._closing = False
        self._fetching = anyio.CancelScope()
        #: The last generation id any event read so far carried.
        self.generation_id: str | None = None
        #: The ``complete`` or ``error`` event, once read.
        self.last_event: dict[str, Any] | None = None
        #: The generation fetched after a ``complete`` event, if that worked.
        self.result: Generation | None = None
        #: Set once the response is closed and the slot given back.
        self.done = anyio.Event()

    def start(self) -> None:
        """Start reading, in a task of its own."""
        self._cancel_task = _spawn(self._main)

    async def receive(self) -> Item | None:
        """The next item, in order; None once the pump has ended and all was taken."""
        items = self._items
        while not items:
            if self.done.is_set():
                return None
            self._arrived = arrived = anyio.Event()
            await arrived.wait()
        item, size = items.popleft()
        self._pending -= size
        room = self._room
        if room is not None:
            self._room = None
            room.set()
        return item

    async def stop(self) -> None:
        """The consumer leaves: stop reading, and wait for the close (shielded, bounded).

        A stream whose last event was read is let finish its short drain (that keeps
        the connection reusable); the extra ``GET`` is not waited for.
        """
        if self.done.is_set():
            return
        if self.last_event is None and not self._closing:
            self._reading.cancel()
            if self._cancel_task is not None:
                self._cancel_task()  # see the module docstring
        self._fetching.cancel()
        await wait_uncancelled(self.done, STREAM_CLOSE_TIMEOUT + _DRAIN_SECONDS)

    def _push(self, item: Item, size: int = 0) -> None:
        self._items.append((item, size))
        self._pending += size
        arrived = self._arrived
        if arrived is not None:
            self._arrived = None
            arrived.set()

    async def _main(self) -> None:
        try:
            with self._reading:
                await self._read()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._close()
                except Exception as exc:  # noqa: BLE001 - given up either way; a task
                    # with nobody to raise to must not end in an error (trio: a crash)
                    forget_key(exc)
                    emit(
                        logging.DEBUG,
                        "closing a stream failed: %s",
                        type(exc).__name__,
                        event="stream_close_failed",
                        method="POST",
                        path="/generate",
                        error=type(exc).__name__,
                        generation_id=self.generation_id,
                    )

    async def _read(self) -> None:
        reader = self._reader
        try:
            while True:
                while self._pending >= _MAX_PENDING:
                    self._room = room = anyio.Event()
                    await room.wait()
                batch = await reader.read()
                if not batch:
                    cut = CutError("the stream ended before a complete or error event")
                    self._push(("cut", cut))
                    return
                # The consumer parses the events; here only those that may be the
                # last one or carry the id are: a status event names neither word.
                size = 0
                last: dict[str, Any] | None = None
                for index, sse in enumerate(batch):
                    text = sse.data
                    size += len(text)
                    if self.generation_id is None and "generationId" in text:
                        self.generation_id = _first_id(_parse(text))
                    if "complete" in text or "error" in text:
                        last = next((e for e in _parse(text) if e.get("type") in _LAST), None)
                        if last is not None:
                            self.generation_id = event_id(last) or self.generation_id
                            del batch[index + 1 :]  # the server sends nothing after it
                            break
                self._push(("events", batch), size)
                if last is not None:
                    self.last_event = last
                    # "After generation completes (complete) or fails (error), the
                    # server automatically closes the SSE connection" (stream-mode
                    # docs): the end is right behind, and reading it keeps the
                    # connection reusable.
                    await reader.drain(max_bytes=_DRAIN_BYTES, max_seconds=_DRAIN_SECONDS)
                    return
        except (httpx.TransportError, StreamIdleError) as exc:
            forget_key(exc)  # it becomes our error's cause
            self._push(("cut", exc))
        except SSETooLargeError as exc:
            self._push(("error", exc))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: the consumer raises it
            self._push(("error", exc))

    async def _close(self) -> None:
        self._closing = True  # from here on, `stop` leaves the task alone
        try:
            try:
                await self._reader.aclose()
            finally:
                await self._opening.aclose_response()
            generation_id = self.generation_id
            if self._fetch is not None and generation_id is not None and self._completed():
                # The stream's own slot, now that its response is closed: no queue.
                with self._fetching:
                    self._fetching.deadline = anyio.current_time() + RESULT_TIMEOUT
                    self.result = await self._fetch(generation_id)
        finally:
            try:
                if self._on_last is not None and self._final():
                    self._on_last(self)
            finally:
                await self._opening.release()
                self.done.set()
                arrived = self._arrived
                if arrived is not None:
                    self._arrived = None
                    arrived.set()

    def _final(self) -> bool:
        """Whether the last event ends the generation (its cost is known then).

        An ``error``, or a ``complete`` that failed or has its images: one without them
        is finished by polling.
        """
        last = self.last_event
        if last is None:
            return False
        if last.get("type") == "error":
            return True
        data = last.get("data")
        return isinstance(data, dict) and (
            data.get("success") is False or isinstance(data.get("imageUrls"), list)
        )

    def _completed(self) -> bool:
        """Whether the last event is a successful ``complete`` with its images."""
        last = self.last_event
        if last is None or last.get("type") != "complete":
            return False
        data = last.get("data")
        return (
            isinstance(data, dict)
            and data.get("success") is not False
            and isinstance(data.get("imageUrls"), list)
        )
