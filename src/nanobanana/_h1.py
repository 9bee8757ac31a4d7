"""The HTTP/1.1 response parser and request-head encoder: bytes in, bytes out, no I/O.

The parser is a small state machine fed with bytes as they arrive: the response head is
found with `bytes.find`, split once, and the body is framed by Content-Length, by
chunked transfer coding or by the end of the connection (RFC 9112 section 6.3).

Why it is apart from the connection: framing is where HTTP/1.1 clients go wrong
(request smuggling, truncated bodies, hostile heads), so it lives where it can be read
and tested on bytes alone. `H1Parser` does no I/O; the asyncio protocol in
`nanobanana._connection` subclasses it and says what to do with what it parses.
"""

from __future__ import annotations

from typing import Final

import httpx

__all__ = [
    "CHUNK_CRLF",
    "CHUNK_DATA",
    "CHUNK_SIZE",
    "DONE",
    "HEAD",
    "IDLE",
    "LENGTH",
    "MAX_HEAD",
    "TRAILERS",
    "UNTIL_CLOSE",
    "H1Parser",
    "encode_head",
]

#: The most bytes a response head (or a chunk-size line, or the trailer section) may
#: take. A server that sends more is broken or hostile; we refuse rather than buffer.
MAX_HEAD: Final = 64 * 1024

# Parser states.
IDLE: Final = 0  # No request in flight: any byte from the server is a protocol error.
HEAD: Final = 1  # Waiting for a status line and headers.
LENGTH: Final = 2  # In a Content-Length body; `_remaining` bytes to go.
CHUNK_SIZE: Final = 3  # Waiting for a chunk-size line.
CHUNK_DATA: Final = 4  # In a chunk; `_remaining` bytes to go.
CHUNK_CRLF: Final = 5  # Waiting for the CRLF that ends a chunk's data.
TRAILERS: Final = 6  # After the last chunk: trailer lines until an empty one.
UNTIL_CLOSE: Final = 7  # Body delimited by the end of the connection.
DONE: Final = 8  # Response complete (maybe not yet consumed).

_HEXDIGITS: Final = b"0123456789abcdefABCDEF"
_WHITESPACE: Final = b" \t"


def encode_head(request: httpx.Request) -> tuple[bytes, bool, int, bool]:
    """Serialize a request's head.

    Args:
        request: The request; httpx has already added Host and the body's framing
            headers.

    Returns:
        The head bytes, whether the body must be sent chunked, the declared
        Content-Length (-1 when there is none), and whether the request asked for
        `Connection: close`.

    Raises:
        httpx.LocalProtocolError: A header would break the message framing.
    """
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    extend = parts.extend
    chunked = False
    length = -1
    close = False
    lines = 2  # The request line and the blank line that ends the head.
    for name, value in request.headers.raw:
        extend((name, b": ", value, b"\r\n"))
        lines += 1
        # Only three header names matter to framing; compare lengths first so that
        # most headers cost one len() here.
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = _parse_length(value, httpx.LocalProtocolError)
        elif size == 17 and name.lower() == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif size == 10 and name.lower() == b"connection":
            close = b"close" in value.lower()
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a name or value would end the header early and let the rest
    # be read as something else (request smuggling). httpx does not reject them, so
    # count line breaks once over the whole head instead of checking every value.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise httpx.LocalProtocolError("Illegal line break in a request header.")
    if chunked and length != -1:
        # Each side would frame the body its own way (RFC 9112 section 6.1).
        raise httpx.LocalProtocolError("Both Content-Length and Transfer-Encoding are set.")
    return head, chunked, length, close


def _parse_length(value: bytes, error: type[httpx.ProtocolError]) -> int:
    if value.isdigit() and len(value) < 19:
        return int(value)  # The only form seen in practice: plain ASCII digits.
    # Several Content-Length values joined by commas are allowed only when they agree
    # (RFC 9110 section 8.6); `int()` alone would also accept "+1", " 1" and "1_0".
    first = value.split(b",", 1)[0].strip(_WHITESPACE)
    if (
        not first.isdigit()
        or len(first) > 18
        or any(part.strip(_WHITESPACE) != first for part in value.split(b","))
    ):
        raise error(f"Invalid Content-Length: {value!r}.")
    return int(first)


class H1Parser:
    """The response side of one HTTP/1.1 exchange, parsed from bytes as they arrive.

    A subclass feeds it with `_feed`, sets `_request` and `_head_only` before each
    request, and supplies the effects, since the parser does no I/O: `_push` takes
    body bytes, `_wake` is told that the head or the end of the response was parsed,
    and `_on_stray_bytes` that the server sent bytes with no request in flight.

    Attributes:
        status: The final response's status code, once its head is parsed.
        reason: Its reason phrase.
        http_version: Its HTTP version, `b"HTTP/1.1"` or `b"HTTP/1.0"`.
        headers: Its header fields, in order, values stripped of surrounding whitespace.
    """

    def __init__(self) -> None:
        self._request: httpx.Request | None = None
        self._head_only = False
        self._keep_alive = True
        self._state = IDLE
        self._buf = bytearray()
        self._remaining = 0
        self._got_bytes = False
        self._trailer_bytes = 0
        self.status = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []

    # -- supplied by the subclass ---------------------------------------------------

    def _push(self, chunk: bytes) -> None:
        """Take body bytes, as they are parsed."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Wake the reader: the head, or the end of the response, was parsed."""
        raise NotImplementedError

    def _on_stray_bytes(self) -> None:
        """Drop the connection: the server sent bytes with no request in flight."""
        raise NotImplementedError

    # -- parsing --------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            # A head or a line was cut by the previous read. Append, and only copy
            # the whole buffer out once it holds what was missing, so that a server
            # sending a byte at a time costs linear time.
            old = len(buf)
            buf += data
            if not self._buffer_ready(buf, old):
                if len(buf) > MAX_HEAD:
                    self._too_big()
                return
            data = bytes(buf)
            buf.clear()
        self._got_bytes = True
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == LENGTH or state == CHUNK_DATA:  # noqa: PLR1714, SIM109 - no tuple built per call
                take = end - pos
                remaining = self._remaining
                take = min(take, remaining)
                self._push(data if take == end else data[pos : pos + take])
                pos += take
                remaining -= take
                self._remaining = remaining
                if not remaining:
                    if state == LENGTH:
                        self._complete()
                    else:
                        self._state = CHUNK_CRLF
            elif state == HEAD:
                i = data.find(b"\r\n\r\n", pos)
                if i < 0:
                    if end - pos > MAX_HEAD:
                        self._too_big()
                    buf += data[pos:]
                    return
                if i - pos > MAX_HEAD:
                    self._too_big()
                self._parse_head(data[pos:i])
                pos = i + 4
            elif state == CHUNK_SIZE:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    buf += data[pos:]
                    if len(buf) > MAX_HEAD:
                        self._too_big()
                    return
                size = self._parse_chunk_size(data[pos:i])
                pos = i + 2
                if size:
                    self._remaining = size
                    self._state = CHUNK_DATA
                else:
                    self._trailer_bytes = 0
                    self._state = TRAILERS
            elif state == CHUNK_CRLF:
                if end - pos < 2:
                    buf += data[pos:]
                    return
                if data[pos : pos + 2] != b"\r\n":
                    raise self._protocol_error("Missing CRLF after a chunk.")
                pos += 2
                self._state = CHUNK_SIZE
            elif state == TRAILERS:
                # Trailers are read past and dropped: httpx has no place for them.
                i = data.find(b"\r\n", pos)
                if i < 0:
                    buf += data[pos:]
                    if self._trailer_bytes + len(buf) > MAX_HEAD:
                        self._too_big()
                    return
                self._trailer_bytes += i - pos + 2
                if self._trailer_bytes > MAX_HEAD:
                    self._too_big()
                if i == pos:
                    self._complete()
                pos = i + 2
            elif state == UNTIL_CLOSE:
                self._push(data if pos == 0 else data[pos:])
                return
            else:
                # Bytes with no request in flight, or after a complete response: the
                # server is confused and the connection must not carry more requests.
                self._keep_alive = False
                if state == IDLE:
                    self._on_stray_bytes()
                return

    def _buffer_ready(self, buf: bytearray, old: int) -> bool:
        # Whether the bytes appended since a cut read let the parser make progress.
        state = self._state
        if state == HEAD:
            return buf.find(b"\r\n\r\n", max(0, old - 3)) >= 0
        if state in (CHUNK_SIZE, TRAILERS):
            return buf.find(b"\r\n", max(0, old - 1)) >= 0
        if state == CHUNK_CRLF:
            return len(buf) >= 2
        return True

    def _complete(self) -> None:
        self._state = DONE
        self._wake()

    def _too_big(self) -> None:
        raise self._protocol_error(f"Response head or line exceeds {MAX_HEAD} bytes.")

    def _protocol_error(self, message: str) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(message, request=self._request)

    def _parse_chunk_size(self, line: bytes) -> int:
        size = line.split(b";", 1)[0].strip(_WHITESPACE)
        if not size or len(size) > 15 or size.strip(_HEXDIGITS):
            raise self._protocol_error(f"Invalid chunk size line: {line[:40]!r}.")
        return int(size, 16)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise self._protocol_error(f"Invalid status line: {lines[0][:80]!r}.")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            # Informational responses (100 Continue, 103 Early Hints) precede the real
            # one and are dropped; the state stays HEAD.
            return
        keep_alive = version == b"HTTP/1.1"
        length = -1
        chunked = False
        coded = False
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1] in _WHITESPACE or name[0] in _WHITESPACE:
                # Also rejects obsolete line folding (a line starting with whitespace),
                # which RFC 9112 section 5.2 lets a client reject.
                raise self._protocol_error(f"Invalid header line: {line[:80]!r}.")
            value = value.strip(_WHITESPACE)
            append((name, value))
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                new = _parse_length(value, httpx.RemoteProtocolError)
                if length not in (-1, new):
                    raise self._protocol_error("Conflicting Content-Length headers.")
                length = new
            elif size == 17 and name.lower() == b"transfer-encoding":
                coded = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip(_WHITESPACE) == b"chunked"
            elif size == 10 and name.lower() == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        self.status = status
        self.reason = reason
        self.http_version = version
        self.headers = headers
        if not keep_alive:
            self._keep_alive = False
        # Body framing, in the order of RFC 9112 section 6.3.
        if self._head_only or status in (204, 304) or status == 101:
            if status == 101:
                # We do not speak the upgraded protocol; the connection is done for.
                self._keep_alive = False
            self._state = DONE
        elif coded:
            if length != -1:
                # Both headers: a sign of smuggling; Transfer-Encoding wins, and the
                # connection is not trusted for another request (RFC 9112 section 6.1).
                self._keep_alive = False
            if chunked:
                self._state = CHUNK_SIZE
            else:
                self._keep_alive = False
                self._state = UNTIL_CLOSE
        elif length > 0:
            self._remaining = length
            self._state = LENGTH
        elif length == 0:
            self._state = DONE
        else:
            self._keep_alive = False
            self._state = UNTIL_CLOSE
        self._wake()
