"""Opening a connection: Happy Eyeballs (RFC 8305), then TLS with ALPN.

Why our own racing connect: a host name often resolves to IPv6 and IPv4 addresses,
and where IPv6 is broken (packets dropped, not refused) a connect that tries one
address at a time waits out the whole connect timeout before trying the next.
asyncio's `create_connection(happy_eyeballs_delay=...)` races them, but uvloop's
`create_connection` has no such argument. So the addresses are raced here with
non-blocking sockets (`loop.sock_connect`, which every loop has), and the connected
socket is handed to `loop.create_connection(sock=...)` for the protocol and TLS.

RFC 8305 in short: resolve, interleave the address families (first the family the
resolver put first), start one attempt, and start the next one when the previous
has failed or 250 ms have passed, whichever comes first; the first to connect wins
and the others are closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import ssl

__all__ = ["ATTEMPT_DELAY", "connect", "interleave", "resolve"]

#: RFC 8305 section 5: the recommended "Connection Attempt Delay".
ATTEMPT_DELAY: Final = 0.25

Address = tuple[int, tuple[Any, ...]]  # (family, sockaddr)


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Address]:
    """The addresses of `host`, in the resolver's order (an IP literal: itself).

    Raises:
        OSError: The name does not resolve.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    if ip.version == 6:
        return [(socket.AF_INET6, (host, port, 0, 0))]
    return [(socket.AF_INET, (host, port))]


def interleave(addresses: list[Address]) -> list[Address]:
    """Alternate the address families, the resolver's first family first (RFC 8305 4)."""
    unique = list(dict.fromkeys(addresses))
    if not unique:
        return unique
    first = unique[0][0]
    preferred = [a for a in unique if a[0] == first]
    others = [a for a in unique if a[0] != first]
    merged: list[Address] = []
    for i in range(max(len(preferred), len(others))):
        merged.extend(group[i] for group in (preferred, others) if i < len(group))
    return merged


async def _attempt(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_socket(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _race(loop: asyncio.AbstractEventLoop, addresses: list[Address]) -> socket.socket:
    if len(addresses) == 1:
        return await _attempt(loop, addresses[0])
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[BaseException] = []
    queue = list(addresses)
    winner: socket.socket | None = None
    try:
        try:
            while winner is None and (queue or pending):
                if queue:
                    pending.add(loop.create_task(_attempt(loop, queue.pop(0))))
                # Wait for an attempt to end, or for the delay before starting the next:
                # a failure starts the next attempt at once.
                done, _ = await asyncio.wait(
                    pending,
                    timeout=ATTEMPT_DELAY if queue else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    pending.discard(task)
                    error = task.exception()
                    if error is not None:
                        errors.append(error)
                    elif winner is None:
                        winner = task.result()
                    else:
                        task.result().close()  # Two connected in the same step: keep one.
        finally:
            # The losers (or all, when cancelled): stop them, and close what connected.
            for task in pending:
                task.cancel()
                task.add_done_callback(_close_socket)
            if pending:
                await asyncio.wait(pending)
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        if len(errors) == 1:
            raise errors[0]
        raise OSError(
            "Every address failed: " + "; ".join(str(e) or type(e).__name__ for e in errors)
        )
    return winner


async def connect(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """Connect `protocol_factory()`'s protocol to `host`, racing its addresses.

    The caller bounds it with the connect timeout; cancelling it closes every socket.

    Raises:
        OSError: No address could be connected, or TLS failed (an `ssl.SSLError`).
    """
    addresses = interleave(await resolve(loop, host, port))
    if not addresses:
        raise OSError(f"No address found for {host!r}.")
    sock = await _race(loop, addresses)
    try:
        await loop.create_connection(
            protocol_factory,
            sock=sock,
            ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
        )
    except BaseException:
        sock.close()
        raise
