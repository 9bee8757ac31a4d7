"""Jobs: a generation submitted in async mode, and waiting for it with a polling policy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import attrs

from nanobanana._errors import (
    APIConnectionError,
    GenerationFailedError,
    InternalServerError,
    JobTimeoutError,
    NanoBananaError,
    RateLimitError,
    ServerBusyError,
)
from nanobanana._http import OutOfTimeError
from nanobanana._logs import emit
from nanobanana._models import Generation, GenerationStatus
from nanobanana._retry import none_or_at_least_zero

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator

    from nanobanana._client import AsyncNanoBanana

__all__ = ["PASSING_POLL_ERRORS", "Job", "PollPolicy"]

#: Failures of a poll that pass: a wait polls again rather than ending.
PASSING_POLL_ERRORS = (APIConnectionError, InternalServerError, RateLimitError, ServerBusyError)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When ``job.wait()`` polls ``GET /generate?id=``.

    The async-mode docs advise a first poll after 5 s, then one every 3 s, at most 60
    polls. The default polls first after 2 s (a quick job is seen 3 s sooner), then
    every 3 s: never more than one poll ahead of the docs' schedule. Jitter only ever
    lengthens a delay, so a fleet of waiters spreads out without polling faster.

    Attributes:
        first_delay: seconds from submission to the first poll.
        growth: factor applied to the delay after each poll.
        max_interval: the longest delay between polls.
        jitter: up to this fraction is added at random to each delay.
        timeout: how long ``wait()`` waits when called without ``timeout`` (None: forever).
        grace: how long the poll made at the deadline may take (the poll of
            ``wait(timeout=0)`` too); a poll that starts earlier may run until the
            deadline or for this long, whichever is later.
    """

    first_delay: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))
    growth: float = attrs.field(default=1.5, validator=attrs.validators.ge(1.0))
    # Zero would poll the server in a tight loop.
    max_interval: float = attrs.field(default=3.0, validator=attrs.validators.gt(0.0))
    jitter: float = attrs.field(default=0.1, validator=attrs.validators.ge(0.0))
    timeout: float | None = attrs.field(default=600.0, validator=none_or_at_least_zero)
    grace: float = attrs.field(default=2.0, validator=attrs.validators.gt(0.0))

    def delays(self, rand: random.Random, *, elapsed: float = 0.0) -> Iterator[float]:
        """The delays before each poll; ``elapsed`` is time already spent since submitting."""
        delay = self.first_delay
        yield max(0.0, delay - elapsed) * (1.0 + rand.uniform(0.0, self.jitter))
        while True:
            delay = min(self.max_interval, delay * self.growth)
            yield delay * (1.0 + rand.uniform(0.0, self.jitter))


@attrs.define(eq=False)
class Job:
    """A generation running on the server in async mode.

    Get one from ``await client.submit(...)``, or ``client.job(generation_id)`` for an
    id saved earlier (for example before a restart):

    ```python
    job = await client.submit("a banana in space")
    generation = await job.wait(timeout=300)
    ```
    """

    id: str
    _client: AsyncNanoBanana = attrs.field(repr=False)
    _submitted_at: float | None = attrs.field(default=None, repr=False)
    credits_used: int | None = None
    remaining_credits: int | None = None

    async def refresh(self) -> Generation:
        """Fetch the generation's current state once."""
        return await self._client.get_generation(self.id)

    async def wait(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API
        poll_policy: PollPolicy | None = None,
    ) -> Generation:
        """Poll until the generation completes, and return it.

        A poll that fails for a passing reason (429, 503, a 5xx, a dropped connection or
        a timeout) does not end the wait: the request is retried as any read is, and
        when those retries run out the wait polls again on its schedule, no sooner
        than the server's ``Retry-After``. The wait always polls at least once, and
        ends within ``timeout`` plus the policy's ``grace``, even when the server hangs.

        Args:
            timeout: seconds to wait at most; None uses the poll policy's (600 s by
                default: the docs warn against waiting forever). 0 polls once.
            poll_policy: overrides the client's polling policy for this wait.

        Raises:
            GenerationFailedError: the generation failed (credits are not refunded).
            JobTimeoutError: ``timeout`` passed first; the job may still complete, and
                ``client.job(error.generation_id).wait()`` picks it up again.
        """
        client = self._client
        policy = poll_policy or client.poll_policy
        clock = client._clock
        limit = timeout if timeout is not None else policy.timeout
        start = clock.monotonic()
        deadline = start + limit if limit is not None else None
        elapsed = (
            start - self._submitted_at if self._submitted_at is not None else policy.first_delay
        )
        polled = False
        not_before = 0.0  # the last failed poll's Retry-After
        last_error: NanoBananaError | None = None
        for scheduled in policy.delays(client._rand, elapsed=elapsed):
            delay = max(scheduled, not_before)
            bound: float | None = None
            if deadline is not None:
                remaining = deadline - clock.monotonic()
                if remaining <= 0 and polled:
                    break
                delay = min(delay, max(remaining, 0.0))
                bound = max(remaining - delay, policy.grace)
            await clock.sleep(delay)
            polled = True
            try:
                with anyio.move_on_after(bound) as scope:
                    generation = await client._get_generation(self.id, deadline=deadline)
            except OutOfTimeError as exc:
                raise self._timeout_error(limit) from exc.error
            except PASSING_POLL_ERRORS as exc:
                if client._closed:
                    raise
                last_error = exc
                not_before = getattr(exc, "retry_after", None) or 0.0
                # No status: the poll's last answer has its own record, and counting
                # records by status must count each answer once.
                emit(
                    logging.DEBUG,
                    "poll of %s failed (%s); polling again",
                    self.id,
                    type(exc).__name__,
                    event="poll_failed",
                    method="GET",
                    path="/generate",
                    error=type(exc).__name__,
                    may_have_been_charged=False,
                    generation_id=self.id,
                )
                continue
            if scope.cancelled_caught:
                break
            not_before = 0.0
            if generation.status is GenerationStatus.COMPLETED:
                return generation
            if generation.status is GenerationStatus.FAILED:
                raise GenerationFailedError(
                    f"Generation {self.id} failed: {generation.error_message or 'no reason given'}",
                    generation_id=self.id,
                )
        raise self._timeout_error(limit) from last_error

    def _timeout_error(self, limit: float | None) -> JobTimeoutError:
        waited = "the time allowed" if limit is None else f"{limit:g} s"
        return JobTimeoutError(
            f"Generation {self.id} did not finish within {waited}; it may still complete. "
            f"Resume with client.job({self.id!r}).wait().",
            generation_id=self.id,
        )
