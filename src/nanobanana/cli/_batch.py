"""``nanobanana batch FILE``: many prompts at once, through one client, resumably.

All items share one client, so its concurrency governor keeps the account's limit
on requests in flight while up to ``--concurrency`` items are under way. With
``--output``, every step worth keeping is on disk before the next one starts (see
``_journal``): re-running the same command skips finished items and resumes polling
the submitted ones, so neither a crash nor Ctrl-C loses anything paid for.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from nanobanana._errors import (
    AuthenticationError,
    ContentSafetyError,
    GenerationFailedError,
    InsufficientCreditsError,
    JobTimeoutError,
    MissingAPIKeyError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerBusyError,
    UnexpectedResponseError,
)
from nanobanana.cli._exit import ExitCode, SaveError
from nanobanana.cli._journal import (
    COMPLETED,
    FAILED,
    LOST,
    InputError,
    Item,
    Journal,
    parse_items,
    read_journal,
)
from nanobanana.cli._output import error_json
from nanobanana.cli._polling import DEFAULT_WAIT, wait_for_job
from nanobanana.cli._progress import Reporter, RichReporter, finish, reporter
from nanobanana.cli._session import check_download_dir

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from nanobanana._client import AsyncNanoBanana
    from nanobanana._jobs import Job
    from nanobanana._models import Generation
    from nanobanana.cli._polling import PollCount
    from nanobanana.cli._session import Session

__all__ = ["BusyRetry", "add_batch_arguments", "cmd_batch", "prepare"]

DEFAULT_CONCURRENCY = 8

# Errors after which every other item would fail the same way: stop starting new ones.
_FATAL = (AuthenticationError, PermissionDeniedError, MissingAPIKeyError, InsufficientCreditsError)

# Refusals that charged nothing, so sending the item again is free: 429 (the account's
# limit) and 503 (the async queue is full; "consumed credits are automatically
# refunded": async-mode docs). The client retries them a few times (~3 s); a batch
# that fans out past the server's cap needs to keep trying for longer.
_REFUSED_FREE = (ServerBusyError, RateLimitError)


@attrs.frozen(kw_only=True)
class BusyRetry:
    """When ``batch`` sends an item again after a 429 or 503 (nothing was charged).

    ``Retry-After`` when the server gave one, else full-jitter exponential backoff
    from ``initial`` up to ``max_wait``; never past the item's wait budget.
    """

    initial: float = 0.5
    max_wait: float = 10.0

    def delay(self, tries: int, retry_after: float | None, rand: random.Random) -> float:
        """Seconds to wait before sending again, after ``tries`` refusals."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return rand.uniform(0.0, min(self.max_wait, self.initial * 2 ** (tries - 1)))


def add_batch_arguments(
    parser: argparse.ArgumentParser,
    *,
    add_generation_options: Callable[..., None],
    add_poll_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The options of ``nanobanana batch``."""
    parser.add_argument(
        "file",
        metavar="FILE",
        help="one prompt per line, or JSON lines with per-item options: prompt, key, "
        "model, aspect_ratio, reference_image_urls, quantity ('-' reads stdin)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="append the results here as JSON lines; re-running with the same file skips "
        "items already done and resumes those submitted",
    )
    parser.add_argument("--download-dir", metavar="DIR", help="save every item's images here")
    parser.add_argument(
        "--mode",
        choices=("sync", "stream", "async"),
        default="async",
        help="how each item is generated (default: async, which a re-run can resume "
        "from the moment it was submitted)",
    )
    add_generation_options(parser, item_defaults=True)
    add_poll_options(parser)
    parser.add_argument(
        "--concurrency",
        metavar="N",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"items under way at once (default {DEFAULT_CONCURRENCY}); the client "
        "still keeps the account's limit on requests in flight",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run items whose generation failed in an earlier run again (costs credits)",
    )


def prepare(session: Session) -> None:
    """Read and check the input before any request: a bad file costs nothing."""
    args = session.args
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if args.download_dir is not None:
        check_download_dir(args.download_dir)  # before anything is paid for
    if args.file == "-":
        args.batch_items = parse_items(sys.stdin.read().splitlines(), name="stdin")
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        args.batch_items = parse_items(text.splitlines(), name=args.file)
    if args.output is not None:
        session.set_resume_command()


@attrs.define
class _Attempt:
    """One item's run: the generation id as soon as it is known."""

    item: Item
    generation_id: str | None = None
    streamed: bool = False  # a stream event arrived: the request was accepted


@attrs.define
class _Batch:
    session: Session
    client: AsyncNanoBanana
    journal: Journal
    progress: Reporter
    total: int
    schedule: PollCount | None
    done: int = 0
    counts: Counter[str] = attrs.Factory(Counter)
    codes: list[int] = attrs.Factory(list)
    fatal: NanoBananaError | None = None
    not_started: int = 0
    busy_retry: BusyRetry = attrs.Factory(BusyRetry)
    rand: random.Random = attrs.Factory(random.Random)
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    def options(self, item: Item) -> dict[str, Any]:
        args = self.session.args
        urls = item.reference_image_urls
        if urls is None and args.reference_image_urls:
            urls = tuple(args.reference_image_urls)
        return {
            "model": item.model or args.model,
            "aspect_ratio": item.aspect_ratio or args.aspect_ratio,
            "reference_image_urls": urls,
            "quantity": item.quantity or args.quantity,
        }

    def record(
        self,
        item: Item,
        status: str,
        *,
        generation: Generation | None = None,
        generation_id: str | None = None,
        files: list[Path] | None = None,
        error: BaseException | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        known = generation.id if generation else generation_id
        document = error_json(error, generation_id=known) if error is not None else None
        if document is not None and message is not None:
            document["message"] = message
        return {
            "key": item.key,
            "line": item.line,
            "prompt": item.prompt,
            "status": status,
            "generation_id": known,
            "image_urls": list(generation.image_urls) if generation else [],
            "files": [str(path) for path in files or ()],
            "credits_used": generation.credits_used if generation else None,
            "error": document,
        }

    def finished(self, record: dict[str, Any], *, earlier: bool = False) -> None:
        """An item's outcome: on disk (unless it came from there), on stdout, on the bar."""
        if not earlier:
            self.journal.write(record)
        if record.get("generation_id"):
            self.session.untrack(record["generation_id"])  # settled, whatever happened
        self.session.output.emit_line(record)
        self.done += 1
        status = record["status"]
        self.counts[status] += 1
        error = record.get("error") or {}
        if isinstance(error, dict) and isinstance(error.get("exit_code"), int):
            self.codes.append(error["exit_code"])
        bad = sum(n for s, n in self.counts.items() if s != COMPLETED)
        message = f"{record['key']}: {status}"
        if earlier:
            message = f"{message} (in an earlier run)"
        elif error:
            message = f"{message}: {error.get('message')}"
            if isinstance(self.progress, RichReporter):  # plain lines already say it
                self.progress.note(f"line {record['line']}: {message}")
        self.progress.update(
            self.done, message=message, detail=f"{bad} not completed" if bad else ""
        )

    async def run(
        self, item: Item, previous: dict[str, Any] | None, limiter: anyio.Semaphore
    ) -> None:
        async with limiter:
            if self.fatal is not None:
                self.not_started += 1
                return
            attempt = _Attempt(item)
            resume_id = previous.get("generation_id") if previous else None
            try:
                if isinstance(resume_id, str) and resume_id:
                    attempt.generation_id = resume_id
                    try:
                        generation = await self.wait(attempt, resumed=True)
                    except NotFoundError as exc:
                        self.lost(attempt, resume_id, exc)
                        return
                else:
                    generation = await self.generate(attempt)
                files = await self.download(generation)
            except OSError as exc:
                # The folder changed under us (it was checked first): the generation is
                # done and paid for; its line keeps the id, so a re-run only downloads.
                error = SaveError(
                    f"cannot save the images in {self.session.args.download_dir}: "
                    f"{exc.strerror or exc}"
                )
                known = attempt.generation_id
                self.finished(self.record(item, "error", generation_id=known, error=error))
            except (GenerationFailedError, ContentSafetyError) as exc:
                known = exc.generation_id or attempt.generation_id
                self.finished(self.record(item, FAILED, generation_id=known, error=exc))
            except JobTimeoutError as exc:
                known = exc.generation_id
                self.finished(self.record(item, "timeout", generation_id=known, error=exc))
            except NanoBananaError as exc:
                known = attempt.generation_id
                self.finished(self.record(item, "error", generation_id=known, error=exc))
                if isinstance(exc, _FATAL) and self.fatal is None:
                    self.fatal = exc
            else:
                self.finished(self.record(item, COMPLETED, generation=generation, files=files))

    def lost(self, attempt: _Attempt, generation_id: str, exc: NotFoundError) -> None:
        """A recorded id the server no longer knows (404): say so; --retry-failed redoes it."""
        message = (
            f"generation {generation_id} is no longer known to the server (404); "
            "--retry-failed generates this item again (costs credits)"
        )
        self.finished(
            self.record(attempt.item, LOST, generation_id=generation_id, error=exc, message=message)
        )

    async def generate(self, attempt: _Attempt) -> Generation:
        """Generate one item; sent again while the server refuses it for free (429, 503)."""
        deadline = time.monotonic() + (self.session.wait_budget or DEFAULT_WAIT)
        tries = 0
        while True:
            try:
                return await self.generate_once(attempt)
            except _REFUSED_FREE as exc:  # noqa: PERF203 - a retry loop: the except is the point
                if attempt.generation_id is not None or attempt.streamed:
                    raise  # refused after it was accepted (a poll): not a free refusal
                tries += 1
                delay = self.busy_retry.delay(tries, exc.retry_after, self.rand)
                if time.monotonic() + delay > deadline:
                    raise
                await self.sleep(delay)

    async def generate_once(self, attempt: _Attempt) -> Generation:
        """Generate one item in the batch's mode; its id is journaled once known."""
        item = attempt.item
        mode = self.session.args.mode
        options = self.options(item)
        if mode == "sync":
            with self.session.anonymous():
                generation = await self.client.generate(item.prompt, **options)
            attempt.generation_id = generation.id
            return generation
        if mode == "async":
            job = await self.client.submit(item.prompt, **options)
            self.submitted(attempt, job.id)
            return await self.wait(attempt, job)
        generation_or_none: Generation | None = None
        with self.session.anonymous():
            async with self.client.stream(item.prompt, **options) as events:
                async for event in events:
                    attempt.streamed = True
                    if event.generation_id and attempt.generation_id is None:
                        self.submitted(attempt, event.generation_id)
                    if event.type == "complete":
                        generation_or_none = event.generation
        if attempt.generation_id is not None:
            self.session.untrack(attempt.generation_id)
        if generation_or_none is None:
            raise UnexpectedResponseError("The stream ended without a result.")
        attempt.generation_id = generation_or_none.id
        return generation_or_none

    def submitted(self, attempt: _Attempt, generation_id: str) -> None:
        """Record a generation id the moment it is known: a re-run polls, not pays."""
        attempt.generation_id = generation_id
        self.session.track(generation_id)
        self.journal.write(self.record(attempt.item, "submitted", generation_id=generation_id))

    async def wait(
        self, attempt: _Attempt, job: Job | None = None, *, resumed: bool = False
    ) -> Generation:
        """Poll the attempt's generation until it completes or fails."""
        assert attempt.generation_id is not None  # noqa: S101 - set before any wait
        job = job or self.client.job(attempt.generation_id)
        self.session.track(job.id)
        try:
            generation = await wait_for_job(job, self.schedule, resumed=resumed)
        except NanoBananaError:
            self.session.untrack(job.id)  # settled: its line says what happened
            raise
        # Only a cancelled wait (Ctrl-C) leaves it tracked, so the interrupt names it.
        self.session.untrack(job.id)
        return generation

    async def download(self, generation: Generation) -> list[Path]:
        """Save the images when ``--download-dir`` was given."""
        directory = self.session.args.download_dir
        if directory is None or not generation.image_urls:
            return []
        return await self.client.download(generation, directory)


def _is_done(
    record: dict[str, Any] | None, *, retry_failed: bool, download_dir: str | None
) -> bool:
    if record is None:
        return False
    status = record.get("status")
    if status in (FAILED, LOST):
        return not retry_failed
    if status != COMPLETED:
        return False
    if download_dir is None:
        return True
    files = record.get("files") or []
    if record.get("image_urls") and not files:
        return False  # finished before --download-dir was asked for: download now
    return all(Path(str(path)).is_file() for path in files)


async def cmd_batch(session: Session, client: AsyncNanoBanana) -> int:
    """Run every item not already done; one JSON line per item on stdout."""
    args = session.args
    items: list[Item] = args.batch_items
    earlier = read_journal(args.output) if args.output else {}
    journal = Journal(args.output)
    progress = reporter(session.output, "count", title="batch", total=len(items))
    batch = _Batch(
        session=session,
        client=client,
        journal=journal,
        progress=progress,
        total=len(items),
        schedule=session.poll_schedule(),
    )
    try:
        with progress:
            todo: list[tuple[Item, dict[str, Any] | None]] = []
            for item in items:
                record = earlier.get(item.key)
                if _is_done(record, retry_failed=args.retry_failed, download_dir=args.download_dir):
                    assert record is not None  # noqa: S101 - _is_done said so
                    batch.finished(record, earlier=True)
                elif record is not None and record.get("status") in (FAILED, LOST):
                    todo.append((item, None))  # --retry-failed: a new generation
                else:
                    todo.append((item, record))  # with a generation id: resume polling
            limiter = anyio.Semaphore(args.concurrency)
            async with anyio.create_task_group() as group:
                for item, record in todo:
                    group.start_soon(batch.run, item, record, limiter)
            finish(progress)
    finally:
        journal.close()
    return _summary(session, batch)


def _summary(session: Session, batch: _Batch) -> int:
    output = session.output
    parts = [f"{n} {status}" for status, n in sorted(batch.counts.items())]
    if batch.not_started:
        parts.append(f"{batch.not_started} not started")
    output.info(f"batch: {batch.total} items: {', '.join(parts) or 'nothing to do'}")
    if batch.fatal is not None:
        hints = session.resume_hints("stopped starting new items; fix it and re-run")
        hints = hints or ["stopped starting new items; fix it and re-run"]
        code = output.fail(batch.fatal, hints=hints)
        return int(code)
    if session.args.output:
        output.info(f"results: {session.args.output}")
    codes = [code for code in batch.codes if code]
    if codes:
        output.stderr.write(
            f"error: {len(codes)} of {batch.total} items did not complete "
            f"(see the 'error' field of their lines)\n"
        )
        return min(codes)
    return int(ExitCode.OK)
