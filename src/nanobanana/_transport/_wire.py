"""The request side of HTTP/1.1: a request head as bytes, with its framing checked.

Why it is apart: a request head is where a client can be made to smuggle (a CR or LF
inside a header value, two framings at once), so the encoder is kept where it can be
read and tested on bytes alone. Responses are parsed by a well-kept parser instead
(`nanobanana._transport._parsers`): only the side we write is ours.
"""

from __future__ import annotations

from typing import Final

import httpcore

__all__ = ["MAX_HEAD", "encode_head"]

#: The most bytes a response head (or its trailer section) may take, as httpx's own
#: transport allows (httpcore's h11 ``max_incomplete_event_size``). A server that sends
#: more is broken or hostile: we refuse rather than buffer.
MAX_HEAD: Final = 100 * 1024

_WHITESPACE: Final = b" \t"


def encode_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bool, int, bool]:
    """Serialize a request's head.

    Args:
        method: The request method.
        target: The request target (path and query).
        headers: The header fields; httpx has already added Host and the body's
            framing headers.

    Returns:
        The head bytes, whether the body must be sent chunked, the declared
        Content-Length (-1 when there is none), and whether the request asked for
        `Connection: close`.

    Raises:
        httpcore.LocalProtocolError: A header would break the message framing.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    extend = parts.extend
    chunked = False
    length = -1
    close = False
    lines = 2  # The request line and the blank line that ends the head.
    for name, value in headers:
        extend((name, b": ", value, b"\r\n"))
        lines += 1
        # Only three header names matter to framing; compare lengths first so that
        # most headers cost one len() here.
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = _parse_length(value)
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
        raise httpcore.LocalProtocolError("Illegal line break in a request header.")
    if chunked and length != -1:
        # Each side would frame the body its own way (RFC 9112 section 6.1).
        raise httpcore.LocalProtocolError("Both Content-Length and Transfer-Encoding are set.")
    return head, chunked, length, close


def _parse_length(value: bytes) -> int:
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
        raise httpcore.LocalProtocolError(f"Invalid Content-Length: {value!r}.")
    return int(first)
