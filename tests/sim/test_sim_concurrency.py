"""The per-account limit on requests in flight (429), held open with the simulator's holds."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from nanobanana.testing import Simulator

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


async def test_second_concurrent_request_is_429_with_headers(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        response = await generate(api)
        assert response.status_code == 429
        assert response.json() == {
            "error": "Too many concurrent API requests for this account",
            "type": "concurrency_limit",
            "limit": 1,
            "active": 1,
        }
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-ratelimit-limit"] == "1"
        assert response.headers["x-ratelimit-active"] == "1"
        assert (await api.get("/credits")).status_code == 429
        hold.release()
        assert (await first).status_code == 200
    # Nothing was charged for the refused request.
    assert [entry.kind for entry in nanobanana_sim.ledger] == ["charge"]
    assert nanobanana_sim.in_flight() == 0
    assert nanobanana_sim.max_in_flight() == 1


async def test_sequential_requests_never_see_429(api, nanobanana_sim):
    # The slot is freed before the last byte of each answer is sent.
    for _ in range(15):
        assert (await generate(api)).status_code == 200
        assert (await api.get("/credits")).status_code == 200
    assert nanobanana_sim.max_in_flight() == 1


@pytest.mark.nanobanana_sim(concurrency_limit=2)
async def test_limit_of_two_allows_two_in_flight(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        tasks = [asyncio.create_task(generate(api)) for _ in range(2)]
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 2)
        third = await api.get("/credits")
        assert third.status_code == 429
        assert third.json()["limit"] == 2
        assert third.json()["active"] == 2
        hold.release()
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200, 200]
    assert nanobanana_sim.max_in_flight() == 2


async def test_open_stream_counts_as_in_flight(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        body = {"prompt": "a", "mode": "stream"}
        async with api.stream("POST", "/generate", json=body) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            assert nanobanana_sim.in_flight() == 1
            assert (await api.get("/credits")).status_code == 429
            hold.release()
            rest = [line async for line in lines]
        assert any('"type":"complete"' in line for line in rest)
    assert nanobanana_sim.in_flight() == 0


async def test_models_are_not_counted(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        assert (await api.get("/models")).status_code == 200
        hold.release()
        await first


async def test_accounts_have_separate_limits(api, nanobanana_sim):
    nanobanana_sim.add_account("nb_second", credits=3)
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        other = await api.get("/credits", headers={"Authorization": "Bearer nb_second"})
        assert other.json() == {"data": {"credits": 3}}
        assert nanobanana_sim.max_in_flight("nb_second") == 1
        hold.release()
        await first


@pytest.mark.nanobanana_sim(retry_after=None)
async def test_retry_after_can_be_omitted(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        response = await api.get("/credits")
        hold.release()
        await first
    assert response.status_code == 429
    assert "retry-after" not in response.headers


@pytest.mark.nanobanana_sim(retry_after=2.5)
async def test_retry_after_is_settable(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        response = await api.get("/credits")
        hold.release()
        await first
    assert response.headers["retry-after"] == "2.5"


async def test_client_leaving_a_sync_request_frees_the_slot_and_the_generation_goes_on(
    api, nanobanana_sim
):
    with nanobanana_sim.hold() as hold:
        first = asyncio.create_task(generate(api))
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 0)
        (generation,) = nanobanana_sim.generations
        assert generation.status == "processing"
        hold.release()
    assert nanobanana_sim.generation(generation.id).status == "completed"
    await nanobanana_sim.wait_for_async(lambda: len(nanobanana_sim.requests) == 1)
    assert nanobanana_sim.requests[0].outcome == "disconnected"
    assert nanobanana_sim.requests[0].status is None


async def test_peak_in_flight_counts_the_requests_the_limit_refused_too():
    with Simulator(concurrency_limit=1) as sim:
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as http:
            with sim.hold():
                held = asyncio.create_task(http.post("/generate", json={"prompt": "x"}))
                await sim.wait_for_async(lambda: sim.in_flight() == 1)
                refused = await http.get("/credits")
            await held
        assert refused.status_code == 429
        assert (sim.max_in_flight(), sim.peak_in_flight()) == (1, 2)
        async with httpx.AsyncClient() as admin:
            accounts = (await admin.get(sim.api_origin + "/_sim/accounts")).json()["data"]
        assert accounts[0]["peak_in_flight"] == 2
