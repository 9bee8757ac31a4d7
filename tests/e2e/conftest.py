"""The end-to-end suite runs on every asyncio event loop users run: asyncio and uvloop.

uvloop is what ``uvicorn[standard]`` (and so most FastAPI deployments) runs on; its
transports are not asyncio's classes, which is what broke every call there once.
Each test here runs once per loop (trio has its own suite, tests/reliability/test_trio.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from components import require_module


def _uvloop() -> asyncio.AbstractEventLoop:
    require_module("uvloop", "running the end-to-end suite on uvloop")
    import uvloop  # noqa: PLC0415 - only where it is installed

    return uvloop.new_event_loop()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": _uvloop}
