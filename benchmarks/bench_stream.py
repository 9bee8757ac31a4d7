"""SSE throughput: one 20,000-event stream read through `client.stream()` and raw readers.

Run as `python benchmarks/bench_stream.py [EVENTS]`. The file starts itself again as a
server subprocess (`--serve`): a raw `asyncio.Protocol` on 127.0.0.1 that answers every
`POST` with a stream-mode `POST /generate` response, `text/event-stream` with chunked
transfer encoding, as fast as the socket takes it: EVENTS-1 `status` events (with
`generationId`, as the simulator's resumable streams send them) and one `complete`.
The body is built once, in chunks of 16 KiB, so the server costs next to nothing. A
`GET` (the `GET /generate?id=` that `client.stream()` sends after `complete` to
complete its result) gets the generation's small JSON, as from the service.

Readers, each best of 7 rounds (interleaved) after a warm-up round, each parsing every
event's JSON (a consumer has to) unless said otherwise:

- `AsyncNanoBanana.stream()` (its default transport);
- raw httpx-sse (`httpx_sse.aconnect_sse` + `json.loads`) on httpx's own transport:
  the reference the target is set against (client.stream() >= 0.8x);
- the same over nanobanana's `NanoBananaTransport`, to separate transport from parsing;
- raw httpx-sse without `json.loads`, for scale;
- raw aiohttp: `async for line in response.content` + `json.loads`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import httpx
import httpx_sse

from nanobanana import AsyncNanoBanana

try:
    from nanobanana._transport import NanoBananaTransport
except ImportError:  # an older version, measured for comparison
    NanoBananaTransport = None

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--serve" else 20_000
ROUNDS = 7
BODY = {"prompt": "a banana", "mode": "stream"}
HEADERS = {"Authorization": "Bearer nb_bench"}
CHUNK = 16 * 1024


def _events(n):
    status = (
        'data: {{"type":"status","message":"Processing...","progress":{p},'
        '"generationId":"gen_bench"}}\n\n'
    )
    parts = [status.format(p=i * 100 // n).encode() for i in range(n - 1)]
    parts.append(
        b'data: {"type":"complete","message":"Generation complete","progress":100,'
        b'"data":{"success":true,"imageUrls":["http://127.0.0.1/x.png"],'
        b'"generationId":"gen_bench"}}\n\n'
    )
    return b"".join(parts)


def _response(n):
    body = _events(n)
    chunks = []
    for start in range(0, len(body), CHUNK):
        piece = body[start : start + CHUNK]
        chunks.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    chunks.append(b"0\r\n\r\n")
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(chunks)


# `GET /generate?id=`: the generation, as the service answers a poll. `client.stream()`
# sends one after the `complete` event to complete its result (model, credits, time).
_POLL = json.dumps(
    {
        "data": {
            "id": "gen_bench",
            "prompt": "a banana",
            "outputImageUrls": ["http://127.0.0.1/x.png"],
            "modelUsed": "nano-banana",
            "processingStatus": "completed",
            "creditsUsed": 1,
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
    }
).encode()
_POLL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_POLL)
    + _POLL
)


class _Handler(asyncio.Protocol):
    response = b""

    def __init__(self):
        self._transport = None
        self._buf = b""

    def connection_made(self, transport):
        self._transport = transport

    def data_received(self, data):
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            if len(self._buf) < end + 4 + length:
                return
            self._buf = self._buf[end + 4 + length :]
            poll = head.startswith(b"get ")
            self._transport.write(_POLL_RESPONSE if poll else self.response)


async def _serve(n):
    _Handler.response = _response(n)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Handler, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- readers: each returns the number of events it parsed ---------------------------


async def read_nanobanana(base, state):
    if "client" not in state:
        state["client"] = AsyncNanoBanana(api_key="nb_bench", base_url=base)
    count = 0
    last = None
    async for event in state["client"].stream("a banana"):
        count += 1
        last = event
    assert last is not None
    assert last.type == "complete"
    return count


def _httpx_sse_reader(*, parse, transport=None):
    async def read(base, state):
        if "http" not in state:
            state["http"] = httpx.AsyncClient(transport=transport() if transport else None)
        count = 0
        async with httpx_sse.aconnect_sse(
            state["http"], "POST", base + "/generate", json=BODY, headers=HEADERS
        ) as source:
            async for sse in source.aiter_sse():
                if parse:
                    event = json.loads(sse.data)
                    if event["type"] == "complete":
                        assert event["data"]["imageUrls"]
                count += 1
        return count

    return read


async def read_aiohttp(base, state):
    if "session" not in state:
        state["session"] = aiohttp.ClientSession()
    count = 0
    async with state["session"].post(base + "/generate", json=BODY, headers=HEADERS) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event["type"] == "complete":
                    assert event["data"]["imageUrls"]
                count += 1
    return count


async def _close(state):
    for key in ("client", "http"):
        if key in state:
            await state[key].aclose()
    if "session" in state:
        await state["session"].close()


async def _bench_all(readers, base):
    """Best wall-clock and best CPU events/s per reader.

    Rounds interleave the readers, so that a busy moment of the machine hits them all
    alike. CPU time is this process's only (the server runs in another), which is
    what a reader costs, and holds steady on a machine shared with other work.
    """
    states = [{} for _ in readers]
    wall = [0.0] * len(readers)
    cpu = [0.0] * len(readers)
    try:
        for read, state in zip(readers, states, strict=True):
            assert await read(base, state) == N  # warm-up: connection, imports
        for _ in range(ROUNDS):
            for index, (read, state) in enumerate(zip(readers, states, strict=True)):
                start, start_cpu = time.perf_counter(), time.process_time()
                count = await read(base, state)
                elapsed, used = time.perf_counter() - start, time.process_time() - start_cpu
                assert count == N, count
                wall[index] = max(wall[index], count / elapsed)
                cpu[index] = max(cpu[index], count / max(used, 1e-9))
        return list(zip(wall, cpu, strict=True))
    finally:
        for state in states:
            await _close(state)


READERS = [
    ("AsyncNanoBanana.stream()", read_nanobanana),
    ("raw httpx-sse + json.loads", _httpx_sse_reader(parse=True)),
    ("raw httpx-sse + json, NanoBananaTransport", "our-transport"),
    ("raw httpx-sse, no json", _httpx_sse_reader(parse=False)),
    ("raw aiohttp lines + json.loads", read_aiohttp),
]


def main():
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(N)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}/api/v1"
        print(f"one {N}-event SSE response per round, best of {ROUNDS}, events/s")
        names, readers = [], []
        for name, read in READERS:
            if read == "our-transport":
                if NanoBananaTransport is None:
                    continue
                names.append(name)
                readers.append(_httpx_sse_reader(parse=True, transport=NanoBananaTransport))
            else:
                names.append(name)
                readers.append(read)
        rates = dict(zip(names, asyncio.run(_bench_all(readers, base)), strict=True))
        ref_wall, ref_cpu = rates["raw httpx-sse + json.loads"]
        print(f"{'reader':<40} {'wall ev/s':>10} {'ratio':>6} {'CPU ev/s':>10} {'ratio':>6}")
        for name, _ in READERS:
            if name not in rates:
                print(f"{name:<40} {'-':>10}  skipped (no nanobanana._transport)")
                continue
            w, c = rates[name]
            print(f"{name:<40} {w:>10.0f} {w / ref_wall:>6.2f} {c:>10.0f} {c / ref_cpu:>6.2f}")
        ours_wall, ours_cpu = rates["AsyncNanoBanana.stream()"]
        for label, ours, ref in (("wall", ours_wall, ref_wall), ("CPU", ours_cpu, ref_cpu)):
            verdict = "meets" if ours >= 0.8 * ref else "MISSES"
            print(
                f"client.stream() / raw httpx-sse+json, {label}: {ours / ref:.2f} ({verdict} 0.8)"
            )
        _bare_wall, bare_cpu = rates["raw httpx-sse, no json"]
        print(f"client.stream() / raw httpx-sse without json, CPU: {ours_cpu / bare_cpu:.2f}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        main()
