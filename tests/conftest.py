import random

import pytest

from nanobanana import AsyncNanoBanana, FakeClock
from support import API, KEY


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
async def client(clock, monkeypatch):
    for name in ("NANOBANANA_API_KEY", "NANO_BANANA_API_KEY", "NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    async with AsyncNanoBanana(api_key=KEY, base_url=API, clock=clock, rng=random.Random(1)) as c:
        yield c


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server of this test session, on a free port (skips without the binary)."""
    from redis_support import RedisServer  # noqa: PLC0415

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet_namespace(request):
    """A Redis key namespace of this test alone."""
    import uuid  # noqa: PLC0415

    return f"test-{uuid.uuid4().hex[:12]}"
