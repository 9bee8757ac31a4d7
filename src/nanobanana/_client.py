"""`AsyncNanoBanana`: the client. One instance owns (or borrows) one connection pool."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import httpx

from nanobanana._admission import GovernorStats, choose_governor
from nanobanana._clock import Clock, SystemClock
from nanobanana._config import DEFAULT_TIMEOUT, resolve_api_key, resolve_base_url
from nanobanana._errors import (
    ContentSafetyError,
    GenerationFailedError,
    NotFoundError,
    UnexpectedResponseError,
)
from nanobanana._http import AutoTransport, Requester
from nanobanana._jobs import Job, PollPolicy
from nanobanana._models import Generation, GenerationStatus, Model
from nanobanana._retry import RequestKind, RetryPolicy
from nanobanana._version import __version__

if TYPE_CHECKING:
    import os
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self

    from nanobanana._stream import GenerationStream

__all__ = ["AsyncNanoBanana"]


class _NotGiven:
    """Sentinel for "argument not passed", where None means something else."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()

DEFAULT_MAX_RETRIES = 3
# httpx's pool defaults keep only 20 idle connections: with more in flight, every
# request beyond 20 would open a new connection. Keep as many as we allow in flight.
DEFAULT_POOL_SIZE = 100


def _generate_body(
    prompt: str,
    *,
    mode: str,
    model: str | None,
    reference_image_urls: Sequence[str] | None,
    aspect_ratio: str | None,
    quantity: int | None,
) -> dict[str, Any]:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    body: dict[str, Any] = {"prompt": prompt, "mode": mode}
    if model is not None:
        if not isinstance(model, str) or not model:
            raise TypeError("model must be a non-empty str (a name from client.models())")
        body["selectedModel"] = model
    if reference_image_urls is not None:
        if isinstance(reference_image_urls, (str, bytes)):
            raise TypeError("reference_image_urls must be a list of URLs, not a single string")
        urls = list(reference_image_urls)
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"reference image URL must be an http(s) URL: {url!r}")
        if urls:
            body["referenceImageUrls"] = urls
    if aspect_ratio is not None:
        if not isinstance(aspect_ratio, str) or not aspect_ratio:
            raise TypeError("aspect_ratio must be a str such as '16:9'")
        body["aspectRatio"] = aspect_ratio
    if quantity is not None:
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise TypeError("quantity must be an int")
        if quantity < 1:
            raise ValueError("quantity must be at least 1 (the server caps the maximum)")
        body["quantity"] = quantity
    return body


def _data(body: Any, what: str) -> Any:
    if not isinstance(body, dict) or "data" not in body:
        raise UnexpectedResponseError(
            f"Unexpected response to {what}: no field 'data'.", field="data", body=body
        )
    return body["data"]


class AsyncNanoBanana:
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
            connect, because sync generations take 10-60 s.
        download_concurrency: at most this many image downloads at once (default 8;
            downloads do not count against the account's limit).
        max_retries: retries of a call that is safe to retry (default 3; see
            `RetryPolicy`).
        max_concurrency: at most this many API requests in flight. Default: learned
            from the server, starting at the documented account limit of 1.
        governor: who admits requests and async tasks. None: this process, unless
            ``$NANOBANANA_REDIS_URL`` is set; a ``redis://`` URL or a
            `nanobanana.fleet.RedisGovernor`: shared by every process and host using
            the same API key and base URL (see "Scaling out" in the docs).
        http_client: your own ``httpx.AsyncClient``; it is used as is and not closed.
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
        http_client: httpx.AsyncClient | None = None,
        governor: Any = None,
        retry_policy: RetryPolicy | None = None,
        poll_policy: PollPolicy | None = None,
        download_concurrency: int = 8,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._api_key = resolve_api_key(api_key)
        self._base_url = resolve_base_url(base_url)
        policy = retry_policy or RetryPolicy()
        if max_retries is not NOT_GIVEN:
            if isinstance(max_retries, bool) or not isinstance(max_retries, int):
                raise TypeError("max_retries must be an int")
            if max_retries < 0:
                raise ValueError("max_retries must be >= 0")
            policy = attrs.evolve(policy, attempts=max_retries + 1)
        elif retry_policy is None:
            policy = RetryPolicy(attempts=DEFAULT_MAX_RETRIES + 1)
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
        ):
            raise TypeError("max_concurrency must be an int or None")
        self.retry_policy = policy
        self.poll_policy = poll_policy or PollPolicy()
        self._clock: Clock = clock or SystemClock()
        self._rand = rng or random.Random()
        self._download_concurrency = download_concurrency

        if timeout is NOT_GIVEN:
            # Also for a borrowed http_client: httpx's own 5 s default would fail every
            # sync generation (10-60 s, sync-mode docs). Pass timeout= to choose.
            resolved_timeout: httpx.Timeout | None = DEFAULT_TIMEOUT
        elif timeout is None or isinstance(timeout, httpx.Timeout):
            resolved_timeout = timeout if timeout is not None else httpx.Timeout(None)
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            resolved_timeout = httpx.Timeout(float(timeout))
        else:
            raise TypeError("timeout must be a number, an httpx.Timeout or None")

        self._owns_http = http_client is None
        pool = max(DEFAULT_POOL_SIZE, max_concurrency or 0)
        if http_client is None:
            limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
            http_client = httpx.AsyncClient(
                transport=AutoTransport(limits=limits),
                timeout=resolved_timeout or DEFAULT_TIMEOUT,
                follow_redirects=False,
            )
        elif not isinstance(http_client, httpx.AsyncClient):
            raise TypeError("http_client must be an httpx.AsyncClient")
        self._http = http_client
        self.user_agent = f"nanobanana/{__version__} httpx/{httpx.__version__}"
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
        )
        self._closed = False

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
        """Whether `aclose` was called."""
        return self._closed

    def governor_stats(self) -> GovernorStats:
        """The concurrency governor's state: limit, active and waiting requests."""
        return self._governor.stats()

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "missing"
        return f"<AsyncNanoBanana base_url={self.base_url!r} api_key={key}>"

    async def aclose(self) -> None:
        """Close the connection pool (unless it was borrowed). Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._requester.closed = True
        try:
            await self._governor.aclose()
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
        data = _data(body, "GET /models")
        if not isinstance(data, list):
            raise UnexpectedResponseError(
                "Unexpected response to GET /models: 'data' is not a list.", field="data", body=body
            )
        return [Model.from_json(item) for item in data]

    async def credits(self) -> int:
        """The account's credit balance (``GET /credits``)."""
        body = await self._requester.call("GET", "/credits", kind=RequestKind.READ)
        data = _data(body, "GET /credits")
        value = _opt_int(data.get("credits") if isinstance(data, dict) else None)
        if value is None:
            raise UnexpectedResponseError(
                "Unexpected response to GET /credits: no numeric field 'credits'.",
                field="credits",
                body=body,
            )
        return value

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        reference_image_urls: Sequence[str] | None = None,
        aspect_ratio: str | None = None,
        quantity: int | None = None,
    ) -> Generation:
        """Generate images and wait for them (sync mode: 10-60 s).

        Pass ``reference_image_urls`` for image-to-image (each image beyond the first
        costs one more credit). Returns a completed `Generation`.

        Raises:
            ContentSafetyError: the safety check refused the result (credits spent).
            InternalServerError: a 500; the generation may have been charged and was
                not resent.
        """
        body = _generate_body(
            prompt,
            mode="sync",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        answer = await self._requester.call(
            "POST", "/generate", kind=RequestKind.GENERATE, json_body=body, holds=True
        )
        # A 200 is a refusal only when it says so: an answer without ``success`` but with
        # the images is a result (and one with neither is an unreadable, charged answer).
        if isinstance(answer, dict) and (answer.get("success") is False or answer.get("warning")):
            generation_id = answer.get("generationId")
            generation_id = generation_id if isinstance(generation_id, str) else None
            message = answer.get("message") or answer.get("error") or "Generation refused"
            if answer.get("warning"):
                raise ContentSafetyError(
                    f"{message} (generation {generation_id}); the credits were spent.",
                    generation_id=generation_id,
                    credits_used=_opt_int(answer.get("creditsUsed")),
                    remaining_credits=_opt_int(answer.get("remainingCredits")),
                )
            raise GenerationFailedError(str(message), generation_id=generation_id)
        try:
            return Generation.from_sync_json(answer, prompt=prompt, model=model)
        except UnexpectedResponseError as exc:
            # A 2xx: accepted, and so charged. Say so, as for a 500.
            raise UnexpectedResponseError(
                exc.message, field=exc.field, body=exc.body, may_have_been_charged=True
            ) from None

    def stream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        reference_image_urls: Sequence[str] | None = None,
        aspect_ratio: str | None = None,
        quantity: int | None = None,
        idle_timeout: float | None = 30.0,
        max_event_size: int = 1024 * 1024,
    ) -> GenerationStream:
        """Generate with live progress (stream mode): an async iterator of ProgressEvent.

        Use ``async for event in client.stream(...)`` or, to close it early
        deterministically, ``async with client.stream(...) as events:``. Show
        ``event.progress``: it never goes backwards (heartbeats report 0). The
        last event has ``type == "complete"`` and the result in ``event.generation``.

        A stream cut after an event carried the generation's id is finished by polling
        ``GET /generate?id=``; cut before that, it raises `APIConnectionError`
        (the generation may still be running, and may have been charged).

        Args:
            prompt: what to draw.
            model: a model name from `models`.
            reference_image_urls: images for image-to-image.
            aspect_ratio: e.g. ``"16:9"``.
            quantity: images to make (streaming models force 1).
            idle_timeout: seconds without a byte (not even the 15 s heartbeat) after
                which the stream counts as cut; None waits forever.
            max_event_size: the largest event accepted, in characters.

        Raises:
            GenerationFailedError: the server sent an ``error`` event.
        """
        from nanobanana._stream import GenerationStream  # noqa: PLC0415

        body = _generate_body(
            prompt,
            mode="stream",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        return GenerationStream(
            self, body, idle_timeout=idle_timeout, max_event_size=max_event_size
        )

    async def submit(
        self,
        prompt: str,
        *,
        model: str | None = None,
        reference_image_urls: Sequence[str] | None = None,
        aspect_ratio: str | None = None,
        quantity: int | None = None,
    ) -> Job:
        """Start a generation in async mode and return its `Job` at once.

        The server runs a limited number of async tasks (503 ``server_busy`` beyond,
        credits refunded: async-mode docs). The client learns that cap from the first
        503 and keeps at most that many of its own jobs unfinished: further
        ``submit()`` calls wait their turn, first come first served, until a poll sees
        one of the jobs finished (while they wait, the first of them polls the job due
        first). 503s from other users' load are waited out (`RetryPolicy.patience`).
        """
        body = _generate_body(
            prompt,
            mode="async",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        async with self._governor.reserve_task(self._poll_for_room) as task:
            answer = await self._requester.call(
                "POST", "/generate", kind=RequestKind.GENERATE, json_body=body, task=task
            )
            generation_id = answer.get("generationId") if isinstance(answer, dict) else None
            if not isinstance(generation_id, str) or not generation_id:
                raise UnexpectedResponseError(
                    "Unexpected response to POST /generate (async): no field 'generationId'.",
                    field="generationId",
                    body=answer,
                    may_have_been_charged=True,
                )
            await task.started(generation_id)
        return Job(
            generation_id,
            self,
            submitted_at=self._clock.monotonic(),
            credits_used=_opt_int(answer.get("creditsUsed")),
            remaining_credits=_opt_int(answer.get("remainingCredits")),
        )

    def job(self, generation_id: str) -> Job:
        """A `Job` for an id you already have (e.g. saved before a restart)."""
        _check_id(generation_id)
        return Job(generation_id, self)

    async def get_generation(self, generation_id: str) -> Generation:
        """A generation's current state (``GET /generate?id=``)."""
        return await self._get_generation(generation_id, deadline=None)

    async def _get_generation(self, generation_id: str, *, deadline: float | None) -> Generation:
        _check_id(generation_id)
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
        generation = Generation.from_json(_data(body, "GET /generate"))
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
    ) -> list[Path]:
        """Download a generation's images (or the given URLs) into the folder ``dest``.

        Files are written whole or not at all and named from the generation id and
        the image's index (``<id>-<index>.<ext>``), never from the server; the
        extension follows the bytes (PNG, JPEG, WebP, GIF, AVIF). Image URLs expire
        after 15 days: download promptly. Downloads share this client's connection
        pool but not its API concurrency limit (they go to the CDN), run
        ``download_concurrency`` at a time, never carry the API key, and retry
        transient failures (5xx, dropped connections) like API reads.

        Args:
            generation_or_url: a `Generation`, one image URL, or a list of them.
            dest: the folder to write to; created if missing.
            max_size: the largest image accepted, in bytes.

        Returns:
            The paths written, in the order of the URLs.

        Raises:
            DownloadError: an image is expired or missing (403/404/410), is not an
                image, is larger than ``max_size``, or could not be fetched.
        """
        from nanobanana._download import download  # noqa: PLC0415

        return await download(self, generation_or_url, dest, max_size=max_size)


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # json.loads reads 1e400 as inf and accepts NaN, which int() refuses.
    return int(value) if math.isfinite(value) else None


def _check_id(generation_id: str) -> None:
    if not isinstance(generation_id, str) or not generation_id.strip():
        raise ValueError("generation_id must be a non-empty str")
