"""``nanobanana simulate``: serve the simulator over HTTP until Ctrl-C."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from nanobanana.cli._exit import ExitCode

if TYPE_CHECKING:
    from nanobanana.cli._session import Session

__all__ = ["serve"]


def serve(session: Session) -> int:
    """Run ``nanobanana.testing.serve`` with the command's options; Ctrl-C stops it."""
    from nanobanana.testing import serve as serve_simulator  # noqa: PLC0415

    args = session.args
    options: dict[str, Any] = {"cdn_port": args.cdn_port}
    if args.api_key:  # the key the simulator accepts (default: its demo key)
        options["api_key"] = args.api_key
    names = (
        "credits",
        "generation_time",
        "heartbeat_interval",
        "concurrency_limit",
        "max_async_tasks",
        "seed",
    )
    for name in names:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if session.output.quiet:  # -q: not even the banner (the command line names the port)
        options["out"] = io.StringIO()
    try:
        serve_simulator(host=args.host, port=args.port, **options)
    except KeyboardInterrupt:
        session.output.info("simulator stopped")
    return int(ExitCode.OK)
