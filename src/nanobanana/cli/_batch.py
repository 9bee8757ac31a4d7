"""``nanobanana batch FILE``: a shell over ``client.batch()``.

The library does the work (the window of items under way, the journal, resuming,
downloads, deadlines); this module reads the file, shows progress, prints results
and turns them into an exit code. With ``--output``, the file is the batch's journal:
re-running the same command skips finished items and resumes polling the submitted
ones, so neither a crash nor Ctrl-C loses anything paid for. The results are then in
that file, and stdout stays quiet, so the progress bar is not buried under them.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana._batch._engine import DEFAULT_ITEM_TIMEOUT
from nanobanana._batch._item import FATAL
from nanobanana._batch._keys import Keys
from nanobanana._batch._records import outcome_record
from nanobanana._jobs import PollPolicy
from nanobanana.cli._exit import ExitCode, exit_code_for
from nanobanana.cli._input import BatchInput
from nanobanana.cli._output import error_json, message_for
from nanobanana.cli._polling import poll_schedule
from nanobanana.cli._progress import RichReporter, finish, reporter
from nanobanana.cli._session import check_download_dir

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator

    from nanobanana._batch._engine import Batch
    from nanobanana._batch._values import BatchRequest, BatchResult
    from nanobanana._client import AsyncNanoBanana
    from nanobanana.cli._session import Session

__all__ = ["add_batch_arguments", "cmd_batch", "prepare"]

# Time to save an item's images after its wait, when --max-polls sets the wait.
_SAVE_ALLOWANCE = 300.0


def add_batch_arguments(
    parser: argparse.ArgumentParser,
    *,
    add_generation_options: Callable[..., None],
    add_poll_options: Callable[[argparse.ArgumentParser], None],
    positive_int: Callable[[str], int],
    positive_float: Callable[[str], float],
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
        help="write the results here (JSON lines) instead of stdout; it is the batch's "
        "journal: re-running with the same file skips items already done and resumes "
        "those submitted",
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
        "--item-timeout",
        metavar="S",
        type=positive_float,
        help=f"seconds one item may take, from its first request to its images saved "
        f"(default {DEFAULT_ITEM_TIMEOUT:g}; a re-run picks up an item that ran out)",
    )
    parser.add_argument(
        "--concurrency",
        metavar="N",
        type=positive_int,
        help="at most N API requests in flight (default: the account's limit, learned "
        "from the server); items under way follow from it",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="generate again the items that failed, were lost or may have been charged "
        "in an earlier run (costs credits)",
    )


def prepare(session: Session) -> None:
    """Read and check the input before any request: a bad file costs nothing."""
    args = session.args
    if args.download_dir is not None:
        check_download_dir(args.download_dir)  # before anything is paid for
    args.batch_input = BatchInput.open(args.file)
    if args.output is not None:
        session.set_resume_command()


def _batch_options(args: Any) -> dict[str, Any]:
    """``client.batch()``'s keyword arguments from the command line."""
    options: dict[str, Any] = {
        "mode": args.mode,
        "download_dir": args.download_dir,
        "journal": args.output,
        "retry_failed": args.retry_failed,
        "model": args.model,
        "aspect_ratio": args.aspect_ratio,
        "quantity": args.quantity,
        "reference_image_urls": args.reference_image_urls or None,
    }
    timeout = args.item_timeout
    schedule = poll_schedule(args.poll_interval, args.max_polls)
    if schedule is not None:
        # The service CLI's schedule: a poll every S seconds, N of them at most.
        interval = schedule.interval
        budget = interval * schedule.max_polls
        options["poll_policy"] = PollPolicy(
            first_delay=interval, growth=1.0, max_interval=interval, jitter=0.0, timeout=budget
        )
        if timeout is None and budget + _SAVE_ALLOWANCE > DEFAULT_ITEM_TIMEOUT:
            timeout = budget + _SAVE_ALLOWANCE
    if timeout is not None:
        options["item_timeout"] = timeout
    return options


def _line(result: BatchResult, line: int) -> dict[str, Any]:
    """A result as one JSON line on stdout: its journal record, its line, the exit code."""
    error = result.error
    return {
        **outcome_record(result),
        "line": line,
        "error": error_json(error, generation_id=result.generation_id) if error else None,
    }


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Display:
    """Done, failed and running items, the rate, the ETA and the credits spent."""

    def __init__(self, batch: Batch, total: int) -> None:
        self.batch = batch
        self.total = total
        self.started = time.monotonic()

    def __call__(self) -> str:
        stats = self.batch.stats()
        ran = stats.done - stats.from_journal  # replayed items take no time
        rate = _rate(ran, time.monotonic() - self.started)
        left = self.total - stats.done
        parts = [f"{stats.failed} failed"] if stats.failed else []
        parts.append(f"{stats.running} running")
        if ran:
            parts.append(f"{rate:.1f}/s")
            if left and rate:
                parts.append(f"ETA {_clock(left / rate)}")
        parts.append(f"{stats.credits_spent} credits")
        return " · ".join(parts)


async def cmd_batch(session: Session, client: AsyncNanoBanana) -> int:
    """Run the batch; results on stdout (or in ``--output``), progress on stderr."""
    args = session.args
    source: BatchInput = args.batch_input
    output = session.output
    lines: dict[int, int] = {}  # item index -> line number, for items under way

    def requests() -> Iterator[BatchRequest]:
        keys = Keys()  # the keys the journal would give, on stdout too
        for index, (number, request) in enumerate(source.requests()):
            lines[index] = number
            yield attrs.evolve(request, key=keys.key(request, index=index))

    batch = client.batch(requests(), **_batch_options(args))
    display = _Display(batch, source.total)
    progress = reporter(output, "count", title="batch", total=source.total, live=display)
    counts: Counter[str] = Counter()
    codes: list[int] = []
    fatal: BaseException | None = None
    try:
        # The journal is opened (and locked) first: a bad --output says so before any bar.
        async with batch as results:
            with progress:
                try:
                    async for result in results:
                        line = lines.pop(result.index, 0)
                        if args.output is None:
                            output.emit_line(_line(result, line))
                        counts[result.status] += 1
                        if result.error is not None:
                            codes.append(int(exit_code_for(result.error)))
                        message = f"line {line}: {result.status}"
                        if result.from_journal:
                            message += " (in an earlier run)"
                        elif result.error is not None:
                            message += f": {message_for(result.error)}"
                            if isinstance(progress, RichReporter):  # plain lines say it anyway
                                progress.note(message)
                        progress.update(batch.stats().done, message=message, detail=display())
                except FATAL as exc:
                    fatal = exc
                finish(progress)
    finally:
        source.close()
        # What an interrupt leaves behind, for the hints of `nanobanana` on Ctrl-C.
        session.pending.update(dict.fromkeys(batch.unfinished_ids()))
        session.anonymous_in_flight = batch.stats().awaiting_id
    return _summary(session, batch, counts, codes, fatal)


def _summary(
    session: Session,
    batch: Batch,
    counts: Counter[str],
    codes: list[int],
    fatal: BaseException | None,
) -> int:
    output = session.output
    total = session.args.batch_input.total
    stats = batch.stats()
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    if stats.done < total:
        parts.append(f"{total - stats.done} not started")
    spent = f"; {stats.credits_spent} credits" if stats.credits_spent else ""
    output.info(f"batch: {total} items: {', '.join(parts)}{spent}")
    if fatal is not None:
        hint = "stopped starting new items; fix it and re-run"
        hints = session.resume_hints(hint) or [hint]
        return int(output.fail(fatal, hints=hints))
    if session.args.output:
        output.info(f"results: {session.args.output}")
    if counts["maybe_charged"]:
        output.info(
            f"{counts['maybe_charged']} items may have been charged, and no answer came "
            "back (`nanobanana credits` shows the balance)"
        )
    paid = counts["failed"] + counts["lost"] + counts["maybe_charged"]
    if paid:
        output.info(f"--retry-failed generates the {paid} failed items again (costs credits)")
    failures = [code for code in codes if code]
    if failures:
        output.stderr.write(
            f"error: {len(failures)} of {total} items did not complete "
            f"(see the 'error' field of their lines)\n"
        )
        return min(failures)
    return int(ExitCode.OK)
