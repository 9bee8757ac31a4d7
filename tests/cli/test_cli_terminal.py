"""The progress bar as a person sees it: the real command in a real terminal (tmux).

Skipped where tmux is not installed (``apt-get install tmux``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from clitools import clean_env

TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


def tmux(socket: str, *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - tmux, found on PATH
        [TMUX or "tmux", "-L", socket, "-f", os.devnull, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


def frames_of(argv: list[str], cwd, *, width: int = 100) -> list[str]:
    """Run ``argv`` in a fresh tmux pane and capture its frames until it exits."""
    socket = f"nanobanana-test-{uuid.uuid4().hex[:8]}"
    # `exec cat` keeps the pane open after the command, so its last frame can be read.
    script = f"{shlex.join(argv)}; echo EXIT=$?; exec cat"
    env = clean_env(TERM="xterm-256color")
    subprocess.run(  # noqa: S603
        [TMUX or "tmux", "-L", socket, "-f", os.devnull, "new-session", "-d", "-x",
         str(width), "-y", "30", "sh", "-c", script],
        env=env, check=True, timeout=10, cwd=cwd,
    )  # fmt: skip
    frames: list[str] = []
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            frame = tmux(socket, "capture-pane", "-p", "-S", "-", "-t", "0")
            frames.append(frame)
            if "EXIT=" in frame:
                break
    finally:
        subprocess.run(  # noqa: S603
            [TMUX or "tmux", "-L", socket, "kill-server"], check=False, timeout=10
        )
    return frames


def test_the_stream_progress_bar_fills_up_in_place_and_never_goes_back(tmp_path):
    frames = frames_of(
        [sys.executable, "-m", "nanobanana", "--simulate", "generate", "--prompt",
         "a banana [slow=1]", "--mode", "stream"],
        tmp_path,
    )  # fmt: skip
    last = frames[-1]
    assert "EXIT=0" in last, last
    bar_lines = [line for line in last.splitlines() if "━" in line]
    assert len(bar_lines) == 1, last  # redrawn in place, not one line per update
    assert "100%" in bar_lines[0]
    assert "✓" in bar_lines[0]
    assert '"status": "completed"' in last  # the result, pretty-printed on a terminal
    assert "Traceback" not in last
    seen = [
        int(match.group(1))
        for frame in frames
        for line in frame.splitlines()
        if "━" in line and (match := re.search(r"(\d+)%", line))
    ]
    assert seen == sorted(seen), seen
    assert any(value < 100 for value in seen), "the bar was never seen before it was full"


def test_the_batch_bar_shows_rate_credits_and_running_and_results_go_to_the_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {n}\n" for n in range(5)) + "x [fail]\n")
    frames = frames_of(
        [sys.executable, "-m", "nanobanana", "--simulate", "batch", "prompts.txt",
         "--output", "out.jsonl"],
        tmp_path,
        width=120,
    )  # fmt: skip
    last = frames[-1]
    assert "EXIT=4" in last, last  # one item failed
    bars = [line for frame in frames for line in frame.splitlines() if "━" in line]
    assert any("running" in bar and "credits" in bar for bar in bars), bars
    [final_bar] = [line for line in last.splitlines() if "━" in line]
    assert "6/6" in final_bar
    assert "1 failed" in final_bar
    assert "/s" in final_bar  # the rate
    assert "{" not in last  # no JSON line buries the bar: they are in the file
    assert "results: out.jsonl" in last
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) >= 6
