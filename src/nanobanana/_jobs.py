"""Jobs: a generation submitted in async mode, and waiting for it with a polling policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from nanobanana._errors import GenerationFailedError, JobTimeoutError
from nanobanana._http import OutOfTimeError
from nanobanana._models import Generation, GenerationStatus

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator

    from nanobanana._client import AsyncNanoBanana

__all__ = ["Job", "PollPolicy"]


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
    """

    first_delay: float = 2.0
    growth: float = 1.5
    max_interval: float = 3.0
    jitter: float = 0.1
    timeout: float | None = 600.0

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
        self, *, timeout: float | None = None, poll_policy: PollPolicy | None = None
    ) -> Generation:
        """Poll until the generation completes, and return it.

        Args:
            timeout: seconds to wait at most; None uses the poll policy's (600 s by
                default: the docs warn against waiting forever).
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
        for delay in policy.delays(client._rand, elapsed=elapsed):
            if deadline is not None:
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    break
                delay = min(delay, remaining)  # noqa: PLW2901
            await clock.sleep(delay)
            try:
                generation = await client._get_generation(self.id, deadline=deadline)
            except OutOfTimeError as exc:
                raise self._timeout_error(limit) from exc.error
            if generation.status is GenerationStatus.COMPLETED:
                return generation
            if generation.status is GenerationStatus.FAILED:
                raise GenerationFailedError(
                    f"Generation {self.id} failed: {generation.error_message or 'no reason given'}",
                    generation_id=self.id,
                )
        raise self._timeout_error(limit)

    def _timeout_error(self, limit: float | None) -> JobTimeoutError:
        waited = "the time allowed" if limit is None else f"{limit:g} s"
        return JobTimeoutError(
            f"Generation {self.id} did not finish within {waited}; it may still complete. "
            f"Resume with client.job({self.id!r}).wait().",
            generation_id=self.id,
        )
