"""Every endpoint and its documented shapes, checked with plain httpx from the docs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import httpx
import pytest

from nanobanana.testing import DEFAULT_MODELS, Simulator, fingerprint

# Building httpx's default TLS context costs ~0.2 s per client: share one (the
# simulator speaks plain HTTP anyway).
TLS = ssl.create_default_context()


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


@pytest.fixture
async def anonymous(nanobanana_sim: Simulator):
    async with httpx.AsyncClient(base_url=nanobanana_sim.base_url, verify=TLS) as client:
        yield client


async def test_models_need_no_auth_and_list_the_docs_and_live_ids(anonymous):
    response = await anonymous.get("/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    models = response.json()["data"]
    names = [model["name"] for model in models]
    assert names == [
        "nano-banana",
        "gemini-2.5-flash-image",
        "nanobanan-2",
        "nanobanan-2-2k",
        "seedream-5.0-2k",
        "nanobanan2&pro",
    ]
    assert models[0] == {
        "name": "nano-banana",
        "displayName": "Nano Banana",
        "creditsCost": 1,
        "supportsImageInput": True,
        "supportsAspectRatio": True,
        "requiresPro": False,
    }
    assert [m["requiresPro"] for m in models] == [False] * 5 + [True]


async def test_credits_shape(api):
    response = await api.get("/credits")
    assert response.status_code == 200
    assert response.json() == {"data": {"credits": 100}}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key"),
        ({"Authorization": "Bearer nb_wrong"}, "Invalid API key"),
        ({"Authorization": "Basic abc"}, "Invalid Authorization header"),
        ({"Authorization": "Bearer"}, "Invalid Authorization header"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/credits"), ("POST", "/generate"), ("GET", "/generate?id=x")]
)
async def test_missing_or_invalid_key_is_401(anonymous, headers, message, method, path):
    response = await anonymous.request(method, path, headers=headers, json={"prompt": "a"})
    assert response.status_code == 401
    assert response.json()["error"].startswith(message)


@pytest.mark.nanobanana_sim(api_access=False)
async def test_account_without_api_access_is_403(api, nanobanana_sim):
    response = await api.get("/credits")
    assert response.status_code == 403
    assert response.json() == {"error": "API access is not enabled for this account"}
    response = await api.post("/generate", json={"prompt": "a cat"})
    assert response.status_code == 403
    assert nanobanana_sim.ledger == ()


async def test_unknown_path_is_404_and_wrong_method_is_405(api):
    assert (await api.get("/nope")).status_code == 404
    response = await api.delete("/generate")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_sync_generation_success_shape(api, nanobanana_sim):
    response = await api.post("/generate", json={"prompt": "A cute orange cat", "mode": "sync"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "generationId", "imageUrls", "creditsUsed", "remainingCredits"}
    assert body["success"] is True
    assert body["generationId"].startswith("cl")
    assert len(body["imageUrls"]) == 1
    assert body["imageUrls"][0].startswith(nanobanana_sim.cdn_base_url + "/img/")
    assert body["creditsUsed"] == 1
    assert body["remainingCredits"] == 99


async def test_mode_defaults_to_sync(api, nanobanana_sim):
    response = await api.post("/generate", json={"prompt": "a cat"})
    assert response.json()["success"] is True
    assert nanobanana_sim.requests[-1].mode == "sync"
    assert nanobanana_sim.generations[-1].mode == "sync"


async def test_unsafe_marker_gives_the_content_safety_warning_and_spends_credits(api):
    response = await api.post("/generate", json={"prompt": "something [unsafe]"})
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "success": False,
        "warning": True,
        "generationId": body["generationId"],
        "message": "Content safety check failed",
        "creditsUsed": 1,
        "remainingCredits": 99,
    }
    poll = await api.get("/generate", params={"id": body["generationId"]})
    assert poll.json()["data"]["processingStatus"] == "failed"


async def test_fail_marker_in_sync_mode_is_500_after_the_charge(api, nanobanana_sim):
    response = await api.post("/generate", json={"prompt": "boom [fail]"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "Generation failed due to server error"
    assert body["type"] == "generation_failed"
    assert nanobanana_sim.credits() == 99
    assert [e.kind for e in nanobanana_sim.ledger] == ["charge"]
    poll = await api.get("/generate", params={"id": body["generationId"]})
    assert poll.json()["data"]["processingStatus"] == "failed"


async def test_async_submit_then_poll_processing_then_completed(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        response = await api.post(
            "/generate", json={"prompt": "Chinese ink painting", "mode": "async"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body == {
            "success": True,
            "async": True,
            "generationId": body["generationId"],
            "message": (
                "Generation started. Use GET /api/v1/generate?id={generationId} "
                "to poll for results."
            ),
            "creditsUsed": 1,
            "remainingCredits": 99,
        }
        poll = await api.get("/generate", params={"id": body["generationId"]})
        data = poll.json()["data"]
        assert data["processingStatus"] == "processing"
        assert data["outputImageUrls"] is None
        assert "errorMessage" not in data
        hold.release()
        poll = await api.get("/generate", params={"id": body["generationId"]})
    data = poll.json()["data"]
    assert set(data) == {
        "id",
        "prompt",
        "outputImageUrls",
        "modelUsed",
        "processingStatus",
        "creditsUsed",
        "createdAt",
    }
    assert data["id"] == body["generationId"]
    assert data["prompt"] == "Chinese ink painting"
    assert data["modelUsed"] == "nano-banana"
    assert data["processingStatus"] == "completed"
    assert data["creditsUsed"] == 1
    assert len(data["outputImageUrls"]) == 1


async def test_async_failure_is_polled_as_failed_with_error_message(api):
    response = await api.post("/generate", json={"prompt": "x [fail]", "mode": "async"})
    poll = await api.get("/generate", params={"id": response.json()["generationId"]})
    data = poll.json()["data"]
    assert data["processingStatus"] == "failed"
    assert data["outputImageUrls"] is None
    assert data["errorMessage"] == "Generation failed due to server error"


@pytest.mark.nanobanana_sim(clock_start=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
async def test_created_at_is_iso8601_utc_with_z_on_the_simulated_clock(api):
    response = await api.post("/generate", json={"prompt": "a", "mode": "async"})
    poll = await api.get("/generate", params={"id": response.json()["generationId"]})
    created = poll.json()["data"]["createdAt"]
    assert created.startswith("2025-01-01T00:00:0")
    assert created.endswith("Z")
    assert len(created) == len("2025-01-01T00:00:00.000Z")


async def test_poll_without_id_is_400_and_unknown_id_is_404(api):
    response = await api.get("/generate")
    assert response.status_code == 400
    assert response.json() == {"error": "Missing required parameter: id"}
    response = await api.get("/generate", params={"id": "clnothere"})
    assert response.status_code == 404
    assert response.json() == {"error": "Generation not found"}


async def test_another_accounts_generation_is_404(api, nanobanana_sim):
    nanobanana_sim.add_account("nb_other", credits=5)
    generation_id = (await api.post("/generate", json={"prompt": "mine"})).json()["generationId"]
    other = {"Authorization": "Bearer nb_other"}
    response = await api.get("/generate", params={"id": generation_id}, headers=other)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Invalid JSON body"),
        (b"[1, 2]", "Request body must be a JSON object"),
        (b"{}", "Missing required parameter: prompt"),
        (b'{"prompt": 42}', "prompt must be a string"),
        (b'{"prompt": "   "}', "prompt must not be empty"),
        (b'{"prompt": "a", "mode": "batch"}', 'Invalid mode. Expected one of "sync"'),
        (b'{"prompt": "a", "mode": 1}', "Invalid mode"),
        (b'{"prompt": "a", "selectedModel": 3}', "selectedModel must be a string"),
        (b'{"prompt": "a", "selectedModel": "dall-e"}', "Unknown model: dall-e"),
        (b'{"prompt": "a", "referenceImageUrls": "http://x"}', "referenceImageUrls must be"),
        (b'{"prompt": "a", "referenceImageUrls": [1]}', "referenceImageUrls must be"),
        (b'{"prompt": "a", "aspectRatio": "wide"}', "aspectRatio must be"),
        (b'{"prompt": "a", "quantity": "2"}', "quantity must be a number"),
        (b'{"prompt": "a", "quantity": true}', "quantity must be a number"),
        (b'{"prompt": "a", "quantity": 1.5}', "quantity must be a whole number"),
    ],
)
async def test_bad_generate_bodies_are_400_and_charge_nothing(api, nanobanana_sim, body, message):
    response = await api.post(
        "/generate", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert nanobanana_sim.ledger == ()
    assert nanobanana_sim.credits() == 100


async def test_pro_model_is_403_without_pro_and_works_with_it(api, nanobanana_sim):
    response = await api.post("/generate", json={"prompt": "a", "selectedModel": "nanobanan2&pro"})
    assert response.status_code == 403
    assert "requires a Pro subscription" in response.json()["error"]
    nanobanana_sim.add_account("nb_pro", credits=10, pro=True)
    response = await api.post(
        "/generate",
        json={"prompt": "a", "selectedModel": "nanobanan2&pro"},
        headers={"Authorization": "Bearer nb_pro"},
    )
    assert response.status_code == 200
    assert response.json()["creditsUsed"] == 4


async def test_every_listed_model_except_pro_generates(api):
    for model in DEFAULT_MODELS:
        if model.requires_pro:
            continue
        response = await api.post("/generate", json={"prompt": "a", "selectedModel": model.name})
        assert response.status_code == 200, model.name
        poll = await api.get("/generate", params={"id": response.json()["generationId"]})
        assert poll.json()["data"]["modelUsed"] == model.name


async def test_request_log_holds_fingerprints_never_keys(api, nanobanana_sim):
    await api.get("/credits")
    await api.get("/models", headers={"Authorization": ""})
    record = nanobanana_sim.requests[0]
    assert record.method == "GET"
    assert record.path == "/api/v1/credits"
    assert record.origin == "api"
    assert record.status == 200
    assert record.authorization is True
    assert record.key_fingerprint == fingerprint(nanobanana_sim.api_key)
    assert nanobanana_sim.api_key not in repr(nanobanana_sim.requests)
    assert record.end >= record.time


async def test_sync_generation_is_held_for_the_generation_time(api, nanobanana_sim):
    nanobanana_sim.set_generation_time(0.2)
    started = asyncio.get_running_loop().time()
    response = await api.post("/generate", json={"prompt": "a"})
    assert response.status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.2


async def test_slow_marker_and_per_model_time(api, nanobanana_sim):
    nanobanana_sim.set_generation_time(30.0, model="nanobanan-2")
    response = await api.post("/generate", json={"prompt": "a [slow=0.05]"})
    assert response.status_code == 200
    submitted = await api.post(
        "/generate", json={"prompt": "b", "mode": "async", "selectedModel": "nanobanan-2"}
    )
    generation = nanobanana_sim.generation(submitted.json()["generationId"])
    assert generation.status == "processing"
