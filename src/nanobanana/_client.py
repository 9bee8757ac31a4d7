"""`AsyncNanoBanana`: the client. One instance owns (or borrows) one connection pool."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from nanobanana._admission import GovernorStats, choose_governor
from nanobanana._budget import Catalogue, Ledger, check_max_credits
from nanobanana._calls import (
    check_id,
    data_of,
    opt_int,
)
from nanobanana._clock import Clock, SystemClock
from nanobanana._config import (
    DEFAULT_TIMEOUT,
    HTTPX_DEFAULT,
    NOT_GIVEN,
    resolve_api_key,
    resolve_base_url,
    resolve_timeout,
    with_max_retries,
)
from nanobanana._errors import (
    NotFoundError,
    UnexpectedResponseError,
)
from nanobanana._generating import GenerationCalls
from nanobanana._http import Requester
from nanobanana._jobs import Job, PollPolicy
from nanobanana._models import Generation, GenerationStatus, Model
from nanobanana._retry import RequestKind, RetryPolicy
from nanobanana._stats import ClientStats, Recorder
from nanobanana._version import __version__

if TYPE_CHECKING:
    import os
    import ssl
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self


__all__ = ["AsyncNanoBanana"]


DEFAULT_MAX_RETRIES = 3
# httpx's pool defaults keep only 20 idle connections: with more in flight, every
# request beyond 20 would open a new connection. Keep as many as we allow in flight.
DEFAULT_POOL_SIZE = 100


class AsyncNanoBanana(GenerationCalls):
    """The asyncio-native Nano Banana client.

    Every call, poll, stream and download of one client shares one httpx connection
    pool, and passes one concurrency governor that keeps the account's limit on
    requests in flight, so ``asyncio.gather`` over hundreds of prompts queues here
    instead of failing with 429s.

    Example:
        ```python
        async with AsyncNanoBanana() as client:  # key from $NANOBANANA_API_KEY
            generation = await client.generate("a cute orange cat on a windowsill")
            await client.download(generation, "images/")
        ```

    Args:
        api_key: the ``nb_...`` key; default ``$NANOBANANA_API_KEY``, then
            ``$NANO_BANANA_API_KEY``, then ``$NB_API_KEY``. Only needed by calls that
            need it (``models()`` does not).
        base_url: default ``$NANOBANANA_BASE_URL``, then ``$NANO_BANANA_BASE_URL``,
            then ``https://www.nananobanana.com/api/v1``.
        timeout: seconds or an `httpx.Timeout`, applied to every API request (also
            through a borrowed `http_client`); default: 180 s to read, 10 s to
            connect, because sync generations take 10-60 s. A borrowed
            `http_client` keeps its own timeout by default, unless it is httpx's
            default (5 s), which is replaced by ours.
        download_concurrency: at most this many image downloads at once, shared
            with the ``with_options()`` copies (default 8; downloads do not count
            against the account's limit).
        max_retries: retries of a call that is safe to retry (default 3; see
            `RetryPolicy`).
        max_concurrency: at most this many API requests in flight. Default: learned
            from the server, starting at the documented account limit of 1.
        max_credits: a spend cap: a generation whose estimated cost (see
            `estimate_credits`) would take the credits spent and reserved by this
            client and its ``with_options()`` copies past it raises
            `BudgetExceededError` and is not sent. Default: no cap.
        governor: who admits requests and async tasks. None: this process, unless
            ``$NANOBANANA_REDIS_URL`` is set; a ``redis://`` URL or a
            `nanobanana.fleet.RedisGovernor`: shared by every process and host using
            the same API key and base URL (see "Scaling out" in the docs).
        http_client: your own ``httpx.AsyncClient``, used as is and not closed. Its
            defaults (headers, cookies, hooks) apply to API requests, but our
            ``Authorization`` wins; downloads carry neither. Its own ``User-Agent``
            is kept, httpx's default replaced by ours (see the Networks docs).
        proxy: a proxy URL or `httpx.Proxy` (https goes through a CONNECT tunnel).
            Default: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``
            from the environment (any case), as ``httpx.AsyncClient()`` reads them.
        http2: speak HTTP/2 where offered (``nanobanana[http2]``); default HTTP/1.1.
        verify: True (certifi's CAs, or ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR``), a
            CA bundle file or folder (a ``str`` or ``pathlib.Path``), an
            `ssl.SSLContext`, or False.
        trust_env: read proxies and ``SSL_CERT_*`` from the environment (as httpx).
        limits: an `httpx.Limits` for the pool. Default: 100 connections (or
            ``max_concurrency``), idle ones kept 4 s (Node.js servers close at 5 s).
        retry_policy: backoff and budgets for retries.
        poll_policy: how ``job.wait()`` polls.
        clock: time source (tests pass ``FakeClock``).
        rng: randomness for jitter (tests pass a seeded ``random.Random``).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: float | httpx.Timeout | None = NOT_GIVEN,
        max_retries: int = NOT_GIVEN,
        max_concurrency: int | None = None,
        max_credits: int | None = None,
        http_client: httpx.AsyncClient | None = None,
        proxy: str | httpx.URL | httpx.Proxy | None = None,
        http2: bool = False,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
        governor: Any = None,
        retry_policy: RetryPolicy | None = None,
        poll_policy: PollPolicy | None = None,
        download_concurrency: int = 8,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._api_key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url)
        if retry_policy is None and max_retries is NOT_GIVEN:
            max_retries = DEFAULT_MAX_RETRIES
        policy = retry_policy or RetryPolicy()
        if max_retries is not NOT_GIVEN:
            policy = with_max_retries(policy, max_retries)
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
        ):
            raise TypeError("max_concurrency must be an int or None")
        self.retry_policy = policy
        self.poll_policy = poll_policy or PollPolicy()
        self._clock: Clock = clock or SystemClock()
        self._rand = rng or random.Random()
        self._download_concurrency = download_concurrency
        from nanobanana._download import DownloadLimit  # noqa: PLC0415 - as in download()

        # Shared with the copies, as the pool the downloads go through is.
        self._download_limit = DownloadLimit(download_concurrency)
        # Shared with every with_options() copy: the spend ledger, the model costs it
        # is estimated from, and the counters of stats().
        self._ledger = Ledger.root(check_max_credits(max_credits))
        self._catalogue = Catalogue()
        self._recorder = Recorder()
        # A borrowed http_client's timeout was chosen by its owner: it applies (None:
        # no timeout of ours on the requests, so httpx's build_request puts its own),
        # unless it is httpx's default, 5 s, which would fail every sync generation
        # (10-60 s, sync-mode docs). timeout= always wins.
        self._timeout: httpx.Timeout | None
        if timeout is not NOT_GIVEN:
            self._timeout = resolve_timeout(timeout)
        elif isinstance(http_client, httpx.AsyncClient) and http_client.timeout != HTTPX_DEFAULT:
            self._timeout = None
        else:
            self._timeout = DEFAULT_TIMEOUT
        resolved_timeout = self._timeout

        self._owns_http = http_client is None
        pool = max(DEFAULT_POOL_SIZE, max_concurrency or 0)
        if http_client is None:
            from nanobanana._transport import build_http_client  # noqa: PLC0415 - lazily

            http_client = build_http_client(
                timeout=resolved_timeout or DEFAULT_TIMEOUT,
                limits=limits,
                pool_size=pool,
                proxy=proxy,
                http2=http2,
                verify=verify,
                trust_env=trust_env,
            )
        elif not isinstance(http_client, httpx.AsyncClient):
            raise TypeError("http_client must be an httpx.AsyncClient")
        elif proxy is not None or http2 or verify is not True or not trust_env or limits:
            raise ValueError(
                "proxy=, http2=, verify=, trust_env= and limits= configure the client's own "
                "connection pool; with http_client=, set them on that httpx.AsyncClient."
            )
        self._http = http_client
        # A borrowed client's own User-Agent was set on purpose (a gateway may allow
        # by it): keep it. httpx's default says nothing about the caller: use ours.
        theirs = "" if self._owns_http else http_client.headers.get("user-agent", "")
        explicit = theirs and not theirs.startswith("python-httpx/")
        self.user_agent = (
            theirs if explicit else f"nanobanana/{__version__} httpx/{httpx.__version__}"
        )
        self._governor = choose_governor(
            governor,
            api_key=self._api_key,
            base_url=str(self._base_url),
            max_concurrency=max_concurrency,
            ceiling=pool,
            clock=self._clock,
        )
        self._requester = Requester(
            http=http_client,
            base_url=self._base_url,
            api_key=self._api_key,
            governor=self._governor,
            retry=policy,
            clock=self._clock,
            rand=self._rand,
            timeout=resolved_timeout,
            headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            recorder=self._recorder,
            borrowed=not self._owns_http,
        )
        self._closed = False
        self._root = True

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API's base URL, e.g. ``https://www.nananobanana.com/api/v1``."""
        return str(self._base_url)

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client every request of this client goes through."""
        return self._http

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` was called (on this client, or on the one it was copied from)."""
        return self._closed or self._requester.closed

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout | None = NOT_GIVEN,
        max_retries: int = NOT_GIVEN,
        max_credits: int | None = NOT_GIVEN,
        retry_policy: RetryPolicy = NOT_GIVEN,
        poll_policy: PollPolicy = NOT_GIVEN,
    ) -> Self:
        """A client with other defaults for its calls, sharing everything else with this one.

        The copy shares the connection pool, the concurrency governor, the credits
        ledger, the model catalogue and the `stats` counters; only the options passed
        change (openai-python's pattern). It costs no connection: make one per call
        site freely. Closing the copy does not close the pool (closing this client
        closes the copies too).

        ```python
        patient = client.with_options(timeout=600, max_retries=8)
        generation = await patient.generate("a very detailed banana")
        ```

        Args:
            timeout: seconds or an `httpx.Timeout` for the copy's requests.
            max_retries: retries of a call that is safe to retry.
            max_credits: a cap of the copy's own on what it (and copies made from it)
                spends from now on, on top of the caps of this client: a copy can
                narrow the budget, never widen it. None: no cap of its own.
            retry_policy: the copy's `RetryPolicy` (``max_retries`` overrides its
                attempts).
            poll_policy: the copy's `PollPolicy` for ``job.wait()``.
        """
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._owns_http = False  # the pool is this client's to close
        copy._closed = copy._root = False
        if retry_policy is not NOT_GIVEN:
            if not isinstance(retry_policy, RetryPolicy):
                raise TypeError("retry_policy must be a RetryPolicy")
            copy.retry_policy = retry_policy
        if max_retries is not NOT_GIVEN:
            copy.retry_policy = with_max_retries(copy.retry_policy, max_retries)
        if timeout is not NOT_GIVEN:
            copy._timeout = resolve_timeout(timeout)
        if poll_policy is not NOT_GIVEN:
            if not isinstance(poll_policy, PollPolicy):
                raise TypeError("poll_policy must be a PollPolicy")
            copy.poll_policy = poll_policy
        if max_credits is not NOT_GIVEN:
            copy._ledger = self._ledger.narrow(check_max_credits(max_credits))
        copy._requester = self._requester.derive(retry=copy.retry_policy, timeout=copy._timeout)
        return copy

    def stats(self) -> ClientStats:
        """Counters since the client was created: requests, retries, credits, queueing.

        Cheap (a copy of a few counters) and safe to call from any task or thread. A
        client and its ``with_options()`` copies share them; see `ClientStats`.
        """
        return self._recorder.snapshot(governor=self._governor.stats(), ledger=self._ledger)

    def governor_stats(self) -> GovernorStats:
        """The concurrency governor's state: limit, active and waiting requests."""
        return self._governor.stats()

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "missing"
        return f"<AsyncNanoBanana base_url={self.base_url!r} api_key={key}>"

    async def aclose(self) -> None:
        """Close the connection pool (unless it was borrowed). Closing twice is harmless.

        A ``with_options()`` copy only closes itself: the pool stays open for the rest.
        """
        if self._closed:
            return
        self._closed = True
        self._requester.closed = True
        if self._root:
            self._requester.binding.closed = True  # and every copy with it
            try:
                await self._governor.aclose()  # shared by the copies: the root closes it
            finally:
                if self._owns_http:
                    await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # An unclosed pool leaks sockets; say so the way httpx and asyncio do.
        if getattr(self, "_owns_http", False) and not getattr(self, "_closed", True):
            warnings.warn(
                f"{self!r} was never closed; use `async with AsyncNanoBanana()` or "
                "`await client.aclose()`",
                ResourceWarning,
                stacklevel=1,
            )

    # -- calls -----------------------------------------------------------------------

    async def models(self) -> list[Model]:
        """The live model catalogue (``GET /models``, no key needed).

        The catalogue is authoritative: the docs' ``nano-banana`` may not exist.
        """
        body = await self._requester.call("GET", "/models", kind=RequestKind.READ, auth=False)
        data = data_of(body, "GET /models")
        if not isinstance(data, list):
            raise UnexpectedResponseError(
                "Unexpected response to GET /models: 'data' is not a list.", field="data", body=body
            )
        models = [Model.from_json(item) for item in data]
        self._catalogue.store(models)  # the costs that spend caps are estimated from
        return models

    async def credits(self) -> int:
        """The account's credit balance (``GET /credits``)."""
        body = await self._requester.call("GET", "/credits", kind=RequestKind.READ)
        data = data_of(body, "GET /credits")
        value = opt_int(data.get("credits") if isinstance(data, dict) else None)
        if value is None:
            raise UnexpectedResponseError(
                "Unexpected response to GET /credits: no numeric field 'credits'.",
                field="credits",
                body=body,
            )
        return value

    def job(self, generation_id: str) -> Job:
        """A `Job` for an id you already have (e.g. saved before a restart)."""
        check_id(generation_id)
        return Job(generation_id, self)

    async def get_generation(self, generation_id: str) -> Generation:
        """A generation's current state (``GET /generate?id=``)."""
        return await self._get_generation(generation_id, deadline=None)

    async def _get_generation(self, generation_id: str, *, deadline: float | None) -> Generation:
        check_id(generation_id)
        try:
            body = await self._requester.call(
                "GET",
                "/generate",
                kind=RequestKind.READ,
                params={"id": generation_id},
                deadline=deadline,
            )
        except NotFoundError:
            await self._governor.job_seen(generation_id, finished=True)  # not a job of ours
            raise
        generation = Generation.from_json(data_of(body, "GET /generate"))
        # A job counts against the server's task cap until a poll sees it finished.
        await self._governor.job_seen(
            generation_id, finished=generation.status is not GenerationStatus.PROCESSING
        )
        return generation

    async def _poll_for_room(self, generation_id: str) -> None:
        """Poll a job for the governor, while a ``submit()`` waits for room."""
        await self._get_generation(generation_id, deadline=None)

    async def download(
        self,
        generation_or_url: Generation | str | Sequence[str],
        dest: str | os.PathLike[str],
        *,
        max_size: int = 50 * 1024 * 1024,
        timeout: float | None = None,
    ) -> list[Path]:
        """Download a generation's images (or the given URLs) into the folder ``dest``.

        Files are written whole or not at all and named from the generation id and
        the image's index (``<id>-<index>.<ext>``), never from the server; the
        extension follows the bytes (PNG, JPEG, WebP, GIF, AVIF), whatever the
        ``Content-Type`` says. Image URLs expire 15 days after the generation
        (``Generation.expires_at``): download promptly. Downloads share this client's
        connection pool but not its API concurrency limit (they go to the CDN), run
        ``download_concurrency`` at a time and never carry the API key.

        The images were paid for, so transient failures (5xx, 429, dropped or cut
        connections, and a body that is no image, such as an HTML page answered
        ``200``) are retried with the client's backoff until ``timeout`` runs out,
        whatever ``max_retries`` says.

        Args:
            generation_or_url: a `Generation`, one image URL, or a list of them.
            dest: the folder to write to; created if missing.
            max_size: the largest image accepted, in bytes.
            timeout: seconds each image may take from its first attempt, its retries
                and the attempt under way included; None: the client's
                ``RetryPolicy.timeout`` (600 s). 0 tries each image once (bounded by
                the HTTP timeouts only).

        Returns:
            The paths written, in the order of the URLs.

        Raises:
            DownloadError: an image is expired or missing (403/404/410), is larger
                than ``max_size``, or could still not be fetched (or was still no
                image) when ``timeout`` ran out. It holds ``generation_id``,
                ``saved`` and ``unsaved_urls`` to recover with.
        """
        from nanobanana._download import download  # noqa: PLC0415

        return await download(self, generation_or_url, dest, max_size=max_size, timeout=timeout)
