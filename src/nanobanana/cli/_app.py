"""The ``nanobanana`` parser and entry point: options, dispatch, errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import textwrap
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from nanobanana._admission import REDIS_SCHEMES, REDIS_URL_ENV
from nanobanana._config import API_KEY_ENV_VARS, BASE_URL_ENV_VARS, resolve_api_key
from nanobanana._errors import JobTimeoutError, MissingAPIKeyError, NanoBananaError
from nanobanana._version import __version__
from nanobanana.cli._exit import EXIT_CODES_HELP, ExitCode, UsageError
from nanobanana.cli._output import Output, one_line
from nanobanana.cli._polling import DEFAULT_MAX_POLLS, DEFAULT_POLL_INTERVAL
from nanobanana.cli._session import Session, check_download_dir

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from nanobanana._client import AsyncNanoBanana

__all__ = ["build_parser", "main"]

_N = TypeVar("_N", int, float)

DESCRIPTION = """\
Generate images with the Nano Banana API: results as JSON on stdout, progress and
messages on stderr. Try it without a key or credits: nanobanana --simulate generate
--prompt "a banana" --mode stream --download-dir images"""


def _command_epilog(parser: argparse.ArgumentParser) -> str:
    """The end of a command's help: where the global options and exit codes are.

    A subcommand's help shows its own options; the global ones (named here, as
    `_add_globals` made them) and the exit codes are shown once, in `nanobanana --help`.
    """
    names = [
        max(action.option_strings, key=len)
        for group in parser._action_groups
        if group.title == "global options"
        for action in group._group_actions
    ]
    return textwrap.fill(
        f"Global options ({', '.join(names)}) go before or after the command; they, the "
        "environment variables and the exit codes are listed once, in `nanobanana --help`.",
        width=88,
    )


ENVIRONMENT_HELP = f"""\
environment:
  {", ".join(API_KEY_ENV_VARS)}
       the API key (first one set wins); --api-key overrides
  {", ".join(BASE_URL_ENV_VARS)}
       the API's base URL; --base-url overrides
  {REDIS_URL_ENV}
       share the account's limits with every process using the key; --redis overrides"""


def _number(
    kind: Callable[[str], _N], *, low: _N, high: float = math.inf, low_ok: bool, what: str
) -> Callable[[str], _N]:
    """An argparse type: ``text`` read with ``kind``, then checked against the range."""
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {noun}: {text!r}") from None
        if not (low <= value if low_ok else low < value) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
        return value

    return parse


_positive_float = _number(
    float, low=0.0, high=sys.float_info.max, low_ok=False, what="a positive number"
)
_positive_int = _number(int, low=1, low_ok=True, what="at least 1")
_non_negative_int = _number(int, low=0, low_ok=True, what="0 or more")
_port = _number(int, low=0, high=65535, low_ok=True, what="a port from 0 to 65535")  # TCP's range


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http(s) URL: {text!r}")
    return text


def _generation_time(text: str) -> object:
    """``--generation-time``: seconds, ``LOW-HIGH`` or ``LOW-HIGH@MODE`` (a `GenerationTime`)."""
    from nanobanana.testing._timing import GenerationTime  # noqa: PLC0415 - simulate only

    try:
        return GenerationTime.of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("generation_time ")) from None


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after the command's name.

    On subcommands (``suppress``) their defaults are suppressed, so ``nanobanana
    --json models`` and ``nanobanana models --json`` mean the same and neither undoes
    the other; and so is their help: they are listed once, in ``nanobanana --help``.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(None),
        help="the nb_... API key (default: $NANOBANANA_API_KEY, $NANO_BANANA_API_KEY, "
        "$NB_API_KEY); prefer the environment, command lines show up in `ps`",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        default=default(None),
        help="the API's base URL (default: $NANOBANANA_BASE_URL, "
        "https://www.nananobanana.com/api/v1)",
    )
    group.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=default(None),
        help="seconds each HTTP request may take (default 180: sync generations take 10-60 s)",
    )
    group.add_argument(
        "--max-retries",
        metavar="N",
        type=int,
        default=default(None),
        help="retries of a request that is safe to retry (default 3; a generation that "
        "may have been charged is never resent)",
    )
    group.add_argument(
        "--max-credits",
        metavar="N",
        type=_non_negative_int,
        default=default(None),
        help="spend at most N credits: a generation whose estimated cost would pass it "
        "fails (exit 3) and is not sent (default: no cap)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        default=default(None),
        help="share the account's limits through this Redis (redis://...) with every "
        "process and machine using the key (default: $NANOBANANA_REDIS_URL; needs the "
        "'redis' extra)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="compact JSON on stdout even on a terminal; on failure, an error document too",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress or messages on stderr, only the `error: ...` line of a failure",
    )
    group.add_argument(
        "--simulate",
        action="store_true",
        default=default(False),
        help="run against an embedded simulator: no key, no credits, real PNG files",
    )
    if suppress:  # shown once, in `nanobanana --help`, rather than in every command's
        for action in group._group_actions:
            action.help = argparse.SUPPRESS


def _add_generation_options(parser: argparse.ArgumentParser, *, item_defaults: bool) -> None:
    suffix = " (default for items that do not set it)" if item_defaults else ""
    parser.add_argument("--model", help=f"a model name from `nanobanana models`{suffix}")
    parser.add_argument(
        "--aspect-ratio", metavar="RATIO", help=f"e.g. 1:1, 16:9, 9:16, 4:3{suffix}"
    )
    parser.add_argument(
        "--reference-image-url",
        dest="reference_image_urls",
        metavar="URL",
        action="append",
        type=_http_url,
        help=f"an input image for image-to-image; repeat for several{suffix}",
    )
    parser.add_argument(
        "--quantity", metavar="N", type=_positive_int, help=f"images to generate{suffix}"
    )


def _add_poll_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-interval",
        metavar="S",
        type=_positive_float,
        help=f"seconds between polls (default: first poll after 2 s, then every "
        f"{DEFAULT_POLL_INTERVAL:g} s)",
    )
    parser.add_argument(
        "--max-polls",
        metavar="N",
        type=_positive_int,
        help=f"give up (exit 5) after N polls (default {DEFAULT_MAX_POLLS} with "
        "--poll-interval, else a 10-minute wait)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for ``main`` and for tests of ``--help``."""
    parser = argparse.ArgumentParser(
        prog="nanobanana",
        description=DESCRIPTION,
        epilog=f"{ENVIRONMENT_HELP}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nanobanana {__version__}")
    _add_globals(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, *, globals_: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_command_epilog(parser) if globals_ else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if globals_:
            _add_globals(sub, suppress=True)
        return sub

    command("models", "list the models (no key needed)")
    command("credits", "show the account's credit balance")

    generate = command("generate", "generate images from a prompt")
    generate.add_argument("prompt_arg", nargs="?", metavar="PROMPT", help="the prompt")
    generate.add_argument("-p", "--prompt", help="the prompt (or give it as PROMPT)")
    generate.add_argument(
        "--mode",
        choices=("sync", "stream", "async"),
        default="sync",
        help="sync: one request (10-60 s); stream: live progress; async: submit and "
        "print the id at once (add --wait to wait) (default: sync)",
    )
    generate.add_argument(
        "--wait", action="store_true", help="async mode: wait for the result by polling"
    )
    _add_generation_options(generate, item_defaults=False)
    _add_poll_options(generate)
    generate.add_argument(
        "--download-dir", metavar="DIR", help="save the images here (created if missing)"
    )

    poll = command("poll", "show a generation's state, or wait for it with --wait")
    poll.add_argument("--id", required=True, help="the generation id")
    poll.add_argument("--wait", action="store_true", help="poll until it completes or fails")
    _add_poll_options(poll)
    poll.add_argument(
        "--download-dir", metavar="DIR", help="save the images here once it has completed"
    )

    from nanobanana.cli._batch import add_batch_arguments  # noqa: PLC0415

    add_batch_arguments(
        command("batch", "generate a file of prompts concurrently, resumably"),
        add_generation_options=_add_generation_options,
        add_poll_options=_add_poll_options,
        positive_int=_positive_int,
        positive_float=_positive_float,
    )

    # The simulator takes none of the client's options (nor --simulate, which it is).
    simulate = command(
        "simulate", "serve the simulator over HTTP for other programs", globals_=False
    )
    simulate.add_argument(
        "--api-key",
        metavar="KEY",
        default=argparse.SUPPRESS,
        help="the key the simulator accepts (default nb_test_key)",
    )
    simulate.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    simulate.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    simulate.add_argument(
        "--port", type=_port, default=8000, help="the API port (default 8000; 0: any free one)"
    )
    simulate.add_argument(
        "--cdn-port", type=_port, default=0, help="the image CDN's port (default: any free one)"
    )
    simulate.add_argument(
        "--credits", type=_non_negative_int, help="the account's credits (default 100)"
    )
    simulate.add_argument(
        "--generation-time",
        metavar="S",
        type=_generation_time,
        help="seconds each generation takes (default 0), or a range each one draws its "
        "time from: LOW-HIGH (uniform, e.g. 0.5-2) or LOW-HIGH@MODE (peaking at MODE, "
        "e.g. 10-60@20); reproducible with --seed",
    )
    simulate.add_argument(
        "--heartbeat-interval",
        metavar="S",
        type=_positive_float,
        help="seconds between stream heartbeats (default 15, as documented)",
    )
    simulate.add_argument(
        "--concurrency-limit",
        metavar="N",
        type=_positive_int,
        help="the account's limit on requests in flight (default 1, as documented)",
    )
    simulate.add_argument(
        "--max-async-tasks",
        metavar="N",
        type=_positive_int,
        help="the server-wide cap on running async tasks, beyond which it answers 503 (default 10)",
    )
    simulate.add_argument(
        "--seed", type=int, help="reproducible ids, image URLs and generation times"
    )
    return parser


# The global options of the client commands that a server has no use for. After
# `simulate` argparse refuses them (its parser lacks them); before it, they would be
# dropped without a word. `--api-key` (the key the simulator accepts) and `--quiet` work.
_NOT_FOR_SIMULATE = (
    ("base_url", "--base-url"),
    ("timeout", "--timeout"),
    ("max_retries", "--max-retries"),
    ("max_credits", "--max-credits"),
    ("redis", "--redis"),
    ("json", "--json"),  # simulate prints no JSON
)


def _check_simulate(args: argparse.Namespace) -> None:
    if args.simulate:
        raise UsageError("simulate serves a simulator itself: --simulate is for the other commands")
    # Given means not the default (None, or False for --json): 0 is a value (`is`, not ==).
    given = [
        option
        for name, option in _NOT_FOR_SIMULATE
        if getattr(args, name) is not None and getattr(args, name) is not False
    ]
    if given:
        which = "it is an option" if len(given) == 1 else "they are options"
        raise UsageError(
            f"simulate does not take {', '.join(given)}: {which} of the commands that call "
            "the API; the simulator's own are listed by `nanobanana simulate --help`"
        )


def _check(args: argparse.Namespace) -> None:
    """Usage rules argparse cannot express."""
    if args.command == "simulate":
        _check_simulate(args)
    if args.command == "generate":
        if args.prompt is not None and args.prompt_arg is not None:
            raise UsageError("give the prompt once: as PROMPT or with --prompt")
        args.prompt = args.prompt if args.prompt is not None else args.prompt_arg
        if args.prompt is None or not args.prompt.strip():
            raise UsageError("generate needs a non-empty prompt: --prompt TEXT")
        if args.mode != "async" and args.wait:
            args.wait = False  # sync and stream wait anyway
        if args.mode == "async" and args.download_dir and not args.wait:
            raise UsageError("--download-dir needs the finished images: add --wait to --mode async")
    if args.redis is not None and not args.redis.startswith(REDIS_SCHEMES):
        # Not the URL itself: it may hold a password.
        scheme = args.redis.partition("://")[0] if "://" in args.redis else ""
        got = f"not a {scheme}:// one" if scheme.isalnum() else "this one has no scheme"
        *first, last = REDIS_SCHEMES
        raise UsageError(
            f"--redis takes a {', '.join(first)} or {last} URL (redis://HOST:6379/0), {got}"
        )
    if args.max_retries is not None and args.max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    if args.command == "poll" and not args.id.strip():
        raise UsageError("--id must not be empty")
    if args.command in ("generate", "poll") and args.download_dir is not None:
        check_download_dir(args.download_dir)  # before anything is paid for


# The commands that send the key: `models` is public, `simulate` serves the simulator.
_NEEDS_KEY = frozenset({"credits", "generate", "poll", "batch"})


def _check_api_key(args: argparse.Namespace) -> None:
    """Fail before printing anything, and without the network, when the key is missing.

    The client would only find out at the first request that needs it, after the
    command's progress line (``generating ...``) was printed. Called once the client
    is made, so that a bad ``--base-url`` or input file is reported first (exit 2).
    """
    if args.command not in _NEEDS_KEY or args.simulate:
        return
    # As the client did (argument, then environment): a key it refused was a usage error.
    if resolve_api_key(args.api_key) is None:
        raise MissingAPIKeyError("No API key.")  # `message_for` says it in the CLI's words


async def _dispatch(session: Session) -> int:
    from nanobanana.cli import _batch, _commands  # noqa: PLC0415

    handlers: dict[str, Callable[[Session, AsyncNanoBanana], Awaitable[int]]] = {
        "models": _commands.cmd_models,
        "credits": _commands.cmd_credits,
        "generate": _commands.cmd_generate,
        "poll": _commands.cmd_poll,
        "batch": _batch.cmd_batch,
    }
    handler = handlers[session.args.command]
    if session.args.command == "batch":
        _batch.prepare(session)  # reads and checks the input before any client exists
    try:
        async with session.client() as client:
            _check_api_key(session.args)
            return await handler(session, client)
    finally:
        source = getattr(session.args, "batch_input", None)
        if source is not None:  # cmd_batch closes it, if the command got that far
            source.close()


def _hints(session: Session, error: BaseException) -> list[str]:
    if isinstance(error, JobTimeoutError):
        resume = session.poll_command(error.generation_id)
        return [f"the generation may still complete; resume with: {resume}"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nanobanana`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    The console script and ``python -m nanobanana`` pass the result to ``sys.exit``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with usage on stderr on a bad command line
    output = Output(json_mode=args.json, quiet=args.quiet)
    for secret in (args.api_key, *(os.environ.get(name) for name in API_KEY_ENV_VARS)):
        if secret:
            output.add_secret(secret)
    session = Session(args=args, output=output, argv=argv)
    try:
        _check(args)
        if args.command == "simulate":
            from nanobanana.cli._serve import serve  # noqa: PLC0415

            return serve(session)
        return asyncio.run(_dispatch(session))
    except UsageError as error:
        return output.usage_error(str(error))
    except KeyboardInterrupt:
        return output.interrupted(session.interrupted_hints(), generation_id=session.interrupted_id)
    except NanoBananaError as error:
        return output.fail(error, hints=_hints(session, error))
    except OSError as error:
        # Before anything is sent: a batch output file that cannot be opened, a
        # simulator port in use. (Images that cannot be saved later are not usage
        # errors: the commands catch those and keep the generation.)
        return output.usage_error(one_line(str(error)))
    except Exception:  # noqa: BLE001 - a bug: show the traceback, exit 1
        sys.stderr.write(traceback.format_exc())
        sys.stderr.write("error: unexpected failure; this is a bug, please report it\n")
        return ExitCode.UNEXPECTED
