"""What the command line writes: JSON documents on stdout, messages on stderr.

stdout carries results only (one JSON document, or JSON lines for ``batch``) so it
can be piped into ``jq`` or read by an agent; everything meant for a person goes to
stderr.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from nanobanana._budget import count_credits
from nanobanana._config import API_KEY_ENV_VARS
from nanobanana._errors import (
    CHARGE_WARNING,
    BudgetExceededError,
    DownloadError,
    JobTimeoutError,
    MissingAPIKeyError,
    UnknownModelError,
)
from nanobanana.cli._exit import ExitCode, exit_code_for

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from nanobanana._jobs import Job
    from nanobanana._models import Generation, Model

__all__ = [
    "MIN_SECRET_LENGTH",
    "Output",
    "error_json",
    "generation_json",
    "job_json",
    "message_for",
    "model_json",
    "one_line",
]


# Real keys are far longer (``nb_`` and a few dozen characters); this only keeps a
# typo such as ``--api-key a`` from turning every ``a`` of the output into ``***``.
MIN_SECRET_LENGTH = 8


def generation_json(generation: Generation, *, files: Sequence[Path] = ()) -> dict[str, Any]:
    """A generation as the CLI prints it (snake_case, like the Python values)."""
    return {
        "id": generation.id,
        "status": str(generation.status),
        "image_urls": list(generation.image_urls),
        "files": [str(path) for path in files],
        "prompt": generation.prompt,
        "model": generation.model,
        "credits_used": generation.credits_used,
        "remaining_credits": generation.remaining_credits,
        "created_at": generation.created_at.isoformat() if generation.created_at else None,
        # When the image URLs stop working (`Generation.expires_at`): download before it.
        "expires_at": generation.expires_at.isoformat() if generation.expires_at else None,
        "error_message": generation.error_message,
    }


def job_json(job: Job, *, prompt: str, model: str | None) -> dict[str, Any]:
    """A just-submitted async generation, in the same shape as a generation."""
    return {
        "id": job.id,
        "status": "processing",
        "image_urls": [],
        "files": [],
        "prompt": prompt,
        "model": model,
        "credits_used": job.credits_used,
        "remaining_credits": job.remaining_credits,
        "created_at": None,
        "expires_at": None,  # known once a poll says when it was created
        "error_message": None,
    }


def model_json(model: Model) -> dict[str, Any]:
    """A catalogue entry as the CLI prints it."""
    return {
        "name": model.name,
        "display_name": model.display_name,
        "credits_cost": model.credits_cost,
        "supports_image_input": model.supports_image_input,
        "supports_aspect_ratio": model.supports_aspect_ratio,
        "requires_pro": model.requires_pro,
    }


def one_line(text: str) -> str:
    """Collapse a message to a single line: an error is always one line on stderr."""
    return " ".join(text.split())


# The library's advice names Python calls; the CLI names its own commands instead.
_PYTHON_RESUME = re.compile(r"client\.job\(['\"]([^'\"]+)['\"]\)\.wait\(\)")


def _cli_charge_warning(generation_id: str | None) -> str:
    where = "check `nanobanana credits`"
    if generation_id:
        where += f" and `{shlex.join(['nanobanana', 'poll', '--id', generation_id])}`"
    return f"The generation may have been charged; it was not resent: {where} before trying again."


def message_for(error: BaseException, *, generation_id: str | None = None) -> str:
    """The one-line message the CLI shows for an error.

    The library's messages speak Python (``client.job(...).wait()``, ``credits()``);
    where they do, the CLI says it in its own words and gives the command instead.
    ``generation_id`` is the id the command knows, when the error does not carry one.
    """
    known = getattr(error, "generation_id", None) or generation_id
    if isinstance(error, JobTimeoutError):
        return (
            f"generation {error.generation_id} did not finish within the wait; "
            "it may still complete"
        )
    if isinstance(error, MissingAPIKeyError):
        first, *others = API_KEY_ENV_VARS
        return (
            f"no API key: pass --api-key KEY or set {first} ({' or '.join(others)} are "
            "read too); or try the command without one, with --simulate"
        )
    if isinstance(error, BudgetExceededError):
        return (
            f"this generation would cost an estimated {count_credits(error.needed)}, but only "
            f"{error.remaining} remain of --max-credits {error.max_credits}; nothing was sent"
        )
    if isinstance(error, UnknownModelError):
        return (
            f"unknown model {error.model!r}: `nanobanana models` lists "
            f"{', '.join(error.known) or 'none'}; nothing was sent"
        )
    text = one_line(str(error))
    if CHARGE_WARNING in text:
        text = text.replace(CHARGE_WARNING, _cli_charge_warning(known))
    text = _PYTHON_RESUME.sub(
        lambda match: f"`{shlex.join(['nanobanana', 'poll', '--id', match[1], '--wait'])}`", text
    )
    return text or type(error).__name__


def error_json(error: BaseException, *, generation_id: str | None = None) -> dict[str, Any]:
    """An error as data: its type, message, exit code and generation id when known.

    ``generation_id`` is the id the command knows, when the error does not carry one
    (a failed download of a finished generation, a cut stream).
    """
    known = getattr(error, "generation_id", None) or generation_id
    document: dict[str, Any] = {
        "type": type(error).__name__,
        "message": message_for(error, generation_id=known),
        "exit_code": int(exit_code_for(error)),
        "generation_id": known if isinstance(known, str) else None,
    }
    if getattr(error, "may_have_been_charged", False):
        document["may_have_been_charged"] = True  # a re-run may pay for it again
    status_code = getattr(error, "status_code", None)
    if isinstance(status_code, int) and not isinstance(error, DownloadError):
        document["status_code"] = status_code
    return document


@attrs.define
class Output:
    """The two streams of the CLI, and the user's choices about them.

    Attributes:
        json_mode: ``--json``: compact JSON even on a terminal, and an error
            document on stdout when a command fails.
        quiet: ``--quiet``: nothing on stderr but the final ``error: ...`` line.
        secrets: strings that must never be printed (the API key); add them
            with `add_secret`.
    """

    json_mode: bool = False
    quiet: bool = False
    secrets: list[str] = attrs.Factory(list)
    _stdout: TextIO | None = None
    _stderr: TextIO | None = None

    # Looked up at each write, not kept: while a rich bar is live, sys.stdout and
    # sys.stderr are rich's proxies, which print above the bar instead of through it.
    @property
    def stdout(self) -> TextIO:
        """Where results go."""
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        """Where messages and progress go."""
        return self._stderr or sys.stderr

    @property
    def stderr_is_terminal(self) -> bool:
        """Whether a person is watching stderr (live progress bars make sense)."""
        return _isatty(self.stderr)

    def add_secret(self, value: str) -> None:
        """Never print ``value`` (a key from ``--api-key`` or the environment).

        The client strips the key, so the stripped value is what could be printed. A
        value shorter than `MIN_SECRET_LENGTH` cannot be a real key, and replacing it
        everywhere would mangle the output (a key ``a`` would take every ``a`` with it).
        """
        value = value.strip()
        if len(value) >= MIN_SECRET_LENGTH and value not in self.secrets:
            self.secrets.append(value)

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced; belt and braces, the client never leaks."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def emit(self, document: Any) -> None:
        """Write the command's one JSON document to stdout."""
        pretty = _isatty(self.stdout) and not self.json_mode
        text = json.dumps(document, indent=2 if pretty else None, ensure_ascii=False)
        self.stdout.write(self.redact(text) + "\n")
        self.stdout.flush()

    def emit_line(self, document: Any) -> None:
        """Write one JSON line to stdout (``batch``)."""
        self.stdout.write(self.redact(json.dumps(document, ensure_ascii=False)) + "\n")
        self.stdout.flush()

    def info(self, message: str) -> None:
        """A message for a person, on stderr, unless ``--quiet``."""
        if not self.quiet:
            self.stderr.write(self.redact(message) + "\n")
            self.stderr.flush()

    def lines(self, messages: Iterable[str]) -> None:
        """Several messages for a person."""
        for message in messages:
            self.info(message)

    def fail(
        self,
        error: BaseException,
        *,
        hints: Sequence[str] = (),
        document: bool = True,
        generation_id: str | None = None,
    ) -> ExitCode:
        """Report an expected failure in one line (plus hints), and return its exit code.

        With ``--json`` an error document goes to stdout too, unless ``document`` is
        false because the command already printed its one document. ``generation_id``
        is the id the command knows, when the error does not carry one.
        """
        code = exit_code_for(error)
        self.error_lines(message_for(error, generation_id=generation_id), hints)
        if self.json_mode and document:
            self.emit({"error": error_json(error, generation_id=generation_id)})
        return code

    def error_lines(self, message: str, hints: Sequence[str] = ()) -> None:
        """The ``error: ...`` line and its hints on stderr (shown even with ``--quiet``)."""
        self.stderr.write(self.redact(f"error: {one_line(message)}") + "\n")
        for hint in hints:
            self.stderr.write(self.redact(hint) + "\n")
        self.stderr.flush()

    def interrupted(self, hints: Sequence[str], *, generation_id: str | None) -> ExitCode:
        """Report Ctrl-C: what is still running, and with ``--json`` an error document."""
        self.stderr.write("interrupted\n")
        for hint in hints:
            self.stderr.write(self.redact(hint) + "\n")
        self.stderr.flush()
        if self.json_mode:
            error = {
                "type": "Interrupted",
                "message": "interrupted (Ctrl-C)",
                "exit_code": int(ExitCode.INTERRUPTED),
                "generation_id": generation_id,
            }
            if hints:
                error["hints"] = list(hints)
            self.emit({"error": error})
        return ExitCode.INTERRUPTED

    def usage_error(self, message: str) -> ExitCode:
        """Report a usage error found after parsing (bad file, bad value)."""
        self.stderr.write(self.redact(f"error: {one_line(message)}") + "\n")
        self.stderr.flush()
        if self.json_mode:
            self.emit(
                {
                    "error": {
                        "type": "UsageError",
                        "message": one_line(message),
                        "exit_code": int(ExitCode.USAGE),
                        "generation_id": None,
                    }
                }
            )
        return ExitCode.USAGE


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced by something file-like
        return False
