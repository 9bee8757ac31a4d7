"""Stream mode: SSE framing, progress, heartbeats, terminal events, disconnect then poll."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from nanobanana.testing import Simulator

TLS = ssl.create_default_context()
HEARTBEAT = {"type": "status", "message": "Processing...", "progress": 0}


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


def parse_frames(raw: bytes) -> list[dict]:
    """Strictly parse `data: <json>\\n\\n` frames (stream-mode docs), nothing else allowed."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        assert b"\n" not in block
        events.append(json.loads(block.removeprefix(b"data: ")))
    return events


async def stream_raw(api, prompt="a city at night", **extra) -> tuple[httpx.Response, bytes]:
    body = {"prompt": prompt, "mode": "stream", **extra}
    async with api.stream("POST", "/generate", json=body) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, raw


async def test_stream_frames_statuses_then_complete(api, nanobanana_sim):
    response, raw = await stream_raw(api)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_frames(raw)
    assert events[0] == {"type": "status", "message": "Starting generation...", "progress": 0}
    statuses = [e for e in events[:-1] if e != HEARTBEAT]
    assert all(e["type"] == "status" for e in statuses)
    progress = [e["progress"] for e in statuses]
    assert progress == sorted(progress)
    assert progress[-1] < 100
    complete = events[-1]
    (generation,) = nanobanana_sim.generations
    assert complete == {
        "type": "complete",
        "message": "Generation complete",
        "progress": 100,
        "data": {
            "success": True,
            "imageUrls": list(generation.image_urls),
            "generationId": generation.id,
        },
    }
    # By default only the complete event names the generation (as in the docs).
    assert all("generationId" not in e for e in events[:-1])
    assert nanobanana_sim.requests[-1].status == 200
    assert nanobanana_sim.requests[-1].outcome == "response"


@pytest.mark.nanobanana_sim(heartbeat_interval=0.02)
async def test_heartbeats_repeat_while_the_generation_runs(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        body = {"prompt": "a", "mode": "stream"}
        async with api.stream("POST", "/generate", json=body) as response:
            lines = response.aiter_lines()
            events = []
            while events.count(HEARTBEAT) < 3:
                line = await anext(lines)
                if line:
                    events.append(json.loads(line.removeprefix("data: ")))
            hold.release()
            rest = [json.loads(line[6:]) async for line in lines if line]
    assert events[-1] == HEARTBEAT
    assert rest[-1]["type"] == "complete"


@pytest.mark.nanobanana_sim(generation_time=0.2, heartbeat_interval=0.04)
async def test_heartbeats_interleave_with_progress_over_the_generation_time(api):
    _, raw = await stream_raw(api)
    events = parse_frames(raw)
    assert events.count(HEARTBEAT) >= 2
    progress = [e["progress"] for e in events if e["type"] == "status" and e != HEARTBEAT]
    assert progress == [0, 25, 50, 75]


async def test_fail_marker_ends_the_stream_with_an_error_event(api, nanobanana_sim):
    _, raw = await stream_raw(api, prompt="x [fail]")
    events = parse_frames(raw)
    assert events[-1] == {
        "type": "error",
        "message": "Generation failed due to server error",
        "data": {"success": False, "error": "Generation failed due to server error"},
    }
    assert nanobanana_sim.credits() == 99


async def test_unsafe_marker_ends_the_stream_with_a_safety_error(api):
    _, raw = await stream_raw(api, prompt="x [unsafe]")
    last = parse_frames(raw)[-1]
    assert last["type"] == "error"
    assert last["message"] == "Content safety check failed"
    assert last["data"] == {
        "success": False,
        "error": "Content safety check failed",
        "warning": True,
    }


@pytest.mark.nanobanana_sim(stream_event_ids=True)
async def test_stream_event_ids_option_puts_the_id_on_every_event(api, nanobanana_sim):
    _, raw = await stream_raw(api)
    events = parse_frames(raw)
    (generation,) = nanobanana_sim.generations
    assert {e["generationId"] for e in events[:-1]} == {generation.id}
    assert events[-1]["data"]["generationId"] == generation.id


@pytest.mark.nanobanana_sim(stream_event_ids=True)
async def test_disconnect_then_poll(api, nanobanana_sim):
    with nanobanana_sim.hold() as hold:
        body = {"prompt": "a lighthouse", "mode": "stream"}
        async with api.stream("POST", "/generate", json=body) as response:
            first = await anext(response.aiter_lines())
        generation_id = json.loads(first.removeprefix("data: "))["generationId"]
        # Leaving the stream frees the slot; the generation goes on (stream-mode docs).
        await nanobanana_sim.wait_for_async(lambda: nanobanana_sim.in_flight() == 0)
        poll = await api.get("/generate", params={"id": generation_id})
        assert poll.json()["data"]["processingStatus"] == "processing"
        hold.release()
    poll = await api.get("/generate", params={"id": generation_id})
    data = poll.json()["data"]
    assert data["processingStatus"] == "completed"
    assert len(data["outputImageUrls"]) == 1
    assert nanobanana_sim.requests[0].outcome == "disconnected"
    assert nanobanana_sim.credits() == 99


async def test_stream_errors_before_the_stream_are_plain_json(api):
    response = await api.post("/generate", json={"mode": "stream"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"


async def test_keep_alive_connection_serves_a_stream_then_more_requests(nanobanana_sim):
    # One connection: the stream ends cleanly (chunked terminator), so it is reused.
    limits = httpx.Limits(max_connections=1)
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, limits=limits, verify=TLS
    ) as client:
        _, raw = await stream_raw(client)
        assert parse_frames(raw)[-1]["type"] == "complete"
        assert (await client.get("/credits")).status_code == 200
        assert (await client.post("/generate", json={"prompt": "b"})).status_code == 200
