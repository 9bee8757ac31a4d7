"""The credit rules of the docs: charged at acceptance, unit cost x quantity, refunds."""

from __future__ import annotations

import ssl

import httpx
import pytest

from nanobanana.testing import Simulator, fingerprint

TLS = ssl.create_default_context()


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


async def generate(api, **body):
    return await api.post("/generate", json={"prompt": "a banana", **body})


@pytest.mark.parametrize(
    ("model", "cost"),
    [("nano-banana", 1), ("gemini-2.5-flash-image", 1), ("nanobanan-2", 2), ("nanobanan-2-2k", 3)],
)
async def test_charge_is_the_models_credits_cost(api, nanobanana_sim, model, cost):
    response = await generate(api, selectedModel=model)
    assert response.json()["creditsUsed"] == cost
    assert nanobanana_sim.credits() == 100 - cost
    (entry,) = nanobanana_sim.ledger
    assert entry.kind == "charge"
    assert entry.amount == cost
    assert entry.balance == 100 - cost
    assert entry.model == model
    assert entry.prompt == "a banana"
    assert entry.generation_id == response.json()["generationId"]
    assert entry.key_fingerprint == fingerprint(nanobanana_sim.api_key)


@pytest.mark.parametrize(
    ("quantity", "images"), [(1, 1), (3, 3), (4, 4), (0, 1), (-2, 1), (10, 4), (2.0, 2)]
)
async def test_quantity_is_clamped_and_credits_scale_with_it(api, nanobanana_sim, quantity, images):
    response = await generate(api, quantity=quantity, selectedModel="nanobanan-2")
    body = response.json()
    assert len(body["imageUrls"]) == images
    assert body["creditsUsed"] == 2 * images
    assert nanobanana_sim.generations[0].quantity == images


@pytest.mark.nanobanana_sim(max_quantity=2)
async def test_quantity_cap_is_settable(api):
    response = await generate(api, quantity=4)
    assert len(response.json()["imageUrls"]) == 2


@pytest.mark.parametrize(("references", "unit"), [(0, 1), (1, 1), (2, 2), (4, 4)])
async def test_each_reference_image_beyond_the_first_costs_one_more(api, references, unit):
    urls = [f"https://example.com/{i}.jpg" for i in range(references)]
    response = await generate(api, referenceImageUrls=urls, quantity=2)
    assert response.json()["creditsUsed"] == unit * 2


async def test_stream_mode_forces_quantity_one(api, nanobanana_sim):
    async with api.stream(
        "POST", "/generate", json={"prompt": "a", "mode": "stream", "quantity": 4}
    ) as response:
        await response.aread()
    (generation,) = nanobanana_sim.generations
    assert generation.quantity == 1
    assert generation.credits_used == 1
    assert nanobanana_sim.credits() == 99


@pytest.mark.nanobanana_sim(credits=2)
async def test_insufficient_credits_is_402_and_charges_nothing(api, nanobanana_sim):
    response = await generate(api, selectedModel="nanobanan-2-2k")
    assert response.status_code == 402
    body = response.json()
    assert body["error"] == "Insufficient credits"
    assert body["creditsRequired"] == 3
    assert body["credits"] == 2
    assert nanobanana_sim.ledger == ()
    assert nanobanana_sim.generations == ()
    # Exactly enough is enough.
    assert (await generate(api, quantity=2)).status_code == 200
    assert nanobanana_sim.credits() == 0
    assert (await generate(api)).status_code == 402


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
async def test_failed_generations_are_never_refunded(api, nanobanana_sim, mode):
    async with api.stream("POST", "/generate", json={"prompt": "x [fail]", "mode": mode}) as r:
        await r.aread()
    assert nanobanana_sim.credits() == 99
    assert [entry.kind for entry in nanobanana_sim.ledger] == ["charge"]
    assert nanobanana_sim.generations[0].status == "failed"


@pytest.mark.nanobanana_sim(max_async_tasks=2)
async def test_full_async_queue_is_503_server_busy_and_refunds(api, nanobanana_sim):
    with nanobanana_sim.hold():
        for _ in range(2):
            assert (await generate(api, mode="async")).status_code == 200
        response = await generate(api, mode="async")
        assert response.status_code == 503
        assert response.json() == {
            "error": "Server is busy, too many concurrent tasks. Please retry later.",
            "type": "server_busy",
            "activeTasks": 2,
        }
        assert "retry-after" not in response.headers
    assert nanobanana_sim.credits() == 98
    kinds = [(entry.kind, entry.amount) for entry in nanobanana_sim.ledger]
    assert kinds == [("charge", 1), ("charge", 1), ("charge", 1), ("refund", 1)]
    refunded = nanobanana_sim.ledger[-1].generation_id
    assert nanobanana_sim.ledger[-2].generation_id == refunded
    assert refunded not in {g.id for g in nanobanana_sim.generations}
    # Once the tasks finished, the queue has room again.
    assert (await generate(api, mode="async")).status_code == 200


@pytest.mark.nanobanana_sim(max_async_tasks=1, busy_retry_after=7)
async def test_busy_retry_after_is_settable(api, nanobanana_sim):
    with nanobanana_sim.hold():
        await generate(api, mode="async")
        response = await generate(api, mode="async")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


async def test_remaining_credits_follow_the_balance(api):
    first = (await generate(api, quantity=2)).json()
    second = (await generate(api, mode="async")).json()
    assert first["remainingCredits"] == 98
    assert second["remainingCredits"] == 97
    assert (await api.get("/credits")).json() == {"data": {"credits": 97}}
