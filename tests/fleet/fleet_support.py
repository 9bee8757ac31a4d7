"""Worker processes for the fleet tests (see ``fleet_worker.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("fleet_worker.py")
TIMEOUT = 40.0


class Worker:
    """One worker process, started and waiting for the word to go."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own worker script
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            _, err = self.process.communicate(timeout=TIMEOUT)
            raise RuntimeError(f"worker did not start: {line!r}\n{err}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        """kill -9: no cleanup runs in the worker."""
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=TIMEOUT)

    def round_report(self) -> dict[str, Any]:
        """The report of a round that is not the last."""
        assert self.process.stdout is not None
        return json.loads(self.process.stdout.readline())

    def result(self) -> tuple[dict[str, Any], str]:
        """The worker's report and its stderr (the log records)."""
        out, err = self.process.communicate(timeout=TIMEOUT)
        assert self.process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1]), err


def start_fleet(count: int, *args: str) -> list[Worker]:
    """``count`` workers, all started (imports done) and waiting; then all told to go."""
    workers = [Worker(*args) for _ in range(count)]
    for worker in workers:
        worker.go()
    return workers
