"""``nanobanana simulate``: serve the simulator over HTTP until Ctrl-C."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanobanana.cli._exit import ExitCode

if TYPE_CHECKING:
    from nanobanana.cli._session import Session

__all__ = ["serve"]


def serve(session: Session) -> int:
    """Run ``nanobanana.testing.serve`` with the command's options; Ctrl-C stops it."""
    from nanobanana.testing import serve as serve_simulator  # noqa: PLC0415

    args = session.args
    options: dict[str, Any] = {}
    if args.api_key:
        options["api_key"] = args.api_key
    if args.credits is not None:
        options["credits"] = args.credits
    if args.generation_time is not None:
        options["generation_time"] = args.generation_time
    try:
        serve_simulator(host=args.host, port=args.port, **options)
    except KeyboardInterrupt:
        session.output.info("simulator stopped")
    return int(ExitCode.OK)
