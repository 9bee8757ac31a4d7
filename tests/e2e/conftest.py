"""The end-to-end suite runs on every asyncio event loop users run: asyncio and uvloop.

uvloop is what ``uvicorn[standard]`` (and so most FastAPI deployments) runs on; its
transports are not asyncio's classes, which is what broke every call there once.
Each test here runs once per loop (trio has its own suite, tests/reliability/test_trio.py).
"""

from __future__ import annotations

import asyncio

import pytest

from components import require_module


@pytest.fixture(scope="session", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        require_module("uvloop", "running the end-to-end suite on uvloop")
        import uvloop  # noqa: PLC0415 - only where it is installed

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def loop_name(event_loop_policy: asyncio.AbstractEventLoopPolicy) -> str:
    """Which loop the test runs on: "uvloop" or "asyncio"."""
    return "uvloop" if type(event_loop_policy).__module__.startswith("uvloop") else "asyncio"
