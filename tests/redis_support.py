"""A real redis-server for the tests, started on a free loopback port.

Never the machine's own Redis (127.0.0.1:6379): each test session starts its own from
the ``redis-server`` on PATH, keeping nothing on disk. Tests get their own key
namespace (`fleet_namespace`), so they never see each other's counts.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

__all__ = ["RedisServer", "free_port"]

_READY = "Ready to accept connections"
_START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.1).close()
    except OSError:
        return False
    return True


class RedisServer:
    """One redis-server process on 127.0.0.1; `stop` and `start` again keep its port."""

    def __init__(self, *, port: int | None = None, binary: str | None = None) -> None:
        if binary is None:
            # In a test: skip (fail under CI=true) without the binary. The benchmarks
            # pass theirs and need no pytest.
            from components import require_binary  # noqa: PLC0415

            binary = require_binary("redis-server", "the Redis governor's tests")
        self.binary = binary
        self.port = port or free_port()
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and return once it accepts connections."""
        process = subprocess.Popen(  # noqa: S603 - our own arguments
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._process = process
        ready = threading.Event()
        lines: list[str] = []

        def watch() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if _READY in line:
                    ready.set()
            ready.set()  # it ended

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(_START_TIMEOUT) or process.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(lines[-20:]))
        return self

    def stop(self) -> None:
        """Stop it (SIGKILL: it keeps nothing anyway), and wait until it has gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(_START_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        # The port must be free again before a restart on it.
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline and _listening(self.port):
            time.sleep(0.01)  # the kernel frees the port a moment after the process ends

    def freeze(self) -> None:
        """SIGSTOP: it keeps its connections open and answers nothing (a hung host)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it answers again, its keys as they were."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start it again on the same port: every key is gone."""
        self.stop()
        self.start()
