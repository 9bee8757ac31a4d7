"""Response parsing for the fast pool: llhttp (through httptools) when installed, else h11.

Why two: httptools is llhttp, the parser of Node.js and aiohttp, and parses a response
head in about 2 µs; h11, which httpx already installs, takes about 35 µs, which is a
visible share of a request's cost when thousands are in flight (measured in
`benchmarks/bench_generate.py`). So httptools is a dependency on CPython (with h11 a
fan-out ran at 0.3x aiohttp, with llhttp at 0.8x), and h11, which httpx installs, is
the fallback where httptools is missing (PyPy). Both are behind one small interface,
chosen once per transport.

Both backends agree on what matters: bodies framed by Content-Length, chunked coding
or the end of the connection; informational (1xx) responses skipped; heads and
trailer sections bounded by `MAX_HEAD`; obsolete line folding unfolded (RFC 9112
section 5.2: a user agent must); bare-LF line ends accepted; everything else malformed
refused as `httpcore.RemoteProtocolError`. They differ on a few edge cases of broken
servers, each within what RFC 9112 allows: llhttp refuses a list `Content-Length`
("3, 3") and reads a body with a non-chunked transfer coding to the end of the
connection, which h11 refuses; h11 never reuses an HTTP/1.0 connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import h11
import httpcore

from nanobanana._transport._wire import MAX_HEAD

if TYPE_CHECKING:
    import httptools

__all__ = [
    "H11Parser",
    "HttptoolsParser",
    "ParserFactory",
    "ResponseParser",
    "ResponseSink",
    "parser_factory",
]


class ResponseSink(Protocol):
    """What a parser tells the connection it parses for."""

    def on_head(
        self, status: int, reason: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """The final response's head was parsed."""

    def on_body(self, chunk: bytes) -> None:
        """Body bytes, as they are parsed."""

    def on_complete(self, keep_alive: bool) -> None:
        """The response ended; `keep_alive` says whether the connection may be reused."""

    def on_stray(self) -> None:
        """Bytes came after the response ended: the connection must not be reused."""


class ResponseParser(Protocol):
    """One response at a time, fed bytes as they arrive."""

    def start(self, *, head_only: bool) -> None:
        """Expect a new response (`head_only`: the request was a HEAD, no body follows)."""

    def feed(self, data: bytes) -> None:
        """Parse bytes; the effects go to the sink.

        Raises:
            httpcore.RemoteProtocolError: The server broke HTTP/1.1.
        """

    def feed_eof(self) -> bool:
        """The server closed the connection: True when that ended the body."""


ParserFactory = Callable[[ResponseSink], ResponseParser]

# States of one exchange, as far as the parser knows.
_HEAD: Final = 1
_BODY: Final = 2
_DONE: Final = 3

_FOLD_START: Final = re.compile(rb"\n[ \t]")
_FOLD: Final = re.compile(rb"\r?\n[ \t]+")
_END_OF_HEAD: Final = re.compile(rb"\n\r?\n")
# Whitespace opening the line after the status line: a fold with no field to continue.
_FOLD_AT_START: Final = re.compile(rb"[^\n]*\n[ \t]")


def _too_big() -> httpcore.RemoteProtocolError:
    return httpcore.RemoteProtocolError(f"Response head or trailers exceed {MAX_HEAD} bytes.")


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    # RFC 9112 section 6.3: with neither a chunked coding nor a length, the body runs
    # to the end of the connection.
    for name, value in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            return False
        if size == 17 and name.lower() == b"transfer-encoding":
            return value.lower().rsplit(b",", 1)[-1].strip() != b"chunked"
    return True


def _keep_alive(http_version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    keep = http_version == b"HTTP/1.1"
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                return False
            if b"keep-alive" in tokens:
                keep = True
    return keep


class HttptoolsParser:
    """llhttp through httptools, strict but for bare-LF line ends and obsolete folding.

    llhttp is used without its "dangerous leniencies" but one: a line ended by LF
    alone is accepted, as h11 and browsers do. It refuses obsolete line folding
    outright, so a head that fails on a line starting with whitespace is unfolded
    (each fold replaced by one space) and parsed once more; but whitespace opening
    the first header line continues no field, and is refused, as by h11.
    """

    def __init__(self, sink: ResponseSink) -> None:
        import httptools  # noqa: PLC0415 - the backend is chosen by whether it imports

        self._httptools = httptools
        self._sink = sink
        self._parser: httptools.HttpResponseParser | None = None
        self._state = _DONE
        self._head_only = False
        self._held: list[bytes] = []
        self._size = 0
        self._folding = False
        self._unfolded = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._until_close = False
        self._header_bytes = 0
        self._error: httpcore.RemoteProtocolError | None = None

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = self._httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        return parser

    def start(self, *, head_only: bool) -> None:
        """Expect a new response, with a new llhttp parser (they cost about 0.3 µs)."""
        self._parser = self._new_parser()
        self._state = _HEAD
        self._head_only = head_only
        self._held = []
        self._size = 0
        self._folding = self._unfolded = False
        self._headers = []
        self._reason = b""
        self._header_bytes = 0
        self._error = None

    def feed(self, data: bytes) -> None:
        """Parse bytes (see `ResponseParser.feed`)."""
        if self._state == _HEAD:
            # Kept until the head is parsed, in case it must be unfolded and parsed again.
            self._held.append(data)
            self._size += len(data)
            if self._folding:
                self._feed_unfolded()
                return
        self._feed(data)
        if self._state == _HEAD and self._size > MAX_HEAD:
            raise _too_big()

    def _feed(self, data: bytes) -> None:
        httptools = self._httptools
        assert self._parser is not None  # noqa: S101 - start() comes first
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # A 101, already finished by on_headers_complete.
        except httptools.HttpParserError as exc:
            if self._state == _DONE:
                # After the response: bytes that are no message at all.
                self._sink.on_stray()
                return
            if self._error is not None:
                raise self._error from None
            if (
                self._state == _HEAD
                and not self._unfolded
                and _FOLD_START.search(b"".join(self._held))
            ):
                self._folding = True
                self._feed_unfolded()
                return
            raise httpcore.RemoteProtocolError(f"Invalid response: {exc}") from None

    def _feed_unfolded(self) -> None:
        data = b"".join(self._held)
        end = _END_OF_HEAD.search(data)
        if end is None:
            if self._size > MAX_HEAD:
                raise _too_big()
            self._held = [data]
            return
        if _FOLD_AT_START.match(data):
            # Unfolded, it would join the status line's reason phrase; h11 refuses it.
            raise httpcore.RemoteProtocolError(
                "Invalid response: continuation line at start of headers"
            )
        self._folding = False
        self._unfolded = True
        self._parser = self._new_parser()
        self._headers = []
        self._reason = b""
        self._feed(_FOLD.sub(b" ", data[: end.start()]) + data[end.start() :])

    def feed_eof(self) -> bool:
        """True when the body runs to the end of the connection (see `ResponseParser`)."""
        if self._state == _BODY and self._until_close:
            self._state = _DONE
            return True
        return False

    def _finish(self, *, keep_alive: bool) -> None:
        self._state = _DONE
        self._sink.on_complete(keep_alive)

    # -- llhttp's callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        """A message starts: a final response after informational ones, or stray bytes."""
        if self._state == _DONE:
            self._sink.on_stray()
        self._headers = []
        self._reason = b""
        self._header_bytes = 0

    def on_status(self, status: bytes) -> None:
        """Part of the reason phrase (llhttp may give it in pieces)."""
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header field, or a trailer field after a chunked body (both are bounded)."""
        self._headers.append((name, value))
        # A whole head can come in one read, which llhttp parses at once, so its size
        # is counted here as well as by the bytes fed before it is complete.
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEAD:
            self._error = _too_big()
            raise self._error

    def on_headers_complete(self) -> None:
        """The head is parsed: hand the final response's head to the sink."""
        parser = self._parser
        assert parser is not None  # noqa: S101 - called by it
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # Informational (100 Continue, 103 Early Hints): the real one follows.
        headers = self._headers
        self._state = _BODY
        self._held = []
        self._header_bytes = 0  # From here on, it counts the trailer section.
        version = b"HTTP/1.0" if parser.get_http_version() == "1.0" else b"HTTP/1.1"
        self._until_close = _close_delimited(headers)
        self._sink.on_head(status, self._reason, version, headers)
        if status == 101:
            # What follows is another protocol, which we do not speak.
            self._finish(keep_alive=False)
        elif self._head_only:
            # llhttp cannot be told that a HEAD response has no body; it is over here,
            # and anything llhttp reads after it is stray.
            self._finish(keep_alive=_keep_alive(version, headers))

    def on_body(self, body: bytes) -> None:
        """Body bytes, passed on (or stray, after a HEAD response)."""
        if self._state == _BODY:
            self._sink.on_body(body)
        else:
            self._sink.on_stray()

    def on_message_complete(self) -> None:
        """The response ended (informational ones end too, and are skipped)."""
        if self._state == _BODY:
            assert self._parser is not None  # noqa: S101 - called by it
            self._finish(keep_alive=self._parser.should_keep_alive())


_H11_GET: Final = h11.Request(method="GET", target="/", headers=[("Host", "nanobanana")])
_H11_HEAD: Final = h11.Request(method="HEAD", target="/", headers=[("Host", "nanobanana")])
_H11_END: Final = h11.EndOfMessage()


class H11Parser:
    """h11, with the request side stood in for by a fixed one.

    h11 needs to have seen a request before it parses a response, and all it takes
    from it is whether it was a HEAD. The real head is written by `encode_head`; h11
    is told of a constant request of the same kind (built once, so no header is
    validated per request), and its bytes are dropped.
    """

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._h11 = h11.Connection(h11.CLIENT)
        self._state = _DONE

    def start(self, *, head_only: bool) -> None:
        """Expect a new response, with a new h11 connection state."""
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        conn.send(_H11_HEAD if head_only else _H11_GET)
        conn.send(_H11_END)
        self._h11 = conn
        self._state = _HEAD

    def feed(self, data: bytes) -> None:
        """Parse bytes (see `ResponseParser.feed`)."""
        if self._state == _DONE:
            self._sink.on_stray()
            return
        self._h11.receive_data(data)
        self._drain()

    def feed_eof(self) -> bool:
        """True when the end of the connection ended the body (see `ResponseParser`)."""
        if self._state != _BODY:
            return False
        self._h11.receive_data(b"")
        try:
            self._drain()
        except httpcore.RemoteProtocolError:
            return False
        return self._state == _DONE

    def _drain(self) -> None:
        conn = self._h11
        sink = self._sink
        try:
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    sink.on_body(bytes(event.data))  # type: ignore[union-attr]
                elif kind is h11.Response:
                    self._state = _BODY
                    headers = list(event.headers.raw_items())  # type: ignore[union-attr]
                    # h11 bounds a head still arriving, not one that came whole.
                    if sum(len(n) + len(v) + 4 for n, v in headers) > MAX_HEAD:
                        raise _too_big()
                    sink.on_head(
                        event.status_code,  # type: ignore[union-attr]
                        event.reason,  # type: ignore[union-attr]
                        b"HTTP/" + event.http_version,  # type: ignore[union-attr]
                        headers,
                    )
                elif kind is h11.EndOfMessage:
                    self._state = _DONE
                    keep_alive = conn.their_state is h11.DONE and conn.our_state is h11.DONE
                    sink.on_complete(keep_alive)
                    if conn.trailing_data[0]:
                        sink.on_stray()
                    return
                elif kind is h11.InformationalResponse:
                    continue  # 100 Continue, 103 Early Hints: the real one follows.
                else:  # NEED_DATA, or ConnectionClosed after feed_eof.
                    return
        except h11.RemoteProtocolError as exc:
            if "buffer too long" in str(exc):
                raise _too_big() from None
            raise httpcore.RemoteProtocolError(f"Invalid response: {exc}") from None


def parser_factory(name: str = "auto") -> ParserFactory:
    """The parser backend: "httptools", "h11", or "auto" (httptools when installed).

    Raises:
        ImportError: "httptools" was asked for and is not installed.
        ValueError: An unknown name.
    """
    if name == "h11":
        return H11Parser
    if name not in ("auto", "httptools"):
        raise ValueError(f"parser must be 'auto', 'httptools' or 'h11', not {name!r}")
    try:
        import httptools  # noqa: F401, PLC0415 - only to see whether it is there
    except ImportError:
        if name == "httptools":
            raise ImportError("parser='httptools' needs httptools: pip install httptools") from None
        return H11Parser
    return HttptoolsParser
