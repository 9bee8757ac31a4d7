"""Pytest fixtures for testing code that uses Nano Banana, without spending credits.

The plugin is registered automatically (``pytest11`` entry point) when ``nanobanana``
is installed. It provides:

``nanobanana_sim``
    A started `nanobanana.testing.Simulator` for one test (function scope). The fixture
    is synchronous, so it works under pytest-asyncio, anyio's plugin, trio, or no
    async plugin at all. Pass simulator options with a marker:

    ```python
    @pytest.mark.nanobanana_sim(credits=3, generation_time=0.2)
    def test_runs_out_of_credits(nanobanana_sim):
        ...
    ```

``nanobanana_client``
    An `nanobanana.AsyncNanoBanana` connected to ``nanobanana_sim``, closed after the
    test. It is an async fixture (through pytest-asyncio when it is installed):

    ```python
    async def test_generates(nanobanana_client, nanobanana_sim):
        generation = await nanobanana_client.generate("a banana")
        assert len(generation.image_urls) == 1
        assert nanobanana_sim.credits() == 99
    ```

Point code under test at ``nanobanana_sim.base_url`` with ``nanobanana_sim.api_key``
(or set ``NANOBANANA_BASE_URL`` and ``NANOBANANA_API_KEY`` with ``monkeypatch``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nanobanana import AsyncNanoBanana
    from nanobanana.testing import Simulator

__all__ = ["nanobanana_client", "nanobanana_sim"]

_MARKER = "nanobanana_sim"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``nanobanana_sim`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers", f"{_MARKER}(**options): options for the nanobanana_sim fixture's Simulator"
    )


@pytest.fixture
def nanobanana_sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """A started simulator; options come from ``@pytest.mark.nanobanana_sim(...)``."""
    from nanobanana.testing import Simulator  # noqa: PLC0415 - keep pytest start-up light

    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        options.update(marker.kwargs)  # the closest marker wins
    with Simulator(**options) as sim:
        yield sim


async def _client(nanobanana_sim: Simulator) -> AsyncIterator[AsyncNanoBanana]:
    client = nanobanana_sim.client()
    try:
        yield client
    finally:
        await client.aclose()


_async_fixture: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - anyio's plugin also runs plain async fixtures
    _async_fixture = pytest.fixture
else:
    _async_fixture = pytest_asyncio.fixture

nanobanana_client = _async_fixture(_client, name="nanobanana_client")
