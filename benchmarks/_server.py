"""A minimal HTTP/1.1 keep-alive server for the benchmarks.

It answers every request at once with the body of a sync-mode `POST /generate`
success, so that what the benchmarks measure is the client. It runs in its own
process (`python benchmarks/_server.py`), binds 127.0.0.1 on a free port and prints
that port on its first line of output, then serves until killed.

A raw `asyncio.Protocol` rather than aiohttp or the simulator: the server must cost
as little as possible per request, and must not favour any client library.
"""

from __future__ import annotations

import asyncio
import sys

BODY = (
    b'{"success":true,"generationId":"g1","imageUrls":["http://127.0.0.1/x.png"],'
    b'"creditsUsed":1,"remainingCredits":99}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
MAX_HEAD = 64 * 1024


class _Handler(asyncio.Protocol):
    """One client connection: parse heads and Content-Length bodies, answer each."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        out = []
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            if head.find(b"\r\ntransfer-encoding:") >= 0:
                # Not needed by the benchmarks; say so rather than hang.
                self._transport.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                self._transport.close()
                return
            if len(buf) < end + 4 + length:
                break
            pos = end + 4 + length
            out.append(RESPONSE)
        self._buf = buf[pos:]
        if len(self._buf) > MAX_HEAD + 10_000_000:
            self._transport.close()
        if out:
            self._transport.write(b"".join(out))


async def _main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Handler, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        sys.exit(0)
