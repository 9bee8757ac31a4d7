"""The generation calls of `AsyncNanoBanana`: sync, stream, async and batches.

One ``POST /generate`` in each of the protocol's three modes (sync: the images at
once; stream: events, then the images; async: a job to poll), a batch of them, and
the spend cap's estimate that runs before each is sent. The client in
`nanobanana._client` builds and owns what they use (the requester, the governor,
the credits ledger); they live here so that the client's module stays about the
client: its construction, lifecycle, options and the reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, cast

from nanobanana._calls import generate_body, opt_int, read_async_answer, read_sync_answer
from nanobanana._config import NOT_GIVEN
from nanobanana._errors import NanoBananaError, note_request
from nanobanana._jobs import Job
from nanobanana._retry import RequestKind

if TYPE_CHECKING:
    import os

    from nanobanana._admission import Governor
    from nanobanana._batch._engine import Batch
    from nanobanana._batch._values import BatchRequest
    from nanobanana._budget import Catalogue, Charge, Ledger
    from nanobanana._client import AsyncNanoBanana
    from nanobanana._clock import Clock
    from nanobanana._http import Requester
    from nanobanana._jobs import PollPolicy
    from nanobanana._models import Generation, Model
    from nanobanana._stream import GenerationStream

__all__ = ["GenerationCalls"]


class GenerationCalls:
    """`AsyncNanoBanana`'s generation calls (a mixin: the state is the client's)."""

    # Set by AsyncNanoBanana.__init__ (and shared with its with_options() copies).
    _catalogue: Catalogue
    _ledger: Ledger
    _requester: Requester
    _clock: Clock
    _governor: Governor

    if TYPE_CHECKING:  # AsyncNanoBanana's own calls, used here

        async def models(self) -> list[Model]: ...

        async def _poll_for_room(self, generation_id: str) -> None: ...

    def _client(self) -> AsyncNanoBanana:
        return cast("AsyncNanoBanana", self)

    async def estimate_credits(
        self,
        *,
        model: str | None = None,
        quantity: int | None = None,
        reference_image_urls: Sequence[str] | None = None,
    ) -> int:
        """The most a generation with these options may cost, as a spend cap counts.

        The model's ``creditsCost`` from `models` (fetched once per client and kept;
        without ``model``, the documented default ``nano-banana`` if the catalogue lists
        it, else the dearest model listed), plus one credit per reference image beyond
        the first, times ``quantity`` (not clamped to the docs' default limit of 4: an
        account may be allowed more; a stream makes one). Sends nothing but, once,
        ``GET /models``.

        Raises:
            UnknownModelError: ``model`` is not in the catalogue, or the catalogue is
                empty (a `ValueError`).
        """
        # The body's own checks, with a stand-in prompt: the estimate reads the rest.
        body = generate_body(
            "estimate",
            mode="sync",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=None,
            quantity=quantity,
        )
        return await self._catalogue.cost_of(body, self.models)

    async def _charge(self, body: dict[str, Any]) -> Charge:
        """Reserve what ``body`` will cost, under every cap that applies (`_budget`)."""
        capped = self._ledger.capped
        estimate = await self._catalogue.cost_of(body, self.models) if capped else None
        return self._ledger.charge(estimate)

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
                not resent (the error holds the request's ``prompt``, ``model``,
                ``requested_at`` and any ``generation_id`` seen, to reconcile it).
            BudgetExceededError: the estimated cost would pass ``max_credits``;
                nothing was sent.
        """
        body = generate_body(
            prompt,
            mode="sync",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        requested_at = self._now()
        # Reserved before the wait for a request slot: over the cap, it raises at once.
        charge = await self._charge(body)
        try:
            answer = await self._post_generate(body, requested_at, charge, holds=True)
        finally:
            charge.finish()
        return read_sync_answer(answer, prompt=prompt, model=model, requested_at=requested_at)

    def _now(self) -> datetime:
        """The client clock's wall time, as a UTC datetime."""
        return datetime.fromtimestamp(self._clock.time(), tz=timezone.utc)

    async def _post_generate(
        self, body: dict[str, Any], requested_at: datetime, charge: Charge, **admission: Any
    ) -> Any:
        """``POST /generate`` (sync or async mode); an error says what was asked, and when.

        ``charge`` (from `_charge`, taken before any wait) learns what the request did
        and what the answer says was charged; the caller finishes it.
        """
        try:
            with charge.sending():
                answer = await self._requester.call(
                    "POST", "/generate", kind=RequestKind.GENERATE, json_body=body, **admission
                )
            charge.answered(answer)
        except NanoBananaError as exc:
            model = body.get("selectedModel")
            note_request(
                exc,
                requested_at=requested_at,
                prompt=body["prompt"],
                model=model if isinstance(model, str) else None,
                mode=body["mode"],
            )
            raise
        return answer

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
            BudgetExceededError: (when iteration starts) the estimated cost would pass
                ``max_credits``; nothing was sent.
        """
        from nanobanana._stream import GenerationStream  # noqa: PLC0415

        body = generate_body(
            prompt,
            mode="stream",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        return GenerationStream(
            self._client(), body, idle_timeout=idle_timeout, max_event_size=max_event_size
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

        Raises `BudgetExceededError` at once, sending nothing and waiting for no room,
        if its estimated cost would pass ``max_credits``.
        """
        body = generate_body(
            prompt,
            mode="async",
            model=model,
            reference_image_urls=reference_image_urls,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
        )
        requested_at = self._now()
        # Reserved before the wait for room for a task (and for a request slot): over
        # the cap, it raises at once; cancelled or failed while waiting, it is released.
        charge = await self._charge(body)
        try:
            async with self._governor.reserve_task(self._poll_for_room) as task:
                answer = await self._post_generate(body, requested_at, charge, task=task)
                generation_id = read_async_answer(
                    answer, prompt=prompt, model=model, requested_at=requested_at
                )
                await task.started(generation_id)
        finally:
            charge.finish()
        return Job(
            generation_id,
            self._client(),
            submitted_at=self._clock.monotonic(),
            credits_used=opt_int(answer.get("creditsUsed")),
            remaining_credits=opt_int(answer.get("remainingCredits")),
        )

    def batch(
        self,
        prompts_or_requests: Iterable[str | BatchRequest] | AsyncIterable[str | BatchRequest],
        *,
        mode: Literal["sync", "stream", "async"] = "async",
        download_dir: str | os.PathLike[str] | None = None,
        journal: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        item_timeout: float | None = NOT_GIVEN,
        poll_policy: PollPolicy | None = None,
        model: str | None = None,
        aspect_ratio: str | None = None,
        quantity: int | None = None,
        reference_image_urls: Sequence[str] | None = None,
    ) -> Batch:
        """Generate many prompts: an async iterator of `BatchResult`, in completion order.

        ```python
        async with client.batch(prompts, download_dir="images", journal="run.jsonl") as results:
            async for result in results:
                print(result.index, result.status, result.files)
        ```

        The input is read lazily, a window of items at a time: enough to keep the
        concurrency governor busy, which decides what is in flight, as for any call.
        Images download as items finish. One item's failure is that item's ``error``.
        With ``journal``, every generation id is on disk before anything waits on it:
        running the batch again with the same journal (after Ctrl-C, a crash or
        ``kill -9``) polls and downloads what was paid for instead of paying again.
        See [Batches](batches.md) and `Batch`.

        Args:
            prompts_or_requests: prompts and `BatchRequest` values (iterable or async).
            mode: ``"async"`` (the resumable mode), ``"sync"`` or ``"stream"``.
            download_dir: save every item's images in this folder (checked first).
            journal: a JSON-lines file that makes the batch resumable.
            retry_failed: generate again items an earlier run with this journal ended
                as ``failed``, ``lost`` or ``maybe_charged`` (costs credits).
            item_timeout: seconds one item may take from its first request to its last
                image saved (default 15 minutes; None: only the client's own limits).
            poll_policy: how async-mode items poll (default: the client's).
            model: default for items that do not set it; as are the options below.
            aspect_ratio: e.g. ``"16:9"``.
            quantity: images per item.
            reference_image_urls: images for image-to-image.
        """
        from nanobanana._batch._engine import DEFAULT_ITEM_TIMEOUT, Batch  # noqa: PLC0415

        return Batch(
            self._client(),
            prompts_or_requests,
            mode=mode,
            download_dir=download_dir,
            journal=journal,
            retry_failed=retry_failed,
            item_timeout=DEFAULT_ITEM_TIMEOUT if item_timeout is NOT_GIVEN else item_timeout,
            poll_policy=poll_policy,
            model=model,
            aspect_ratio=aspect_ratio,
            quantity=quantity,
            reference_image_urls=reference_image_urls,
        )
