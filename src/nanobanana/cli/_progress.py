"""Progress on stderr: a live rich bar on a terminal, plain lines when piped, or nothing.

rich is the optional ``nanobanana[cli]`` extra and is imported here only, lazily, so
``import nanobanana`` never pays for it and the CLI still works without it (plain
lines instead of a bar).

A bar never moves backwards: stream heartbeats report progress 0 after real progress,
so callers pass ``ProgressEvent.progress`` (which never goes backwards) and the bar
keeps the highest value it was given besides.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from rich.progress import Progress, TaskID

    from nanobanana.cli._output import Output

__all__ = ["Kind", "Reporter", "reporter"]

Kind = Literal["percent", "wait", "count"]
"""``percent``: a stream (0-100); ``wait``: a wait of unknown length (elapsed, polls);
``count``: items of a batch (done of total)."""


class Reporter:
    """Shows one task's progress; this base class shows nothing (``--quiet``).

    ``live``, when given, returns the detail text afresh: a live bar shows it at every
    refresh (a batch's rate and ETA move while nothing finishes); plain lines show the
    ``detail`` of each update instead.
    """

    def __init__(
        self,
        kind: Kind,
        *,
        total: int | None = None,
        title: str = "",
        live: Callable[[], str] | None = None,
    ) -> None:
        self.kind = kind
        self.total = total
        self.title = title
        self.live = live
        self.completed = 0.0
        self.message = ""
        self.detail = ""

    def update(
        self,
        completed: float | None = None,
        *,
        message: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Move to ``completed`` (never backwards) and/or change the texts shown."""
        changed = False
        if completed is not None and completed > self.completed:
            self.completed = completed
            changed = True
        if message is not None and message != self.message:
            self.message = message
            changed = True
        if detail is not None and detail != self.detail:
            self.detail = detail
            changed = True
        if changed:
            self._show()

    def _show(self) -> None:
        """Render the current state (subclasses)."""

    def note(self, message: str) -> None:
        """A line for the person watching, printed above a live bar."""

    def start(self) -> None:
        """Begin showing progress."""

    def stop(self) -> None:
        """Stop showing progress; a live bar leaves its last frame on screen."""

    def __enter__(self) -> Reporter:  # noqa: PYI034 - Self needs Python 3.11
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PlainReporter(Reporter):
    """One line on stderr per change: for logs, CI and pipes."""

    def __init__(
        self,
        output: Output,
        kind: Kind,
        *,
        total: int | None,
        title: str,
        live: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(kind, total=total, title=title, live=live)
        self._output = output
        self._started = time.monotonic()

    def note(self, message: str) -> None:
        """A line on stderr."""
        self._output.info(message)

    def start(self) -> None:
        """Say what is starting."""
        if self.title:
            self._output.info(self.title)
        self._started = time.monotonic()

    def _show(self) -> None:
        if self.kind == "percent":
            line = f"[{int(self.completed):3d}%] {self.message}"
        elif self.kind == "count":
            line = f"[{int(self.completed)}/{self.total}] {self.message}"
        else:
            elapsed = time.monotonic() - self._started
            line = f"[{elapsed:5.1f}s] {self.message}"
        if self.detail:
            line = f"{line} ({self.detail})"
        self._output.info(line.rstrip())


class RichReporter(Reporter):
    """A live rich progress bar on the terminal behind stderr."""

    def __init__(
        self,
        output: Output,
        kind: Kind,
        *,
        total: int | None,
        title: str,
        live: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(kind, total=total, title=title, live=live)
        self._output = output
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self) -> None:
        """Draw the bar and keep refreshing it (elapsed time moves on its own)."""
        from rich.console import Console  # noqa: PLC0415 - optional, and slow to import
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text  # noqa: PLC0415

        live = self.live

        class LiveColumn(ProgressColumn):
            """The detail text, asked for afresh at every refresh."""

            def render(self, task: object) -> Text:  # noqa: ARG002 - rich's signature
                return Text(live() if live is not None else "")

        console = Console(file=self._output.stderr, stderr=True)
        middle = {
            "percent": (BarColumn(), TaskProgressColumn()),
            "wait": (BarColumn(),),  # total None: an indeterminate, pulsing bar
            "count": (BarColumn(), MofNCompleteColumn()),
        }[self.kind]
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.description}"),
            *middle,
            TimeElapsedColumn(),
            LiveColumn() if live is not None else TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
            refresh_per_second=10,
            # Results printed while the bar is live go above it when stdout is the same
            # terminal; redirected to a file, they must stay out of the terminal.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=True,
        )
        total = 100 if self.kind == "percent" else self.total
        self._task = self._progress.add_task(self.title, total=total, detail="")
        self._progress.start()

    def _show(self) -> None:
        if self._progress is None or self._task is None:
            return
        description = self.message or self.title
        if self.kind == "count":
            description = self.title
        self._progress.update(
            self._task,
            completed=self.completed,
            description=description,
            detail=self.detail,
        )

    def note(self, message: str) -> None:
        """A line above the bar."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            self._output.info(message)

    def finish(self, message: str | None = None) -> None:
        """Show the task as done (a full bar and a tick)."""
        if self._progress is None or self._task is None:
            return
        total = 100 if self.kind == "percent" else (self.total or 1)
        if self.kind == "wait":
            self._progress.update(self._task, total=1, completed=1)
        else:
            self._progress.update(self._task, total=total, completed=max(self.completed, total))
        if message is not None:
            self._progress.update(self._task, description=message)

    def stop(self) -> None:
        """Stop the live display and leave the cursor on a fresh line."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def reporter(
    output: Output,
    kind: Kind,
    *,
    title: str = "",
    total: int | None = None,
    live: Callable[[], str] | None = None,
) -> Reporter:
    """The reporter that suits where stderr goes: bar, plain lines, or nothing."""
    if output.quiet:
        return Reporter(kind, total=total, title=title, live=live)
    if output.stderr_is_terminal:
        try:
            import rich.progress  # noqa: F401, PLC0415 - is the extra installed?
        except ImportError:
            pass
        else:
            return RichReporter(output, kind, total=total, title=title, live=live)
    return PlainReporter(output, kind, total=total, title=title, live=live)


def finish(progress: Reporter, message: str | None = None) -> None:
    """Mark ``progress`` done, when it is a bar (plain lines need no last word)."""
    if isinstance(progress, RichReporter):
        progress.finish(message)
