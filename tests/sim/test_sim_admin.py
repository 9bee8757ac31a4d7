"""The admin API under /_sim/: the same control as the in-process methods, over HTTP."""

from __future__ import annotations

import ssl

import httpx
import pytest

from nanobanana.testing import Simulator, fingerprint

TLS = ssl.create_default_context()


@pytest.fixture
async def admin(nanobanana_sim: Simulator):
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.api_origin + "/_sim", verify=TLS
    ) as client:
        yield client


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


async def test_requests_ledger_and_generations(admin, api, nanobanana_sim):
    response = await api.post("/generate", json={"prompt": "a cat", "quantity": 2})
    generation_id = response.json()["generationId"]
    requests = (await admin.get("/requests")).json()["data"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/api/v1/generate", 200)
    ]
    assert requests[0]["key_fingerprint"] == fingerprint(nanobanana_sim.api_key)
    assert nanobanana_sim.api_key not in (await admin.get("/requests")).text
    ledger = (await admin.get("/ledger")).json()["data"]
    assert [(e["kind"], e["amount"], e["generation_id"]) for e in ledger] == [
        ("charge", 2, generation_id)
    ]
    generations = (await admin.get("/generations")).json()["data"]
    assert generations[0]["id"] == generation_id
    assert generations[0]["status"] == "completed"
    one = (await admin.get(f"/generations/{generation_id}")).json()["data"]
    assert one["quantity"] == 2
    assert (await admin.get("/generations/clnothere")).status_code == 404
    # The admin API itself is not in the request log.
    assert len(nanobanana_sim.requests) == 1


async def test_accounts(admin, api, nanobanana_sim):
    response = await admin.post(
        "/accounts",
        json={"api_key": "nb_admin_made", "credits": 7, "concurrency_limit": 3, "pro": True},
    )
    assert response.status_code == 200
    assert response.json()["data"]["credits"] == 7
    balance = await api.get("/credits", headers={"Authorization": "Bearer nb_admin_made"})
    assert balance.json() == {"data": {"credits": 7}}
    accounts = (await admin.get("/accounts")).json()["data"]
    assert {a["key_fingerprint"] for a in accounts} == {
        fingerprint(nanobanana_sim.api_key),
        fingerprint("nb_admin_made"),
    }
    assert "nb_admin_made" not in (await admin.get("/accounts")).text
    await admin.post(
        "/accounts", json={"api_key": "nb_admin_made", "credits": 1, "api_access": False}
    )
    denied = await api.get("/credits", headers={"Authorization": "Bearer nb_admin_made"})
    assert denied.status_code == 403


async def test_faults(admin, api):
    response = await admin.post("/faults", json={"kind": "status", "status": 500, "times": 2})
    assert response.status_code == 200
    fault = response.json()["data"]
    assert (fault["kind"], fault["status"], fault["times"]) == ("status", 500, 2)
    listed = (await admin.get("/faults")).json()["data"]
    assert listed[0]["remaining"] == 2
    assert (await api.get("/credits")).status_code == 500
    assert (await admin.delete("/faults")).json() == {"data": []}
    assert (await api.get("/credits")).status_code == 200
    bad = await admin.post("/faults", json={"kind": "explode"})
    assert bad.status_code == 400
    assert "unknown fault kind" in bad.json()["error"]


async def test_random_faults(admin, api):
    response = await admin.post("/faults/random", json={"rate": 1.0, "seed": 3, "kinds": ["503"]})
    assert response.json()["data"][-1] == {
        "kind": "random",
        "rate": 1.0,
        "seed": 3,
        "kinds": ["503"],
    }
    assert (await api.get("/credits")).status_code == 503
    await admin.delete("/faults")
    assert (await api.get("/credits")).status_code == 200


async def test_clock_advance_expires_images(admin, api):
    (url,) = (await api.post("/generate", json={"prompt": "a"})).json()["imageUrls"]
    before = (await admin.get("/clock")).json()["data"]["timestamp"]
    response = await admin.post("/clock/advance", json={"seconds": 16 * 86400})
    after = response.json()["data"]
    assert after["timestamp"] - before >= 16 * 86400
    assert after["now"].endswith("Z")
    async with httpx.AsyncClient(verify=TLS) as cdn:
        assert (await cdn.get(url)).status_code == 403
    assert (await admin.post("/clock/advance", json={"seconds": -1})).status_code == 400


async def test_hold_release_and_generation_time(admin, api, nanobanana_sim):
    assert (await admin.post("/hold")).json() == {"data": {"holds": 1}}
    submitted = await api.post("/generate", json={"prompt": "a", "mode": "async"})
    generation_id = submitted.json()["generationId"]
    poll = await api.get("/generate", params={"id": generation_id})
    assert poll.json()["data"]["processingStatus"] == "processing"
    await admin.post("/release")
    poll = await api.get("/generate", params={"id": generation_id})
    assert poll.json()["data"]["processingStatus"] == "completed"
    await admin.post("/generation-time", json={"seconds": 60})
    submitted = await api.post("/generate", json={"prompt": "b", "mode": "async"})
    assert nanobanana_sim.generation(submitted.json()["generationId"]).status == "processing"
    bad = await admin.post("/generation-time", json={"seconds": 1, "model": "nope"})
    assert bad.status_code == 400


async def test_reset(admin, api, nanobanana_sim):
    await api.post("/generate", json={"prompt": "a"})
    await admin.post("/faults", json={"kind": "status", "status": 500})
    nanobanana_sim.clock.advance(100)
    assert (await admin.post("/reset")).json() == {"data": {"reset": True}}
    assert nanobanana_sim.credits() == 100
    assert nanobanana_sim.ledger == ()
    assert nanobanana_sim.requests == ()
    assert nanobanana_sim.generations == ()
    assert nanobanana_sim.faults == []
    assert (await api.get("/credits")).status_code == 200


async def test_unknown_admin_routes_and_bad_bodies(admin):
    assert (await admin.get("/nope")).status_code == 404
    assert (await admin.put("/faults")).status_code == 404
    response = await admin.post("/faults", content=b"{oops")
    assert response.status_code == 400
    assert (await admin.post("/faults", content=b"[]")).status_code == 400
    assert (await admin.post("/accounts", json={"credits": 1})).status_code == 400


@pytest.mark.nanobanana_sim(admin=False)
async def test_admin_api_can_be_turned_off(admin):
    assert (await admin.get("/requests")).status_code == 404


async def test_the_index_lists_every_call_and_every_listed_read_answers(admin):
    from nanobanana.testing._admin import ROUTES  # noqa: PLC0415

    for path in ("/", ""):  # /_sim/ as the banner prints it, and /_sim
        response = await admin.get(path)
        assert response.status_code == 200
        index = response.json()["data"]
        assert index["api"] == "/api/v1"
        assert [(r["method"], r["path"]) for r in index["routes"]] == [
            (r.method, r.path) for r in ROUTES
        ]
    for route in ROUTES:
        if route.method == "GET" and "<" not in route.path:
            answer = await admin.get(route.path.removeprefix("/_sim"))
            assert answer.status_code == 200, route


async def test_generation_time_ranges_over_the_admin_api(admin, api, nanobanana_sim):
    set_range = await admin.post("/generation-time", json={"seconds": "0.01-0.02"})
    assert set_range.json()["data"] == {
        "seconds": "0.01-0.02",
        "low": 0.01,
        "high": 0.02,
        "mode": None,
        "model": None,
    }
    listed = await admin.post(
        "/generation-time", json={"seconds": [0.03, 0.04], "model": "nanobanan-2"}
    )
    assert listed.status_code == 200
    read = (await admin.get("/generation-time")).json()["data"]
    assert read["default"]["seconds"] == "0.01-0.02"
    assert read["models"]["nanobanan-2"]["seconds"] == "0.03-0.04"
    assert read["models"]["nano-banana"]["seconds"] == "0.01-0.02"
    submitted = await api.post("/generate", json={"prompt": "a", "mode": "async"})
    drawn = nanobanana_sim.generation(submitted.json()["generationId"]).generation_time
    assert 0.01 <= drawn <= 0.02
    for bad in ("2-1", -1, "soon", [1, 2, 3]):
        response = await admin.post("/generation-time", json={"seconds": bad})
        assert response.status_code == 400, bad
        assert "generation_time" in response.json()["error"]
