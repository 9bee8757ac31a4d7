"""One item of a batch, from its first request to its result.

An item generates in the batch's mode (or, resumed, polls a generation id an earlier
run recorded), then saves its images. Everything it learns that is worth money is in
the journal before the next step: the hint that a generation request is about to
leave (``sending``), then the generation's id (``submitted``, made durable before
anything waits on it), then the outcome. Failures become the item's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from nanobanana._batch._records import NOT_CHARGED, SENDING, SUBMITTED, Plan, PlanKind
from nanobanana._batch._values import BatchRequest, BatchResult, BatchStatus
from nanobanana._errors import (
    APITimeoutError,
    AuthenticationError,
    ContentSafetyError,
    GenerationFailedError,
    InsufficientCreditsError,
    JobTimeoutError,
    MissingAPIKeyError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    UnexpectedResponseError,
)
from nanobanana._watch import GENERATE_WATCH

if TYPE_CHECKING:
    from collections.abc import Callable

    from nanobanana._batch._journal import Journal
    from nanobanana._client import AsyncNanoBanana
    from nanobanana._jobs import Job, PollPolicy
    from nanobanana._models import Generation

__all__ = ["FATAL", "Item", "ItemStoppedError", "Settings", "run_item"]

#: Errors after which every later item would fail the same way: the batch stops
#: starting items (those under way finish) and raises the error after their results.
FATAL: tuple[type[NanoBananaError], ...] = (
    AuthenticationError,  # 401
    PermissionDeniedError,  # 403
    InsufficientCreditsError,  # 402
    MissingAPIKeyError,
)


class ItemStoppedError(Exception):
    """Internal: the batch stopped this item just as it was about to send a request.

    A cancellation requested while a task is already scheduled to run is delivered
    at its next checkpoint, which may be after the request went out; so a stopped
    item refuses to send, synchronously, right before the bytes would leave.
    """


@attrs.frozen(kw_only=True)
class Settings:
    """What every item of one batch shares."""

    client: AsyncNanoBanana
    mode: str
    defaults: dict[str, Any]
    download_dir: Path | None
    journal: Journal | None
    item_timeout: float | None
    poll_policy: PollPolicy | None
    #: Called with an error that must stop the batch (fatal, or the journal failing).
    stop: Callable[[BaseException], None]
    #: Called with the credits the server reported for a generation of this run.
    charged: Callable[[int], None]


@attrs.define(eq=False)
class Item:
    """An item under way, and what is known about it (also its `GenerateWatch`)."""

    index: int
    request: BatchRequest
    key: str | None
    plan: Plan
    settings: Settings
    scope: anyio.CancelScope = attrs.Factory(anyio.CancelScope)
    generation_id: str | None = None
    credits: int | None = None
    sent: bool = False  # a generation request may be at the server, no answer seen yet
    journal_says_sending: bool = False
    deadline: float | None = None
    stopped: bool = False  # cut by the batch stopping (not by its deadline)
    stop_when_known: bool = False  # a stop waits only for this item's id to be recorded

    def __attrs_post_init__(self) -> None:
        self.generation_id = self.plan.generation_id

    @property
    def waiting(self) -> bool:
        """Nothing of it is at the server: it can stop at once and run again later."""
        return not self.sent and self.generation_id is None

    # -- GenerateWatch: called by the client, in this item's task ---------------------

    def sending(self) -> None:
        """A generation request is about to leave: note it, and start the deadline."""
        if self.stopped:
            raise ItemStoppedError
        if not self.journal_says_sending:
            self.record(SENDING)  # first: if the disk fails, nothing is sent
            self.journal_says_sending = self.settings.journal is not None
        self.sent = True
        self.start_deadline()

    def not_charged(self) -> None:
        """That request was refused or never left (429, 503, 4xx): nothing was charged."""
        self.sent = False
        if self.journal_says_sending:
            # Else a run stopped while this item waits to send again (a busy server's
            # Retry-After) would leave it looking maybe charged.
            self.record(NOT_CHARGED)
            self.journal_says_sending = False

    # -------------------------------------------------------------------------------

    def start_deadline(self) -> None:
        """The item's ``item_timeout`` runs from its first request."""
        timeout = self.settings.item_timeout
        if timeout is not None and self.deadline is None:
            self.deadline = anyio.current_time() + timeout
            self.scope.deadline = min(self.scope.deadline, self.deadline)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - anyio.current_time())

    def record(self, status: str, **fields: Any) -> None:
        """Append a record about this item to the journal, if there is one."""
        journal = self.settings.journal
        if journal is not None:
            journal.write({"key": self.key, "index": self.index, "status": status, **fields})

    def result(self, status: BatchStatus = "completed", **fields: Any) -> BatchResult:
        """This item's `BatchResult`."""
        return BatchResult(
            index=self.index,
            prompt=self.request.prompt,
            status=status,
            key=self.key,
            generation_id=self.generation_id,
            credits_used=self.credits,
            **fields,
        )


async def run_item(item: Item) -> BatchResult | None:
    """Run ``item`` to its result; None when the batch stopped it first."""
    GENERATE_WATCH.set(item)  # this task's context only
    try:
        with item.scope:
            if item.plan.kind is PlanKind.RESUME:
                item.start_deadline()
            try:
                generation = await _generation(item)
                files = await _save(item, generation)
            except NanoBananaError as exc:
                return _failure(item, exc)
            return item.result(generation=generation, files=files)
    except OSError as exc:  # the journal could not be written: nothing else can be trusted
        item.settings.stop(exc)
        return None
    except ItemStoppedError:
        return None
    # The scope was cancelled: by the batch stopping, or by the item's deadline.
    if item.stopped:
        return None
    return _timed_out(item)


async def _generation(item: Item) -> Generation:
    if item.plan.kind is PlanKind.RESUME:
        assert item.generation_id is not None  # noqa: S101 - a resume plan has the id
        return await _wait(item, item.settings.client.job(item.generation_id))
    settings = item.settings
    client = settings.client
    prompt = item.request.prompt
    options = _options(item.request, settings.defaults)
    if settings.mode == "async":
        job = await client.submit(prompt, **options)
        await _known(item, job.id, job.credits_used)
        return await _wait(item, job)
    if settings.mode == "sync":
        try:
            generation = await client.generate(prompt, **options)
        except ContentSafetyError as exc:
            if exc.generation_id:
                await _known(item, exc.generation_id, exc.credits_used)
            raise
        await _known(item, generation.id, generation.credits_used)
        return generation
    result: Generation | None = None
    async with client.stream(prompt, **options) as events:
        async for event in events:
            if event.generation_id and item.generation_id is None:
                await _known(item, event.generation_id, None)
            if event.type == "complete":
                result = event.generation
    if result is None:  # pragma: no cover - the stream raises before ending so
        raise UnexpectedResponseError("The stream ended without a result.")
    if item.generation_id is None:
        await _known(item, result.id, result.credits_used)
    else:
        _credits(item, result.credits_used)
    return result


def _credits(item: Item, charged: int | None) -> None:
    if charged is not None and item.credits is None:
        item.credits = charged
        item.settings.charged(charged)


def _options(request: BatchRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value if (value := getattr(request, name)) is not None else defaults.get(name)
        for name in ("model", "aspect_ratio", "quantity", "reference_image_urls")
    }


async def _known(item: Item, generation_id: str, charged: int | None) -> None:
    """The generation's id is known: on disk before anything waits on it."""
    item.generation_id = generation_id
    item.sent = False
    _credits(item, charged)
    journal = item.settings.journal
    if journal is not None:
        item.record(SUBMITTED, generation_id=generation_id, credits_used=charged)
        item.journal_says_sending = False
        await journal.sync()
    if item.stop_when_known:
        item.scope.cancel()  # a stop waited for this: the next run polls it


async def _wait(item: Item, job: Job) -> Generation:
    return await job.wait(timeout=item.remaining(), poll_policy=item.settings.poll_policy)


async def _save(item: Item, generation: Generation) -> tuple[Path, ...]:
    directory = item.settings.download_dir
    if directory is None or not generation.image_urls:
        return ()
    return tuple(await item.settings.client.download(generation, directory))


def _failure(item: Item, exc: NanoBananaError) -> BatchResult:
    item.sent = False
    known = getattr(exc, "generation_id", None)
    if isinstance(known, str) and known and item.generation_id is None:
        item.generation_id = known
    if isinstance(exc, FATAL):
        item.settings.stop(exc)
    status: BatchStatus
    if isinstance(exc, (GenerationFailedError, ContentSafetyError)):
        status = "failed"
    elif isinstance(exc, NotFoundError) and item.generation_id is not None:
        status = "lost"
    elif isinstance(exc, JobTimeoutError):
        status = "timeout"
    elif getattr(exc, "may_have_been_charged", False) and item.generation_id is None:
        status = "maybe_charged"
    else:
        status = "error"
    return item.result(status, error=exc, files=getattr(exc, "saved", ()))


def _timed_out(item: Item) -> BatchResult:
    limit = f"item_timeout={item.settings.item_timeout:g} s"
    if item.generation_id is not None:
        error: NanoBananaError = JobTimeoutError(
            f"Item {item.index} did not finish within {limit}; generation "
            f"{item.generation_id} may still complete (a later run with the same journal "
            "picks it up).",
            generation_id=item.generation_id,
        )
        return item.result("timeout", error=error)
    if item.sent:
        error = APITimeoutError(
            f"Item {item.index}: no answer to its generation request within {limit}.",
            may_have_been_charged=True,
        )
        return item.result("maybe_charged", error=error)
    error = APITimeoutError(f"Item {item.index} did not start within {limit}.")  # pragma: no cover
    return item.result("error", error=error)  # pragma: no cover
