"""``--poll-interval`` and ``--max-polls`` as the service's own CLI means them.

``--max-polls N`` is a count of polls, not a time limit: the wait sends exactly N
``GET /generate?id=`` (fewer if the generation finishes first) and then gives up
(exit 5). The library's `Job.wait` takes a time limit, and polls a resumed job
(``nanobanana poll --id``) at once, so ``interval x N`` seconds would fit N + 1
polls; the CLI therefore polls with ``job.refresh()`` in its own loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import attrs

from nanobanana._errors import GenerationFailedError, JobTimeoutError, NanoBananaError
from nanobanana._jobs import PASSING_POLL_ERRORS
from nanobanana._models import GenerationStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nanobanana._jobs import Job
    from nanobanana._models import Generation

__all__ = [
    "DEFAULT_MAX_POLLS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_WAIT",
    "PollCount",
    "poll_schedule",
    "wait_for_job",
]

# The async-mode docs: poll every 3 s, at most 60 times (about 3 minutes).
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_MAX_POLLS = 60
# Without either option, the client's own schedule waits this long (PollPolicy.timeout).
DEFAULT_WAIT = 600.0


@attrs.frozen(kw_only=True)
class PollCount:
    """Exactly ``max_polls`` polls, ``interval`` seconds apart."""

    interval: float
    max_polls: int


def poll_schedule(interval: float | None, max_polls: int | None) -> PollCount | None:
    """The service CLI's ``--poll-interval``/``--max-polls``, or None for the client's own.

    Neither given: the client's own schedule (first poll after 2 s, then every 3 s,
    for up to 10 minutes). Either given: ``max_polls`` polls (default 60), one every
    ``interval`` seconds (default 3).
    """
    if interval is None and max_polls is None:
        return None
    return PollCount(
        interval=DEFAULT_POLL_INTERVAL if interval is None else interval,
        max_polls=DEFAULT_MAX_POLLS if max_polls is None else max_polls,
    )


async def wait_for_job(
    job: Job,
    schedule: PollCount | None,
    *,
    resumed: bool,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Generation:
    """Poll ``job`` until it completes, per ``schedule`` (None: the client's `Job.wait`).

    A job just submitted is first polled ``interval`` after submission; a ``resumed``
    one (an id from an earlier run) at once.

    Raises:
        GenerationFailedError: the generation failed.
        JobTimeoutError: ``max_polls`` polls said it is still processing.
    """
    if schedule is None:
        return await job.wait()
    delay = 0.0 if resumed else schedule.interval
    failed: NanoBananaError | None = None
    for _ in range(schedule.max_polls):
        await sleep(delay)
        delay = schedule.interval
        try:
            generation = await job.refresh()
        except PASSING_POLL_ERRORS as exc:
            # A poll that failed for a passing reason (its retries spent) uses up one
            # of the polls, as in `Job.wait`; the next waits at least its Retry-After.
            failed = exc
            delay = max(delay, getattr(exc, "retry_after", None) or 0.0)
            continue
        failed = None
        if generation.status is GenerationStatus.COMPLETED:
            return generation
        if generation.status is GenerationStatus.FAILED:
            reason = generation.error_message or "no reason given"
            raise GenerationFailedError(
                f"Generation {job.id} failed: {reason}", generation_id=job.id
            )
    polls = "poll" if schedule.max_polls == 1 else "polls"
    state = "was still processing" if failed is None else "could not be polled"
    raise JobTimeoutError(
        f"Generation {job.id} {state} after {schedule.max_polls} {polls}; it may still complete.",
        generation_id=job.id,
    ) from failed
