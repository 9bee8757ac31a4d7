"""Helpers to run the real ``nanobanana`` command as a subprocess against a simulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from nanobanana._config import API_KEY_ENV_VARS, BASE_URL_ENV_VARS
from nanobanana.testing import Simulator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def console_script() -> str:
    """The installed ``nanobanana`` script next to this interpreter."""
    found = shutil.which("nanobanana", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("the nanobanana console script is not installed next to sys.executable")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any key or base URL of the person running the tests."""
    names = (*API_KEY_ENV_VARS, *BASE_URL_ENV_VARS, "NANOBANANA_REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def command(*args: str, sim: Simulator | None = None, script: bool = False) -> list[str]:
    base = [console_script()] if script else [sys.executable, "-m", "nanobanana"]
    if sim is not None:
        base += ["--base-url", sim.base_url, "--api-key", sim.api_key]
    return [*base, *args]


def run(
    *args: str,
    sim: Simulator | None = None,
    script: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        command(*args, sim=sim, script=script),
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=45,
        check=False,
        cwd=cwd,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def start(
    *args: str, sim: Simulator | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start the command in the background, with Ctrl-C (SIGINT) deliverable to it.

    A shell that starts jobs in the background ignores SIGINT for them, and the child
    inherits that; the child must get the default so that SIGINT means Ctrl-C.
    """
    return subprocess.Popen(  # noqa: S603 - our own interpreter
        command(*args, sim=sim),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=cwd,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def assert_png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert data[12:16] == b"IHDR"
    assert data.endswith(b"IEND\xaeB`\x82")
