"""`serve`: run a simulator in the foreground (``nanobanana simulate``)."""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from nanobanana.testing._simulator import Simulator

__all__ = ["serve"]


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    cdn_port: int = 0,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    **simulator_options: Any,
) -> None:
    """Run a `Simulator` until Ctrl-C, printing where to reach it on stderr.

    Args:
        host: The interface to listen on.
        port: The API port.
        cdn_port: The image CDN port (0: any free port; image URLs name it).
        stop: For embedding and tests: return when this event is set.
        out: Where to print (default: ``sys.stderr``).
        **simulator_options: Passed on to `Simulator` (``credits``, ``api_key``,
            ``generation_time``, ``seed``, ...).
    """
    stream = sys.stderr if out is None else out
    stop = threading.Event() if stop is None else stop
    with Simulator(host=host, port=port, cdn_port=cdn_port, **simulator_options) as sim:
        print(
            "Nano Banana simulator running\n"
            f"  base URL: {sim.base_url}\n"
            f"  CDN URL:  {sim.cdn_base_url}\n"
            f"  API key:  {sim.api_key}\n"
            f"  admin:    {sim.api_origin}/_sim/\n"
            "Press Ctrl-C to stop.",
            file=stream,
            flush=True,
        )
        try:
            # A timed wait, so that Ctrl-C is noticed on every platform.
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("Stopping the simulator.", file=stream, flush=True)
