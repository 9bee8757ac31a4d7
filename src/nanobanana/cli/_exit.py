"""Exit codes of the command line, and which error maps to which.

Scripts and agents branch on these, so each kind of failure has its own code and
the table below is the single place that decides it.
"""

from __future__ import annotations

import enum

from nanobanana._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ContentSafetyError,
    DownloadError,
    GenerationFailedError,
    InsufficientCreditsError,
    JobTimeoutError,
    MissingAPIKeyError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    UnknownModelError,
)

__all__ = ["EXIT_CODES_HELP", "ExitCode", "SaveError", "UsageError", "exit_code_for"]


class UsageError(Exception):
    """Raised for a usage mistake found after parsing (exit code 2); nothing was sent."""


class SaveError(Exception):
    """Raised when finished images could not be written to ``--download-dir`` (exit 6).

    The folder is checked before anything is sent, so this is a folder that changed
    under the command (removed, replaced by a file, disk full): the generation itself
    was paid for and is fine, only saving it failed, like a failed download.
    """


class ExitCode(enum.IntEnum):
    """The process exit status of ``nanobanana``."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    API_ERROR = 3
    GENERATION_FAILED = 4
    TIMEOUT = 5
    NETWORK = 6
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    unexpected error (a bug: please report it with the traceback)
  2    usage error (bad arguments, bad input file)
  3    API error: missing or invalid key, no credits, access not enabled,
       request rejected (401, 402, 403, 400, 404), or over --max-credits
       (then nothing was sent)
  4    the generation failed, or was refused by the content-safety check
  5    timeout: the wait (--max-polls x --poll-interval) or a request ran out of time
  6    network or server error (connection failed, 5xx, rate limit or busy
       after retries, unreadable response, image download failed)
  130  interrupted (Ctrl-C); a generation still running is named with the
       command that resumes it"""

# Most specific first: APITimeoutError is an APIConnectionError, and so on.
_TABLE: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (GenerationFailedError, ExitCode.GENERATION_FAILED),
    (ContentSafetyError, ExitCode.GENERATION_FAILED),
    (JobTimeoutError, ExitCode.TIMEOUT),
    (APITimeoutError, ExitCode.TIMEOUT),
    (MissingAPIKeyError, ExitCode.API_ERROR),
    (BudgetExceededError, ExitCode.API_ERROR),  # like 402, but decided here: nothing sent
    (UnknownModelError, ExitCode.API_ERROR),  # the 400 the server would give, decided here
    (AuthenticationError, ExitCode.API_ERROR),
    (InsufficientCreditsError, ExitCode.API_ERROR),
    (PermissionDeniedError, ExitCode.API_ERROR),
    (BadRequestError, ExitCode.API_ERROR),
    (NotFoundError, ExitCode.API_ERROR),
    (APIStatusError, ExitCode.NETWORK),  # 5xx, 429 and 503 once retries are spent
    (APIConnectionError, ExitCode.NETWORK),
    (DownloadError, ExitCode.NETWORK),
    (SaveError, ExitCode.NETWORK),
    (NanoBananaError, ExitCode.NETWORK),  # UnexpectedResponseError: the server's fault
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code for an error; ``UNEXPECTED`` for anything that is not ours."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    for kind, code in _TABLE:
        if isinstance(error, kind):
            return code
    return ExitCode.UNEXPECTED
