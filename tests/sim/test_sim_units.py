"""Pieces of the simulator that need no socket: PNG encoder, clock, settings, holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest

from nanobanana import testing
from nanobanana.testing import Hold, SimClock, SimModel, Simulator, pytest_plugin
from nanobanana.testing._clock import iso8601
from nanobanana.testing._png import encode_png


def test_png_encoder_rejects_rows_that_do_not_match():
    with pytest.raises(ValueError, match="positive"):
        encode_png(0, 1, [])
    with pytest.raises(ValueError, match="dimensions"):
        encode_png(2, 1, [b"\x00" * 5])
    assert encode_png(1, 1, [b"\x01\x02\x03"]).startswith(b"\x89PNG\r\n\x1a\n")


def test_clock_moves_forward_only_and_formats_like_the_service():
    clock = SimClock(start=1_735_689_600.0)  # 2025-01-01T00:00:00Z
    assert iso8601(1_735_689_600.0) == "2025-01-01T00:00:00.000Z"
    clock.advance(86400)
    assert clock.datetime().date() == dt.date(2025, 1, 2)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    clock.reset()
    assert clock.datetime().date() == dt.date(2025, 1, 1)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="default_model"):
        Simulator(default_model="nope")
    with pytest.raises(ValueError, match="generation_time"):
        Simulator(generation_time=-1)
    with pytest.raises(ValueError, match="concurrency_limit"):
        Simulator(concurrency_limit=0)
    sim = Simulator()
    with pytest.raises(ValueError, match="unknown model"):
        sim.set_generation_time(1.0, model="nope")
    with pytest.raises(ValueError, match="concurrency_limit"):
        sim.add_account("nb_x", concurrency_limit=0)
    with pytest.raises(KeyError):
        sim.in_flight("nb_missing")
    with pytest.raises(KeyError):
        sim.generation("clmissing")


def test_custom_catalogue_and_default_model():
    models = [SimModel(name="tiny", display_name="Tiny", credits_cost=5, generation_time=0.0)]
    sim = Simulator(models=models, default_model="tiny")
    assert sim.config.model("tiny") == models[0]
    assert sim.config.model("nano-banana") is None


def test_hold_releases_waiters_on_other_loops_and_threads():
    hold = Hold()
    done = threading.Event()

    def waiter() -> None:
        asyncio.run(hold.wait())
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        assert not done.wait(0.05)
        hold.release()
        assert done.wait(5)
    finally:
        hold.release()
        thread.join(5)
    hold.release()  # idempotent
    assert hold.released
    asyncio.run(hold.wait())  # returns at once once released


def test_seed_makes_ids_reproducible():
    def first_id(seed: int) -> str:
        sim = Simulator(seed=seed)
        return sim._state.new_id()

    assert first_id(1) == first_id(1)
    assert first_id(1) != first_id(2)
    assert first_id(1).startswith("cl")
    assert len(first_id(1)) == 25


def test_public_names_are_exported_and_documented():
    for name in testing.__all__:
        obj = getattr(testing, name)
        if callable(obj):
            assert obj.__doc__, name
    for name in ("Simulator", "serve", "Fault", "Hold", "SimClock", "fingerprint"):
        assert name in testing.__all__
    assert pytest_plugin.__doc__
    assert "nanobanana_sim" in pytest_plugin.__doc__
    assert "nanobanana_client" in pytest_plugin.__doc__
