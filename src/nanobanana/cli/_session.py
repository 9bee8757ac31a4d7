"""One run of the command line: parsed options, output, the client, and what is in flight.

The session remembers which generations are running on the server so that Ctrl-C can
say how to pick them up again instead of losing what was paid for.
"""

from __future__ import annotations

import shlex
import tempfile
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nanobanana._client import AsyncNanoBanana
from nanobanana.cli._exit import UsageError
from nanobanana.cli._polling import PollCount, poll_schedule

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Iterator, Sequence

    from nanobanana.cli._output import Output

__all__ = ["SIMULATOR_DEMO", "Session", "check_download_dir", "without_api_key"]

# The embedded simulator of --simulate: slow enough that the progress bar is seen,
# and rich enough that a demo never runs out of credits.
SIMULATOR_DEMO: dict[str, Any] = {"generation_time": 2.0, "credits": 10_000}

_API_KEY_OPTION = "--api-key"


def check_download_dir(directory: str) -> None:
    """Make sure images can be saved in ``directory``, before anything is paid for.

    The folder is created if missing; it must then be a directory this process can
    write to, else a `UsageError` (exit 2) stops the command while nothing was sent.
    """
    path = Path(directory)
    where = f"--download-dir {directory}"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{where}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{where}: cannot create it ({exc.strerror or exc})") from None
    try:
        # A real write, not os.access: ACLs, read-only mounts and root all answer honestly.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{where}: cannot write there ({exc.strerror or exc})") from None


def without_api_key(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--api-key VALUE`` / ``--api-key=VALUE``, for printed commands.

    argparse also accepts unambiguous prefixes (``--api-k``), so those go too. The
    key is a secret; a command meant to be copied must not carry it.
    """
    kept: list[str] = []
    skip_next = False
    for word in argv:
        if skip_next:
            skip_next = False
            continue
        if word == "--":
            kept.append(word)
            skip_next = False
            continue
        name, equals, _ = word.partition("=")
        if len(name) > len("--") and _API_KEY_OPTION.startswith(name):
            skip_next = not equals
            continue
        kept.append(word)
    return kept


@attrs.define
class Session:
    """The state of one ``nanobanana`` invocation."""

    args: argparse.Namespace
    output: Output
    argv: list[str] = attrs.Factory(list)  # as given, for the command that resumes a batch
    pending: dict[str, None] = attrs.Factory(dict)  # generation ids still running
    downloading: dict[str, None] = attrs.Factory(dict)  # finished, images being saved
    anonymous_in_flight: int = 0  # generations sent whose id is not known yet
    resume_command: str | None = None  # batch: the command that picks up where it stopped
    resume_drops_key: bool = False  # --api-key was left out of resume_command

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

    def poll_schedule(self) -> PollCount | None:
        """This command's ``--poll-interval``/``--max-polls`` (see `poll_schedule`)."""
        return poll_schedule(
            getattr(self.args, "poll_interval", None), getattr(self.args, "max_polls", None)
        )

    def poll_command(self, generation_id: str, *, wait: bool = True) -> str:
        """The command that picks up ``generation_id``, with this command's download dir."""
        words = ["nanobanana", "poll", "--id", generation_id]
        if wait:
            words.append("--wait")
        directory = getattr(self.args, "download_dir", None)
        if directory:
            words += ["--download-dir", directory]
        return shlex.join(words)

    def set_resume_command(self) -> None:
        """Remember the command that re-runs this one (``batch``), without the API key."""
        words = without_api_key(self.argv)
        self.resume_command = shlex.join(["nanobanana", *words])
        self.resume_drops_key = len(words) != len(self.argv)

    def resume_hints(self, lead: str) -> list[str]:
        """``lead: <the command that re-runs this one>``, and a word on a left-out key."""
        if self.resume_command is None:
            return []
        hints = [f"{lead}: {self.resume_command}"]
        if self.resume_drops_key:
            hints.append(
                "(--api-key is left out of that command: add it again, or set NANOBANANA_API_KEY)"
            )
        return hints

    def interrupted_hints(self) -> list[str]:
        """What to tell the user after Ctrl-C so nothing paid for is lost."""
        hints: list[str] = []
        if self.resume_command is not None:
            hints += self.resume_hints("re-run to resume (finished items are skipped)")
        else:
            hints.extend(
                f"generation {generation_id} is still running; resume with: "
                f"{self.poll_command(generation_id)}"
                for generation_id in self.pending
            )
            hints.extend(
                f"generation {generation_id} completed, its images were not all saved; "
                f"save them with: {self.poll_command(generation_id, wait=False)}"
                for generation_id in self.downloading
            )
        if self.anonymous_in_flight and not self.pending:
            hints.append(
                "a generation request was in flight and may have been charged; "
                "`nanobanana credits` shows the balance"
            )
        if self.simulated and (self.pending or self.anonymous_in_flight or self.downloading):
            hints.append("(--simulate: the embedded simulator stopped with this command)")
        return hints

    @property
    def interrupted_id(self) -> str | None:
        """The one generation an interrupt leaves behind, for the ``--json`` document."""
        known = [*self.pending, *self.downloading]
        return known[0] if len(known) == 1 else None

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
        max_credits = getattr(self.args, "max_credits", None)
        if max_credits is not None:
            options["max_credits"] = max_credits
        redis_url = getattr(self.args, "redis", None)
        if redis_url is not None:
            options["governor"] = redis_url
        concurrency = getattr(self.args, "concurrency", None)  # batch --concurrency
        if concurrency is not None:
            options["max_concurrency"] = concurrency
        if not self.simulated:
            try:
                client = AsyncNanoBanana(
                    api_key=getattr(self.args, "api_key", None),
                    base_url=getattr(self.args, "base_url", None),
                    **options,
                )
            except (ValueError, ImportError) as error:  # a --base-url, key or --redis
                raise UsageError(str(error)) from None
            async with client:
                yield client
            return

        from nanobanana.testing import Simulator  # noqa: PLC0415 - only for --simulate

        async with Simulator(**SIMULATOR_DEMO) as sim:
            try:
                # trust_env=False: never through the environment's proxy to our own loopback.
                client = AsyncNanoBanana(
                    api_key=sim.api_key, base_url=sim.base_url, trust_env=False, **options
                )
            except (ValueError, ImportError) as error:  # a --redis the client cannot use
                raise UsageError(str(error)) from None
            async with client:
                yield client
