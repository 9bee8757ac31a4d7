"""The transport: how API and image requests reach the network, below httpx's client.

Layers, top down:

- `_transport`: `NanoBananaTransport`, an `httpx.AsyncHTTPTransport` whose pool
  dispatches each request to our fast pool or to httpcore's; `build_http_client`,
  the client an `AsyncNanoBanana` owns, with the environment's proxies mounted
  (`_proxies`).
- `_fast`: one HTTP/1.1 exchange in httpcore's terms (request in, response out).
- `_pool`: the keep-alive accounting (slots, idle connections, waiters).
- `_connection`: one connection, an `asyncio.Protocol`.
- `_connect`: opening one (Happy Eyeballs, TLS with ALPN).
- `_parsers` and `_wire`: responses parsed by llhttp or h11; request heads encoded.
"""

from nanobanana._transport._fast import ABORT_ON_DISCARD
from nanobanana._transport._transport import (
    DEFAULT_LIMITS,
    NanoBananaTransport,
    TransportStats,
    build_http_client,
    make_ssl_context,
)
from nanobanana._transport._wire import MAX_HEAD

__all__ = [
    "ABORT_ON_DISCARD",
    "DEFAULT_LIMITS",
    "MAX_HEAD",
    "NanoBananaTransport",
    "TransportStats",
    "build_http_client",
    "make_ssl_context",
]
