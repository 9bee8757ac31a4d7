"""Generation times: fixed, or drawn from a range, reproducibly with the seed."""

from __future__ import annotations

import random

import httpx
import pytest

from nanobanana.testing import GenerationTime, SimModel, Simulator


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, GenerationTime(low=2.0, high=2.0)),
        (0, GenerationTime(low=0.0, high=0.0)),
        ("1.5", GenerationTime(low=1.5, high=1.5)),
        ("0.5-2", GenerationTime(low=0.5, high=2.0)),
        (" 10 - 60 @ 20 ", GenerationTime(low=10.0, high=60.0, mode=20.0)),
        (".5-2.", GenerationTime(low=0.5, high=2.0)),
        ((0.5, 2), GenerationTime(low=0.5, high=2.0)),
        ([1, 3], GenerationTime(low=1.0, high=3.0)),
        ({"low": 1, "high": 3, "mode": 2}, GenerationTime(low=1.0, high=3.0, mode=2.0)),
        ({"seconds": "1-3"}, GenerationTime(low=1.0, high=3.0)),
    ],
)
def test_every_accepted_form_reads_the_same(value, expected):
    assert GenerationTime.of(value) == expected
    assert GenerationTime.of(str(expected)) == expected  # str() round-trips
    assert GenerationTime.of(expected.to_json()) == expected  # so does the admin form


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        ("-1", ValueError),
        ("2-1", ValueError),
        ("1-3@5", ValueError),
        ("1e-3", ValueError),
        ("fast", ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ((1, 2, 3), ValueError),
        ({"mode": 1}, ValueError),
        (True, TypeError),
        (None, TypeError),
        (b"12", TypeError),
    ],
)
def test_bad_generation_times_are_refused_with_a_clear_error(value, error):
    with pytest.raises(error, match=r"generation_time|seconds"):
        GenerationTime.of(value)


def test_draws_stay_in_range_and_a_fixed_time_draws_nothing():
    rng = random.Random(1)
    uniform = GenerationTime.of("0.5-2")
    assert all(0.5 <= uniform.draw(rng) <= 2.0 for _ in range(1000))
    peaked = GenerationTime.of("10-60@12")
    draws = [peaked.draw(rng) for _ in range(2000)]
    assert all(10 <= d <= 60 for d in draws)
    assert sum(d < 30 for d in draws) > 1000  # most near the mode
    state = rng.getstate()
    assert GenerationTime.fixed(3).draw(rng) == 3.0
    assert rng.getstate() == state


def _times(sim: Simulator, count: int, **body: object) -> list[float]:
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    with httpx.Client(base_url=sim.base_url, headers=headers) as http:
        ids = [
            http.post("/generate", json={"prompt": f"p{i}", "mode": "async", **body}).json()[
                "generationId"
            ]
            for i in range(count)
        ]
    return [sim.generation(generation_id).generation_time for generation_id in ids]


def test_a_range_draws_each_generations_time_reproducibly_with_the_seed():
    # Async submissions return at once: the drawn times are read without waiting them.
    # (They are short anyway: a simulator waits for nothing when it stops.)
    def run(seed: int | None) -> list[float]:
        with Simulator(generation_time="0.01-0.05", seed=seed, max_async_tasks=50) as sim:
            return _times(sim, 8)

    first = run(7)
    assert all(0.01 <= t <= 0.05 for t in first)
    assert len(set(first)) == 8
    assert run(7) == first
    assert run(8) != first
    assert run(None) != first


def test_a_range_leaves_the_ids_of_a_seeded_simulator_as_they_were():
    def ids(**options: object) -> list[str]:
        with Simulator(seed=3, **options) as sim:
            headers = {"Authorization": f"Bearer {sim.api_key}"}
            with httpx.Client(base_url=sim.base_url, headers=headers) as http:
                return [
                    http.post("/generate", json={"prompt": "p", "mode": "async"}).json()[
                        "generationId"
                    ]
                    for _ in range(3)
                ]

    assert ids() == ids(generation_time="0.01-0.02")


def test_set_generation_time_takes_ranges_per_model_and_reset_forgets_them():
    models = [
        SimModel(name="quick", display_name="Quick", generation_time="0.01-0.02"),
        SimModel(name="plain", display_name="Plain"),
    ]
    with Simulator(models=models, default_model="plain", max_async_tasks=50) as sim:
        assert _times(sim, 1) == [0.0]
        assert 0.01 <= _times(sim, 1, selectedModel="quick")[0] <= 0.02
        sim.set_generation_time((0.03, 0.04))
        assert 0.03 <= _times(sim, 1)[0] <= 0.04
        sim.set_generation_time("0.05", model="quick")
        assert _times(sim, 1, selectedModel="quick") == [0.05]
        sim.reset()
        assert _times(sim, 1) == [0.0]


def test_a_prompt_marker_still_wins_over_a_range():
    with Simulator(generation_time="0.01-0.02") as sim:
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        with httpx.Client(base_url=sim.base_url, headers=headers) as http:
            answer = http.post("/generate", json={"prompt": "p [slow=0.03]", "mode": "async"})
        assert sim.generation(answer.json()["generationId"]).generation_time == 0.03
