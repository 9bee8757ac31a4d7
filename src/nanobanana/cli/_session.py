"""One run of the command line: parsed options, output, the client, and what is in flight.

The session remembers which generations are running on the server so that Ctrl-C can
say how to pick them up again instead of losing what was paid for.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana._client import AsyncNanoBanana
from nanobanana._jobs import PollPolicy
from nanobanana.cli._exit import UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Iterator

    from nanobanana.cli._output import Output

__all__ = [
    "DEFAULT_MAX_POLLS",
    "DEFAULT_POLL_INTERVAL",
    "SIMULATOR_DEMO",
    "Session",
    "poll_schedule",
]

# The async-mode docs: poll every 3 s, at most 60 times (about 3 minutes).
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_MAX_POLLS = 60

# The embedded simulator of --simulate: slow enough that the progress bar is seen,
# and rich enough that a demo never runs out of credits.
SIMULATOR_DEMO: dict[str, Any] = {"generation_time": 2.0, "credits": 10_000}


def poll_schedule(
    interval: float | None, max_polls: int | None
) -> tuple[PollPolicy | None, float | None]:
    """The service CLI's ``--poll-interval``/``--max-polls`` as a policy and a timeout.

    Neither given: the client's own schedule (first poll after 2 s, then every 3 s,
    for up to 10 minutes). Either given: a poll every ``interval`` seconds, the first
    one ``interval`` after submission, for ``interval x max_polls`` seconds at most.
    """
    if interval is None and max_polls is None:
        return None, None
    every = DEFAULT_POLL_INTERVAL if interval is None else interval
    count = DEFAULT_MAX_POLLS if max_polls is None else max_polls
    timeout = every * count
    policy = PollPolicy(
        first_delay=every, max_interval=every, growth=1.0, jitter=0.0, timeout=timeout
    )
    return policy, timeout


@attrs.define
class Session:
    """The state of one ``nanobanana`` invocation."""

    args: argparse.Namespace
    output: Output
    argv: list[str] = attrs.Factory(list)  # as given, for the command that resumes a batch
    pending: dict[str, None] = attrs.Factory(dict)  # generation ids still running
    anonymous_in_flight: int = 0  # generations sent whose id is not known yet
    resume_command: str | None = None  # batch: the command that picks up where it stopped

    @property
    def simulated(self) -> bool:
        """Whether the command runs against the embedded simulator (``--simulate``)."""
        return bool(getattr(self.args, "simulate", False))

    def track(self, generation_id: str) -> None:
        """Remember a generation that runs on the server until it is seen finished."""
        self.pending[generation_id] = None

    def untrack(self, generation_id: str) -> None:
        """Forget a generation: it finished, or its failure was already reported."""
        self.pending.pop(generation_id, None)

    @contextmanager
    def anonymous(self) -> Iterator[None]:
        """Count a generation request whose id is not known yet while it is in flight.

        Only cancellation (Ctrl-C) leaves it counted, so the interrupt can warn that a
        generation may have been charged.
        """
        self.anonymous_in_flight += 1
        try:
            yield
        except Exception:
            self.anonymous_in_flight -= 1
            raise
        self.anonymous_in_flight -= 1

    def poll_schedule(self) -> tuple[PollPolicy | None, float | None]:
        """This command's polling policy and wait timeout (see `poll_schedule`)."""
        return poll_schedule(
            getattr(self.args, "poll_interval", None), getattr(self.args, "max_polls", None)
        )

    def interrupted_hints(self) -> list[str]:
        """What to tell the user after Ctrl-C so nothing paid for is lost."""
        hints: list[str] = []
        if self.resume_command is not None:
            hints.append(f"re-run to resume (finished items are skipped): {self.resume_command}")
        else:
            hints.extend(
                f"generation {generation_id} is still running; resume with: "
                f"nanobanana poll --id {generation_id} --wait"
                for generation_id in self.pending
            )
        if self.anonymous_in_flight and not self.pending:
            hints.append(
                "a generation request was in flight and may have been charged; "
                "`nanobanana credits` shows the balance"
            )
        if self.simulated and (self.pending or self.anonymous_in_flight):
            hints.append("(--simulate: the embedded simulator stopped with this command)")
        return hints

    @asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncNanoBanana]:
        """The client for this command: the real service, or ``--simulate``'s simulator."""
        options: dict[str, Any] = {}
        timeout = getattr(self.args, "timeout", None)
        if timeout is not None:
            options["timeout"] = timeout
        max_retries = getattr(self.args, "max_retries", None)
        if max_retries is not None:
            options["max_retries"] = max_retries
        if not self.simulated:
            try:
                client = AsyncNanoBanana(
                    api_key=getattr(self.args, "api_key", None),
                    base_url=getattr(self.args, "base_url", None),
                    **options,
                )
            except ValueError as error:  # a --base-url or key the client cannot use
                raise UsageError(str(error)) from None
            async with client:
                yield client
            return

        from nanobanana.testing import Simulator  # noqa: PLC0415 - only for --simulate

        async with (
            Simulator(**SIMULATOR_DEMO) as sim,
            AsyncNanoBanana(api_key=sim.api_key, base_url=sim.base_url, **options) as client,
        ):
            yield client
