"""`NanoBananaTransport`: httpx's own transport, with a fast HTTP/1.1 pool where it can.

It IS an `httpx.AsyncHTTPTransport`, built with that class's public ``__init__``
(``verify=``, ``limits=``, ``http2=``, ``proxy=``), and it does not override
``handle_async_request``. So everything that knows httpx's transport knows ours:
OpenTelemetry's httpx instrumentation (which wraps that method on the class), respx,
proxies (CONNECT, authentication, SOCKS), HTTP/2 and trio all come from httpx.

What it changes is the pool that httpx's method calls. httpx keeps it in the private
attribute ``_pool`` (an httpcore pool); ours is `_Dispatch`, which sends each request
either to our `FastPool` (HTTP/1.1 on asyncio protocols, measured several times
faster under fan-out) or to the httpcore pool that httpx made. The fast one is used
when all of these hold, checked per request at the cost of two lookups:

- an asyncio event loop runs (asyncio's own, or uvloop); on trio, httpcore's;
- there is no proxy and no ``http2=True`` (the transport was built without them);
- httpcore's ``AsyncConnectionPool.handle_async_request`` is httpcore's own function:
  respx's default mocker, or any other, patches it there, and then the request must
  reach the mock. (An identity check on the function, or, when a mock was already
  active as this module was imported, on where the function was defined.)

The one private attribute is checked when the transport is built: if a future httpx
no longer keeps an httpcore pool in ``_pool``, construction fails with a clear error
(and a test pins it) instead of requests failing later.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import ssl
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

import attrs
import httpcore
import httpx

from nanobanana._transport._fast import FastPool
from nanobanana._transport._parsers import parser_factory
from nanobanana._transport._proxies import environment_proxies

if TYPE_CHECKING:
    from collections.abc import Mapping

    from typing_extensions import Self

__all__ = [
    "DEFAULT_LIMITS",
    "NanoBananaTransport",
    "TransportStats",
    "VerifyTypes",
    "build_http_client",
    "make_ssl_context",
]

#: Like httpx's, but with a keep-alive expiry below the 5 s that Node.js servers
#: close idle connections at: a request sent as the server closes the connection
#: cannot be known to have been received, so it is never sent that close to it.
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=100, keepalive_expiry=4.0
)


def _is_httpcores(function: object) -> bool:
    # Where the function was defined: a patch (respx's, unittest.mock's) is not there.
    module = getattr(function, "__module__", None) or ""
    return (
        module.startswith("httpcore.")
        and getattr(function, "__qualname__", None) == "AsyncConnectionPool.handle_async_request"
    )


_current = httpcore.AsyncConnectionPool.handle_async_request
_ORIGINAL = _current if _is_httpcores(_current) else None


@attrs.frozen(kw_only=True)
class TransportStats:
    """A snapshot of a `NanoBananaTransport`'s connections.

    Attributes:
        open: Connections open or being opened.
        idle: Open connections waiting in the pool for a request.
        active: Open connections carrying a request (`open - idle`).
        waiting: Requests queued for a connection (in the fast pool).
    """

    open: int
    idle: int
    active: int
    waiting: int


class _Dispatch:
    """What httpx's transport calls its pool: our fast pool or httpcore's, per request."""

    def __init__(self, fast: FastPool | None, httpcore_pool: httpcore.AsyncConnectionPool) -> None:
        self.fast = fast
        self.httpcore_pool = httpcore_pool

    def uses_fast_path(self) -> bool:
        """Whether a request sent now would go through the fast pool."""
        if self.fast is None:
            return False
        handler = httpcore.AsyncConnectionPool.handle_async_request
        if handler is not _ORIGINAL and not _is_httpcores(handler):
            return False  # Patched (a mock is active): the request must reach it.
        asyncio = sys.modules.get("asyncio")
        if asyncio is None:
            return False  # Never imported: not running under asyncio.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send through the fast pool where it applies, else through httpcore's."""
        fast = self.fast
        if fast is not None and self.uses_fast_path():
            return await fast.handle_async_request(request)
        return await self.httpcore_pool.handle_async_request(request)

    async def aclose(self) -> None:
        """Close both pools."""
        try:
            if self.fast is not None:
                await self.fast.aclose()
        finally:
            await self.httpcore_pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


#: What ``verify=`` accepts.
VerifyTypes = ssl.SSLContext | str | os.PathLike[str] | bool


def _ca_context(path: str) -> ssl.SSLContext:
    """A context trusting the CA bundle file or hashed CA folder at `path` (``verify=``)."""
    try:
        if Path(path).is_dir():
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "verify= names no CA bundle file or folder", path
        ) from None
    except ssl.SSLError as exc:
        raise ValueError(
            f"verify={path!r} holds no CA certificate that can be read: {exc}"
        ) from exc


def make_ssl_context(
    verify: VerifyTypes = True, *, trust_env: bool = True, http2: bool = False
) -> ssl.SSLContext:
    """The SSL context for API and image requests, made as httpx makes it.

    Args:
        verify: True (certifi's CAs, or ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` when
            `trust_env`), False (no verification), a CA bundle file or folder (a `str`
            or any `os.PathLike`, such as a `pathlib.Path`), or a ready
            `ssl.SSLContext` (used as is).
        trust_env: Read ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``.
        http2: Offer ``h2`` as well as ``http/1.1`` by ALPN.

    Raises:
        TypeError: `verify` is none of those.
        FileNotFoundError: The CA file or folder of `verify`, or the file of
            ``SSL_CERT_FILE``, does not exist (the error names the path).
        ValueError: The file holds no CA certificate that can be read.
    """
    if isinstance(verify, bool):
        try:
            context = httpx.create_ssl_context(verify=verify, trust_env=trust_env)
        except FileNotFoundError:
            # httpx read $SSL_CERT_FILE, and its error names no file.
            path = os.environ.get("SSL_CERT_FILE", "")
            raise FileNotFoundError(
                errno.ENOENT, "SSL_CERT_FILE names no CA bundle file", path
            ) from None
    elif isinstance(verify, ssl.SSLContext):
        context = verify
    elif isinstance(verify, (str, os.PathLike)):
        # httpx deprecates a path here; a path is still what people have at hand.
        context = _ca_context(os.fsdecode(verify))
    else:
        raise TypeError(
            "verify must be True, False, a CA bundle path (str or os.PathLike) or an "
            f"ssl.SSLContext, not {type(verify).__name__}"
        )
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


class NanoBananaTransport(httpx.AsyncHTTPTransport):
    """httpx's async transport, with a fast HTTP/1.1 pool under asyncio and uvloop.

    Args:
        verify: As for `make_ssl_context`.
        trust_env: The same.
        http2: Speak HTTP/2 where the server offers it (needs ``h2``); such a
            transport always uses httpcore's pool.
        limits: Connection limits, as httpx's.
        proxy: A proxy URL or `httpx.Proxy`; such a transport always uses httpcore's
            pool (CONNECT for https, forwarding for http, SOCKS with ``socksio``).
        parser: The fast pool's response parser: "auto" (httptools when installed,
            else h11), "httptools" or "h11".

    Raises:
        RuntimeError: This version of httpx keeps no httpcore pool where we look.
    """

    def __init__(
        self,
        *,
        verify: VerifyTypes = True,
        trust_env: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: str | httpx.URL | httpx.Proxy | None = None,
        parser: str = "auto",
    ) -> None:
        context = make_ssl_context(verify, trust_env=trust_env, http2=http2)
        super().__init__(
            verify=context, trust_env=trust_env, http2=http2, limits=limits, proxy=proxy
        )
        inner = self.__dict__.get("_pool")
        if not isinstance(inner, httpcore.AsyncConnectionPool):
            raise RuntimeError(  # noqa: TRY004 - not the caller's argument: httpx changed
                f"httpx {httpx.__version__} keeps no httpcore pool in "
                "AsyncHTTPTransport._pool, where nanobanana's transport puts its own; "
                "this nanobanana does not support this httpx yet."
            )
        fast = None
        if proxy is None and not http2:
            fast = FastPool(limits=limits, ssl_context=context, parser=parser_factory(parser))
        self._pool = _Dispatch(fast, inner)  # type: ignore[assignment] # duck-typed by httpx

    @property
    def dispatch(self) -> _Dispatch:
        """The pool httpx calls (ours), holding the fast pool and httpcore's."""
        pool = self._pool
        assert isinstance(pool, _Dispatch)  # noqa: S101 - set in __init__
        return pool

    def stats(self) -> TransportStats:
        """Count the connections of both pools, and the requests queued in ours."""
        dispatch = self.dispatch
        opened = idle = waiting = 0
        if dispatch.fast is not None:
            pool = dispatch.fast.pool
            opened, idle, waiting = pool.open_count, pool.idle_count, pool.waiting_count
        connections = dispatch.httpcore_pool.connections
        opened += len(connections)
        idle += sum(1 for c in connections if c.is_idle())
        return TransportStats(open=opened, idle=idle, active=opened - idle, waiting=waiting)


def build_http_client(
    *,
    timeout: httpx.Timeout,
    limits: httpx.Limits | None = None,
    pool_size: int = 100,
    proxy: str | httpx.URL | httpx.Proxy | None = None,
    http2: bool = False,
    verify: VerifyTypes = True,
    trust_env: bool = True,
    parser: str = "auto",
) -> httpx.AsyncClient:
    """The `httpx.AsyncClient` an `AsyncNanoBanana` owns: our transport, proxies mounted.

    With no `proxy`, the environment's proxies are used when `trust_env` (as a plain
    ``httpx.AsyncClient()`` does): one proxied transport per pattern, and ``NO_PROXY``
    hosts direct. Without `limits`, `pool_size` connections, kept `DEFAULT_LIMITS`'s
    keep-alive expiry.

    Raises:
        ImportError: `http2` without the ``h2`` package.
        TypeError: `limits` is not an `httpx.Limits`.
    """
    if limits is None:
        limits = httpx.Limits(
            max_connections=pool_size,
            max_keepalive_connections=pool_size,
            keepalive_expiry=DEFAULT_LIMITS.keepalive_expiry,
        )
    elif not isinstance(limits, httpx.Limits):
        raise TypeError("limits must be an httpx.Limits")
    if http2 and importlib.util.find_spec("h2") is None:
        raise ImportError("http2=True needs the 'h2' package: pip install 'nanobanana[http2]'.")
    context = make_ssl_context(verify, trust_env=trust_env, http2=http2)

    def transport(via: str | httpx.URL | httpx.Proxy | None) -> NanoBananaTransport:
        return NanoBananaTransport(
            verify=context,
            trust_env=trust_env,
            http2=http2,
            limits=limits,
            proxy=via,
            parser=parser,
        )

    mounts: Mapping[str, httpx.AsyncBaseTransport | None]
    if proxy is not None:
        mounts = {"all://": transport(proxy)}
    elif trust_env:
        mounts = {
            pattern: None if url is None else transport(url)
            for pattern, url in environment_proxies().items()
        }
    else:
        mounts = {}
    return httpx.AsyncClient(
        transport=transport(None),
        mounts=mounts,
        timeout=timeout,
        follow_redirects=False,
        trust_env=trust_env,
    )
