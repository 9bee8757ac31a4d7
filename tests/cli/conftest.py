import pytest

from nanobanana.testing import Simulator


@pytest.fixture
def sim():
    with Simulator(credits=100) as simulator:
        yield simulator
