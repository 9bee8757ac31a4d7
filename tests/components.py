"""Real components a test needs (a server binary, an event loop, a package).

A test of production behaviour runs against the real thing. Where this machine lacks
it, the test skips and says why; in CI (``CI=true``, set by ``.ci/run``) a missing
component is a failure instead, so that a green CI never means "skipped".
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(available: bool, reason: str) -> None:
    """Skip (fail in CI) unless ``available``; ``reason`` says what is missing and why."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"missing in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, why: str) -> str:
    """The path of the program ``name`` on PATH; skip (fail in CI) without it."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not on PATH, needed for {why}")
    assert path is not None
    return path


def require_module(name: str, why: str) -> None:
    """Skip (fail in CI) unless the module ``name`` can be imported."""
    found = importlib.util.find_spec(name) is not None
    require(found, f"{name} is not installed, needed for {why}")
