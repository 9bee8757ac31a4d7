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
