r"""A bounded Server-Sent Events reader: bytes in, events out, memory and silence capped.

httpx-sse's ``SSEDecoder`` does the field parsing (``data:``, ``event:``, ``id:``,
``retry:``, comments, blank-line dispatch). What it leaves to its caller, and what
this module owns, is the framing around it:

- Lines are split on the bytes ``\n``, ``\r\n`` and ``\r``, wherever the reads
  happen to cut them: "bytes may arrive split anywhere, also inside a line or a UTF-8
  character" (PROTOCOL.md). A line ending byte never occurs inside a multi-byte UTF-8
  sequence, so splitting bytes first and decoding only whole lines is exactly what an
  incremental decoder would give, in one ``decode`` call per read instead of per line.
- A line, or an event's accumulated fields, larger than a limit raises
  `SSETooLargeError` instead of growing a buffer without end. The events completed
  before the offending line are handed over first and the error is raised by the
  next call, so what a caller sees does not depend on where the reads cut the bytes
  (a ``complete`` event followed by a huge line in the same read is still the result).
- A stream silent for longer than ``idle_timeout`` raises `StreamIdleError`.
  The server sends a heartbeat every 15 s (stream-mode docs), so two missed heartbeats
  mean the connection is gone even when the socket has not noticed.

``SSEDecoder`` is imported from ``httpx_sse._decoders``: httpx-sse 0.4 does not
export it from its package root, but it is the module its own ``EventSource`` uses,
and its interface (``decode(line) -> ServerSentEvent | None``) has been stable
since 0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import anyio
import httpx
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder

from nanobanana._errors import SSETooLargeError, StreamIdleError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_LINE_SIZE",
    "SSEParser",
    "SSEReader",
    "SSETooLargeError",
    "ServerSentEvent",
    "StreamIdleError",
]

# Two heartbeat intervals: the server sends one every 15 s (stream-mode docs).
DEFAULT_IDLE_TIMEOUT = 30.0
# An event of this protocol is a few hundred bytes of JSON (a handful of URLs at most);
# a megabyte is generous and still bounds what a broken or hostile server can make us hold.
DEFAULT_MAX_LINE_SIZE = 1024 * 1024
DEFAULT_MAX_EVENT_SIZE = 1024 * 1024

_LF = 10
_CR = 13


class SSEParser:
    r"""Turns the bytes of an event stream into events, in pieces of any size.

    Pure and synchronous: feed it what the socket gave, get back the events that are
    complete so far. Example:

    ```python
    parser = SSEParser()
    events = parser.feed(b'data: {"a": 1}\r\n\r')  # one event
    events += parser.feed(b"\n")  # the \n of the \r\n: nothing new
    events += parser.end()
    ```

    When a limit trips, ``feed`` (or ``end``) returns the events completed before the
    offending line and keeps the error: the next ``feed``/``end``, or `check`, raises
    it, and so does every call after (the parser stopped reading mid-event). When no
    event came before it, the error is raised at once.

    Args:
        max_line_size: the longest line, in bytes, before `SSETooLargeError`.
        max_event_size: the most characters the lines of one event (up to its blank
            line, comments included) may add up to before `SSETooLargeError`.
    """

    __slots__ = (
        "_bom_checked",
        "_decoder",
        "_error",
        "_event_size",
        "_max_event",
        "_max_line",
        "_parts",
        "_pending",
        "_pending_cr",
    )

    def __init__(
        self,
        *,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        if max_line_size < 1 or max_event_size < 1:
            raise ValueError("max_line_size and max_event_size must be positive")
        self._decoder = SSEDecoder()
        self._max_line = max_line_size
        self._max_event = max_event_size
        # The unterminated tail of the stream, kept as a list so that a long line
        # arriving in tiny reads is joined once, not copied on every read.
        self._parts: list[bytes] = []
        self._pending = 0
        # The last read ended in \r: its line is done, and a \n opening the next read
        # is the second half of a \r\n, not an empty line.
        self._pending_cr = False
        self._event_size = 0
        self._bom_checked = False
        # A limit that tripped after some events of the same read: raised next call.
        self._error: SSETooLargeError | None = None

    def check(self) -> None:
        """Raise the `SSETooLargeError` a limit left pending, if any."""
        if self._error is not None:
            raise self._error

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk`` (often none, sometimes many)."""
        if self._error is not None:
            raise self._error
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            self._pending_cr = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._pending += len(chunk)
            if self._pending > self._max_line:
                self._trip(self._line_error())
            self._parts.append(chunk)
            return []
        if self._parts:
            self._parts.append(chunk)
            cut += self._pending
            chunk = b"".join(self._parts)
            self._parts = []
        rest = chunk[cut + 1 :]
        whole = chunk[:cut]
        # The complete lines ahead of a too-long line are read before it trips, so the
        # result is the same wherever the reads cut the stream.
        too_long = len(rest) > self._max_line
        if cut > self._max_line:
            split = whole.split(b"\n")
            for index, line in enumerate(split):
                if len(line) > self._max_line:
                    too_long = True
                    if index == 0:
                        self._trip(self._line_error())
                    whole = b"\n".join(split[:index])
                    break
        if too_long:
            self._pending = 0
        else:
            if rest:
                self._parts.append(rest)
            self._pending = len(rest)
        # Invalid UTF-8 becomes U+FFFD (as the SSE spec asks) instead of failing the
        # stream: a line that is not valid JSON afterwards is skipped by the caller.
        text = whole.decode("utf-8", "replace")
        if not self._bom_checked:
            self._bom_checked = True
            text = text.removeprefix("\ufeff")
        events = self._lines(text.split("\n"))
        if too_long and self._error is None:
            self._error = self._line_error()
        return self._deliver(events)

    def end(self) -> list[ServerSentEvent]:
        """The stream ended: the events still held.

        The SSE spec drops an event that the end of the stream cuts off before its
        blank line. We dispatch it instead when it has data: a ``complete`` event
        whose final blank line was lost is still the result, and a line cut short
        inside its JSON does not parse and is skipped by the caller anyway.
        """
        if self._error is not None:
            raise self._error
        lines: list[str] = []
        if self._parts:
            tail = b"".join(self._parts).decode("utf-8", "replace")
            self._parts = []
            self._pending = 0
            if not self._bom_checked and tail.startswith("\ufeff"):
                tail = tail[1:]
            lines.append(tail)
        self._bom_checked = True
        lines.append("")
        return self._deliver(self._lines(lines))

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        decode = self._decoder.decode
        limit = self._max_event
        size = self._event_size
        events: list[ServerSentEvent] = []
        for line in lines:
            if line:
                size += len(line)
                if size > limit:
                    # Kept, not raised: the events before this line are still news.
                    self._error = SSETooLargeError(
                        f"An event of the stream is larger than {limit} characters; "
                        "stopped reading it (max_event_size)."
                    )
                    break
            else:
                size = 0
            event = decode(line)
            # The SSE spec dispatches no event whose data is empty; httpx-sse's decoder
            # does (on every blank line once an `id:` was seen), so drop those here.
            if event is not None and event.data:
                events.append(event)
        self._event_size = size
        return events

    def _deliver(self, events: list[ServerSentEvent]) -> list[ServerSentEvent]:
        # With nothing to hand over first, a tripped limit is raised now.
        if self._error is not None and not events:
            raise self._error
        return events

    def _line_error(self) -> SSETooLargeError:
        self._parts = []
        self._pending = 0
        return SSETooLargeError(
            f"A line of the event stream is longer than {self._max_line} bytes; "
            "stopped reading it (max_line_size)."
        )

    def _trip(self, error: SSETooLargeError) -> NoReturn:
        self._error = error
        raise error


class SSEReader:
    """Reads events from an async iterable of bytes (``response.aiter_bytes()``).

    Each read waits at most ``idle_timeout`` seconds; silence beyond that raises
    `StreamIdleError`. Call `read` for the next batch of events (one
    batch per network read: cheaper than an async step per event), or iterate:

    ```python
    async for event in SSEReader(response.aiter_bytes()):
        print(event.data)
    ```

    Args:
        chunks: the stream's bytes, in pieces of any size.
        idle_timeout: seconds of silence treated as a cut stream; None waits forever.
        max_line_size: see `SSEParser`.
        max_event_size: see `SSEParser`.
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        *,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError("idle_timeout must be a positive number of seconds or None")
        self._chunks = chunks.__aiter__()
        self._parser = SSEParser(max_line_size=max_line_size, max_event_size=max_event_size)
        self._idle_timeout = idle_timeout
        self.at_eof = False

    async def read(self) -> list[ServerSentEvent]:
        """The next events; an empty list only once the stream has ended (``at_eof``).

        A size limit that tripped after the events of the last batch raises here,
        before anything more is read.
        """
        parser = self._parser
        parser.check()
        chunks = self._chunks
        idle = self._idle_timeout
        while not self.at_eof:
            try:
                if idle is None:
                    chunk = await chunks.__anext__()
                else:
                    with anyio.fail_after(idle):
                        chunk = await chunks.__anext__()
            except StopAsyncIteration:
                self.at_eof = True
                return parser.end()
            except TimeoutError:
                raise StreamIdleError(
                    f"The event stream sent nothing for {idle:g} s (the server sends a "
                    "heartbeat every 15 s); treating it as cut."
                ) from None
            events = parser.feed(chunk)
            if events:
                return events
        return []

    async def drain(self, *, max_bytes: int, max_seconds: float) -> bool:
        """Read and drop what is left, up to ``max_bytes`` or ``max_seconds``; True at EOF.

        Reading a finished response to its end lets httpx put the connection back in
        the pool (closing it unread closes the connection) and leaves none of its
        nested async generators suspended. Transport errors just end the draining.
        """
        left = max_bytes
        with anyio.move_on_after(max_seconds):
            try:
                async for chunk in self._chunks:
                    left -= len(chunk)
                    if left < 0:
                        return False
            except httpx.TransportError:
                return False
            self.at_eof = True
        return self.at_eof

    async def aclose(self) -> None:
        """Close the byte iterator (when it can be closed), so no generator is left behind.

        An async generator dropped unfinished is closed later by the event loop's
        finalizer, and trio warns about each one: closing it here is cheaper and quiet.
        """
        self.at_eof = True
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        """Every event, one at a time."""
        while True:
            events = await self.read()
            if not events:
                return
            for event in events:
                yield event
