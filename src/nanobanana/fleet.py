"""Admission shared by a fleet: every process and host using one API key, through Redis.

The account's limit on requests in flight belongs to the account, not to a process
(overview docs): four web workers or eight Celery workers using one key each keep
their own count and together send more than it allows, and the service answers 429.
A `RedisGovernor` keeps the counts in Redis instead, so that every process using the
same key and base URL shares them:

- the requests in flight, as leases renewed while a request runs, so that the slots
  of a process that dies come back within one lease;
- the order: first come first served across processes, so no worker starves;
- the limit learned from the server, the async jobs unfinished against the server's
  task cap, and the cool-downs after a 429 from load nobody in the fleet sent.

Example:
    ```python
    from nanobanana import AsyncNanoBanana
    from nanobanana.fleet import RedisGovernor

    async with AsyncNanoBanana(governor=RedisGovernor("redis://redis:6379/0")) as client:
        ...
    ```

``AsyncNanoBanana(governor="redis://...")`` and ``$NANOBANANA_REDIS_URL`` do the same
with the default settings. Needs the ``redis`` extra (redis-py's asyncio client), and
asyncio: under trio the client admits in its own process.

When Redis cannot be reached, the client logs one warning, admits with its own
in-process governor, and comes back to Redis when it answers again; a call is never
lost to Redis being away, and no Redis call waits longer than ``timeout``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from nanobanana._admission._redis import FleetGovernor
from nanobanana._admission._redis_link import Link

if TYPE_CHECKING:
    from nanobanana._clock import Clock
    from nanobanana._config import Secret

__all__ = ["RedisGovernor"]

DEFAULT_NAMESPACE = "nanobanana"


def _where(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.define(kw_only=True, eq=False, init=False)
class RedisGovernor:
    """Admit requests and async tasks with counts shared through Redis.

    Pass it as ``AsyncNanoBanana(governor=...)``. One `RedisGovernor` may serve several
    clients; each counts under its own API key and base URL.

    Args:
        redis_url_or_client: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
            ``redis.asyncio.Redis`` client of yours (then it is used as is and not
            closed; `timeout` still bounds every call; give it no ``socket_timeout``,
            or one above `timeout`, since waiters block in Redis for up to half of it).
        namespace: the first part of every key (default ``nanobanana``). The rest is
            a hash tag made from a hash of the API key and the base URL (never the key
            itself), so processes share exactly when they use the same account, and
            Redis Cluster keeps a fleet's keys in one slot.
        lease: seconds a request's slot stays taken without a renewal (renewed every
            third of it while the request runs). A process that dies frees its slots
            within one lease.
        timeout: the longest any one Redis call may take before Redis counts as
            unreachable.
        retry_interval: while Redis is unreachable, how often to try it again.
    """

    url: str | None
    client: Any
    namespace: str
    lease: float = attrs.field(validator=_positive)
    timeout: float = attrs.field(validator=_positive)
    retry_interval: float = attrs.field(validator=_positive)

    def __init__(
        self,
        redis_url_or_client: Any,
        *,
        namespace: str | None = None,
        lease: float = 15.0,
        timeout: float = 2.0,
        retry_interval: float = 2.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: PLC0415 - the extra is optional
        except ImportError:
            raise ImportError(
                "The Redis governor needs redis-py: pip install 'nanobanana[redis]'"
            ) from None
        if isinstance(redis_url_or_client, str):
            url: str | None = redis_url_or_client
            client = None
        elif isinstance(redis_url_or_client, redis.asyncio.Redis):
            url, client = None, redis_url_or_client
        else:
            raise TypeError(
                "RedisGovernor needs a redis:// URL or a redis.asyncio.Redis client, not "
                f"{type(redis_url_or_client).__name__}"
            )
        if namespace is not None and (not namespace or "{" in namespace or "}" in namespace):
            raise ValueError("namespace must be a non-empty string without braces")
        self.__attrs_init__(
            url=url,
            client=client,
            namespace=namespace or DEFAULT_NAMESPACE,
            lease=lease,
            timeout=timeout,
            retry_interval=retry_interval,
        )

    def __repr__(self) -> str:
        where = _where(self.url) if self.url is not None else "a redis.asyncio.Redis client"
        return f"RedisGovernor({where!r}, namespace={self.namespace!r}, lease={self.lease:g})"

    def key_prefix(self, *, api_key: str | None, base_url: str) -> str:
        """The prefix of the keys shared by the clients of ``api_key`` at ``base_url``."""
        digest = hashlib.sha256(
            b"nanobanana-governor\0" + (api_key or "").encode() + b"\0" + base_url.encode()
        ).hexdigest()[:32]
        return f"{self.namespace}:{{{digest}}}:"

    def bind(
        self,
        *,
        api_key: Secret | None,
        base_url: str,
        max_concurrency: int | None,
        ceiling: int,
        clock: Clock,
    ) -> FleetGovernor:
        """The governor of one client (called by `AsyncNanoBanana`)."""
        import redis.asyncio  # noqa: PLC0415

        if self.client is not None:
            client, owned, where = self.client, False, "a redis.asyncio.Redis client"
        else:
            assert self.url is not None  # noqa: S101 - one of the two is set
            # Every call is bounded by `timeout` already; the connect timeout keeps a
            # dead host from holding a connection attempt open behind it.
            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=self.timeout)
            owned, where = True, _where(self.url)
        link = Link(
            client=client,
            owned=owned,
            where=where,
            timeout=self.timeout,
            retry_interval=self.retry_interval,
            clock=clock,
        )
        prefix = self.key_prefix(
            api_key=api_key.reveal() if api_key is not None else None, base_url=base_url
        )
        return FleetGovernor(
            link=link,
            prefix=prefix,
            lease=self.lease,
            max_concurrency=max_concurrency,
            ceiling=ceiling,
            clock=clock,
        )
