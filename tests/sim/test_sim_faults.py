"""Every fault kind, how faults are matched and counted, and random faults."""

from __future__ import annotations

import asyncio
import json
import ssl

import httpx
import pytest

from nanobanana.testing import FAULT_KINDS, Fault, Simulator, fingerprint

TLS = ssl.create_default_context()
HEARTBEAT = {"type": "status", "message": "Processing...", "progress": 0}
CONNECTION_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


async def generate(api, **body):
    return await api.post("/generate", json={"prompt": "a banana", **body})


def json_events(raw: bytes) -> list[dict]:
    """The events of an SSE body, skipping what is not JSON (as clients must)."""
    events = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            try:
                events.append(json.loads(line[6:]))
            except ValueError:
                continue
    return events


async def collect_stream(api, chunks: list[bytes]) -> None:
    """Read a stream into ``chunks``, keeping what came before an error."""
    body = {"prompt": "a", "mode": "stream"}
    async with api.stream("POST", "/generate", json=body) as response:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)  # noqa: PERF401 - kept even when the stream breaks


async def stream_chunks(api, **body) -> list[bytes]:
    payload = {"prompt": "a banana", "mode": "stream", **body}
    async with api.stream("POST", "/generate", json=payload) as response:
        assert response.status_code == 200
        return [chunk async for chunk in response.aiter_raw()]


# -- status faults -------------------------------------------------------------------


async def test_500_before_charge_charges_nothing_and_hits_once(api, nanobanana_sim):
    nanobanana_sim.inject("status", status=500, path="/generate")
    response = await generate(api)
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert nanobanana_sim.ledger == ()
    assert (await generate(api)).status_code == 200
    assert nanobanana_sim.requests[0].faults == ("status",)
    assert nanobanana_sim.requests[1].faults == ()


async def test_500_after_charge_charges_and_the_generation_runs(api, nanobanana_sim):
    nanobanana_sim.inject("500_after_charge")
    response = await generate(api, mode="async")
    assert response.status_code == 500
    assert [entry.kind for entry in nanobanana_sim.ledger] == ["charge"]
    (generation,) = nanobanana_sim.generations
    assert generation.status == "completed"
    assert nanobanana_sim.requests[0].generation_id == generation.id


async def test_after_charge_fault_waits_for_a_request_that_gets_charged(api, nanobanana_sim):
    nanobanana_sim.inject("500_after_charge")
    assert (await generate(api, prompt="")).status_code == 400
    nanobanana_sim.add_account(nanobanana_sim.api_key, credits=0)
    assert (await generate(api)).status_code == 402
    nanobanana_sim.add_account(nanobanana_sim.api_key, credits=5)
    assert (await generate(api)).status_code == 500
    assert (await generate(api)).status_code == 200
    assert [r.faults for r in nanobanana_sim.requests] == [(), (), ("status",), ()]
    assert nanobanana_sim.faults == []


async def test_429_fault_has_the_documented_body_and_headers(api, nanobanana_sim):
    nanobanana_sim.inject("429")
    response = await generate(api)
    assert response.status_code == 429
    assert response.json()["type"] == "concurrency_limit"
    assert response.json()["limit"] == 1
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-ratelimit-limit"] == "1"
    assert "x-ratelimit-active" in response.headers
    assert nanobanana_sim.ledger == ()


async def test_503_fault_on_async_submit(api, nanobanana_sim):
    nanobanana_sim.inject("503", retry_after=3, mode="async")
    assert (await generate(api)).status_code == 200  # sync is not matched
    response = await generate(api, mode="async")
    assert response.status_code == 503
    assert response.json() == {
        "error": "Server is busy, too many concurrent tasks. Please retry later.",
        "type": "server_busy",
        "activeTasks": 10,
    }
    assert response.headers["retry-after"] == "3"


@pytest.mark.parametrize(
    ("preset", "value"),
    [
        ("garbage_retry_after", "soon, maybe"),
        ("429", "-5"),
        ("503", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("503", 2.5),
    ],
)
async def test_retry_after_is_sent_verbatim_even_garbage(api, nanobanana_sim, preset, value):
    if preset == "garbage_retry_after":
        nanobanana_sim.inject(preset)
    else:
        nanobanana_sim.inject(preset, retry_after=value)
    response = await api.get("/credits")
    assert response.status_code in (429, 503)
    assert response.headers["retry-after"] == (value if isinstance(value, str) else "2.5")


async def test_html_error_page(api, nanobanana_sim):
    nanobanana_sim.inject("html_error")
    response = await api.get("/credits")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")
    assert "502 Bad Gateway" in response.text


async def test_status_fault_with_a_custom_body(api, nanobanana_sim):
    nanobanana_sim.inject("status", status=500, body="upstream exploded")
    nanobanana_sim.inject("status", status=418, body={"weird": True})
    first = await api.get("/credits")
    assert first.headers["content-type"].startswith("text/plain")
    assert first.text == "upstream exploded"
    second = await api.get("/credits")
    assert second.status_code == 418
    assert second.json() == {"weird": True}


async def test_wrong_content_type(api, nanobanana_sim):
    nanobanana_sim.inject("wrong_content_type", path="/credits")
    response = await api.get("/credits")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.json() == {"data": {"credits": 100}}


# -- delays and resets ---------------------------------------------------------------


async def test_delay_before_answering(api, nanobanana_sim):
    nanobanana_sim.inject("delay", seconds=0.2, path="/credits")
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await api.get("/credits")
    assert response.status_code == 200
    assert loop.time() - started >= 0.2
    assert nanobanana_sim.requests[0].faults == ("delay",)


async def test_delay_combines_with_a_status(api, nanobanana_sim):
    nanobanana_sim.inject("delay", seconds=0.05)
    nanobanana_sim.inject("429")
    response = await api.get("/credits")
    assert response.status_code == 429
    assert set(nanobanana_sim.requests[0].faults) == {"delay", "status"}


async def test_reset_before_processing_charges_nothing(api, nanobanana_sim):
    nanobanana_sim.inject("reset", path="/generate")
    with pytest.raises(CONNECTION_ERRORS):
        await generate(api)
    assert nanobanana_sim.ledger == ()
    assert nanobanana_sim.generations == ()
    record = nanobanana_sim.requests[0]
    assert (record.outcome, record.status) == ("reset", None)
    assert record.key_fingerprint == fingerprint(nanobanana_sim.api_key)
    assert nanobanana_sim.in_flight() == 0
    assert (await generate(api)).status_code == 200


async def test_reset_after_processing_charges(api, nanobanana_sim):
    nanobanana_sim.inject("reset_after")
    with pytest.raises(CONNECTION_ERRORS):
        await generate(api)
    assert [entry.kind for entry in nanobanana_sim.ledger] == ["charge"]
    assert len(nanobanana_sim.generations) == 1
    assert nanobanana_sim.in_flight() == 0


# -- stream faults -------------------------------------------------------------------


@pytest.mark.parametrize("with_id", [False, True])
async def test_sse_cut_after_n_events(api, nanobanana_sim, with_id):
    nanobanana_sim.inject("sse_cut", after_events=2, with_id=with_id)
    chunks: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        await collect_stream(api, chunks)
    events = json_events(b"".join(chunks))
    assert len(events) == 2
    (generation,) = nanobanana_sim.generations
    assert all(("generationId" in e) == with_id for e in events)
    assert [e.get("generationId", generation.id) for e in events] == [generation.id] * 2
    # The generation goes on; it is charged and pollable.
    poll = await api.get("/generate", params={"id": generation.id})
    assert poll.json()["data"]["processingStatus"] == "completed"
    assert nanobanana_sim.requests[0].outcome == "cut"
    assert nanobanana_sim.in_flight() == 0


async def test_sse_split_sends_tiny_pieces_even_inside_utf8_characters(api, nanobanana_sim):
    nanobanana_sim.inject("sse_split")
    chunks = await stream_chunks(api)
    raw = b"".join(chunks)
    events = json_events(raw)
    assert events[-1]["type"] == "complete"
    assert len(chunks) > 4 * len(events)

    def decodes(chunk: bytes) -> bool:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            return False
        return True

    assert not all(decodes(chunk) for chunk in chunks)
    assert "\U0001f34c" in raw.decode()


async def test_sse_junk_lines_between_events(api, nanobanana_sim):
    nanobanana_sim.inject("sse_junk", count=2)
    raw = b"".join(await stream_chunks(api))
    lines = [line for line in raw.decode().split("\n") if line]
    assert ": keep-alive" in lines
    assert "data: this is not json" in lines
    assert "data: [DONE]" in lines
    events = json_events(raw)
    assert events[0]["message"] == "Starting generation..."
    assert events[-1]["type"] == "complete"


async def test_sse_extra_heartbeats_go_below_reported_progress(api, nanobanana_sim):
    nanobanana_sim.inject("sse_heartbeats", count=2)
    events = json_events(b"".join(await stream_chunks(api)))
    assert events.count(HEARTBEAT) >= 2 * 4
    index_75 = next(i for i, e in enumerate(events) if e.get("progress") == 75)
    assert events[index_75 + 1] == HEARTBEAT


async def test_sse_oversize_line(api, nanobanana_sim):
    nanobanana_sim.inject("sse_oversize", size=2_000_000)
    raw = b"".join(await stream_chunks(api))
    longest = max(raw.split(b"\n"), key=len)
    assert len(longest) > 2_000_000
    assert json.loads(longest[6:])["type"] == "status"
    assert json_events(raw)[-1]["type"] == "complete"


async def test_stream_faults_do_not_hit_other_modes(api, nanobanana_sim):
    nanobanana_sim.inject("sse_cut")
    assert (await generate(api)).status_code == 200
    assert (await api.get("/credits")).status_code == 200
    assert len(nanobanana_sim.faults) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        await stream_chunks(api)
    assert nanobanana_sim.faults == []


# -- CDN faults ----------------------------------------------------------------------


async def image_url(api) -> str:
    return (await generate(api)).json()["imageUrls"][0]


async def test_cdn_html_instead_of_png(api, nanobanana_sim):
    url = await image_url(api)
    nanobanana_sim.inject("cdn_html")
    async with httpx.AsyncClient(verify=TLS) as cdn:
        response = await cdn.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert (await cdn.get(url)).headers["content-type"] == "image/png"


async def test_cdn_huge_body(api, nanobanana_sim):
    url = await image_url(api)
    nanobanana_sim.inject("cdn_huge", size=300_000)
    async with httpx.AsyncClient(verify=TLS) as cdn:
        response = await cdn.get(url)
    assert response.headers["content-length"] == "300000"
    assert len(response.content) == 300_000
    assert response.content.startswith(b"\x89PNG")


async def test_cdn_redirect_to_another_origin(api, nanobanana_sim):
    url = await image_url(api)
    nanobanana_sim.inject("cdn_redirect")
    nanobanana_sim.inject("cdn_redirect", location="http://elsewhere.invalid/x.png")
    async with httpx.AsyncClient(verify=TLS) as cdn:
        first = await cdn.get(url)
        second = await cdn.get(url)
    assert first.status_code == 302
    assert first.headers["location"] == url.replace("127.0.0.1", "localhost")
    assert second.headers["location"] == "http://elsewhere.invalid/x.png"


async def test_cdn_status_410(api, nanobanana_sim):
    url = await image_url(api)
    nanobanana_sim.inject("cdn_410")
    async with httpx.AsyncClient(verify=TLS) as cdn:
        response = await cdn.get(url)
    assert response.status_code == 410
    assert response.headers["content-type"].startswith("text/html")
    # CDN faults never hit the API.
    assert nanobanana_sim.requests[-1].origin == "cdn"


async def read_into(response, chunks):
    async for chunk in response.aiter_raw():
        chunks.append(chunk)


async def test_cdn_cut_sends_the_full_length_then_part_of_the_image_and_drops(api, nanobanana_sim):
    url = await image_url(api)
    async with httpx.AsyncClient(verify=TLS) as cdn:
        whole = (await cdn.get(url)).content
        nanobanana_sim.inject("cdn_cut", size=40)
        received: list[bytes] = []
        async with cdn.stream("GET", url) as response:
            assert response.headers["content-length"] == str(len(whole))
            with pytest.raises(httpx.RemoteProtocolError):
                await read_into(response, received)
        assert b"".join(received) == whole[:40]
        assert (await cdn.get(url)).content == whole  # used up: whole again
    record = [r for r in nanobanana_sim.requests if r.origin == "cdn"][1]
    assert (record.status, record.outcome, record.faults) == (200, "cut", ("cdn_cut",))


async def test_cdn_cut_chunked_sends_chunks_then_drops_before_the_last(api, nanobanana_sim):
    url = await image_url(api)
    async with httpx.AsyncClient(verify=TLS) as cdn:
        whole = (await cdn.get(url)).content
        nanobanana_sim.inject("cdn_cut_chunked", size=40)
        received: list[bytes] = []
        async with cdn.stream("GET", url) as response:
            assert "content-length" not in response.headers
            assert response.headers["transfer-encoding"] == "chunked"
            with pytest.raises(httpx.RemoteProtocolError):
                await read_into(response, received)
        assert b"".join(received) == whole[:40]


async def test_cdn_cut_close_ends_a_body_without_length_by_a_plain_close(api, nanobanana_sim):
    url = await image_url(api)
    async with httpx.AsyncClient(verify=TLS) as cdn:
        whole = (await cdn.get(url)).content
        nanobanana_sim.inject("cdn_cut", framing="close", size=40)
        response = await cdn.get(url)
    # To HTTP a whole response: only the missing IEND shows the image is cut.
    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert "transfer-encoding" not in response.headers
    assert response.content == whole[:40]
    assert whole.endswith(b"IEND\xaeB`\x82")
    await nanobanana_sim.wait_for_async(
        lambda: len([r for r in nanobanana_sim.requests if r.origin == "cdn"]) == 2
    )
    record = [r for r in nanobanana_sim.requests if r.origin == "cdn"][1]
    assert (record.status, record.outcome, record.faults) == (200, "cut", ("cdn_cut",))


def test_a_fault_with_an_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="framing"):
        Fault(kind="cdn_cut", framing="gzip")


async def test_cdn_stall_sends_part_of_the_image_then_waits_for_the_client_to_leave(
    api, nanobanana_sim
):
    url = await image_url(api)
    async with httpx.AsyncClient(verify=TLS) as cdn:
        whole = (await cdn.get(url)).content
        nanobanana_sim.inject("cdn_stall", size=40)
        received: list[bytes] = []
        async with cdn.stream("GET", url) as response:
            assert response.headers["content-length"] == str(len(whole))
            async for chunk in response.aiter_raw():
                received.append(chunk)
                if sum(map(len, received)) >= 40:
                    break  # the rest never comes: leave
        assert b"".join(received) == whole[:40]
        assert (await cdn.get(url)).content == whole  # used up: whole again
    await nanobanana_sim.wait_for_async(
        lambda: len([r for r in nanobanana_sim.requests if r.origin == "cdn"]) == 3
    )
    record = [r for r in nanobanana_sim.requests if r.origin == "cdn"][1]
    assert (record.status, record.outcome, record.faults) == (200, "disconnected", ("cdn_stall",))


@pytest.mark.parametrize(
    ("preset", "seen"),
    [
        ("cdn_500", 500),
        ("cdn_503", 503),
        ("cdn_reset", None),
        ("cdn_cut", None),
        ("cdn_cut_chunked", None),
        ("cdn_cut_close", 200),
        ("cdn_html", 200),
    ],
)
async def test_the_transient_cdn_presets_hit_only_the_cdn(api, nanobanana_sim, preset, seen):
    nanobanana_sim.random_faults(rate=1.0, seed=1, kinds=[preset])
    url = await image_url(api)  # the API is not hit: no preset applies to it
    async with httpx.AsyncClient(verify=TLS) as cdn:
        try:
            response = await cdn.get(url)
        except CONNECTION_ERRORS:
            status = None
        else:
            status = response.status_code
            whole = response.content.startswith(b"\x89PNG") and response.content.endswith(
                b"IEND\xaeB`\x82"
            )
            assert not whole  # an HTML page, or a PNG without its end
    assert status == seen
    assert [r.faults for r in nanobanana_sim.requests if r.origin == "api"] == [()]


# -- outcome overrides ---------------------------------------------------------------


async def test_outcome_fault_fails_a_generation_with_a_message(api, nanobanana_sim):
    nanobanana_sim.inject("outcome", outcome="failure", error_message="GPU on fire")
    response = await generate(api, mode="async")
    poll = await api.get("/generate", params={"id": response.json()["generationId"]})
    assert poll.json()["data"]["errorMessage"] == "GPU on fire"


async def test_outcome_fault_sets_the_generation_time(api, nanobanana_sim):
    nanobanana_sim.inject("outcome", generation_time=60.0)
    response = await generate(api, mode="async")
    assert nanobanana_sim.generation(response.json()["generationId"]).status == "processing"


async def test_outcome_fault_can_make_a_failing_prompt_succeed(api, nanobanana_sim):
    nanobanana_sim.inject("outcome", outcome="success")
    assert (await generate(api, prompt="[fail]")).json()["success"] is True


# -- matching, counting, random ------------------------------------------------------


async def test_method_path_mode_filters_and_times(api, nanobanana_sim):
    nanobanana_sim.inject("status", status=500, method="POST", mode="async", times=2)
    assert (await api.get("/credits")).status_code == 200
    assert (await generate(api, mode="sync")).status_code == 200
    assert (await generate(api, mode="async")).status_code == 500
    assert nanobanana_sim.faults[0]["remaining"] == 1
    assert (await generate(api, mode="async")).status_code == 500
    assert (await generate(api, mode="async")).status_code == 200


async def test_times_none_hits_every_match_until_cleared(api, nanobanana_sim):
    nanobanana_sim.inject("status", status=500, path="/credits", times=None)
    for _ in range(3):
        assert (await api.get("/credits")).status_code == 500
    nanobanana_sim.clear_faults()
    assert (await api.get("/credits")).status_code == 200


async def test_faults_apply_in_injection_order(api, nanobanana_sim):
    nanobanana_sim.inject("status", status=500)
    nanobanana_sim.inject("status", status=502)
    assert [(await api.get("/credits")).status_code for _ in range(3)] == [500, 502, 200]


async def statuses_with_random_faults(seed: int) -> list[int]:
    with Simulator(credits=1000) as sim:
        sim.random_faults(rate=0.5, seed=seed, kinds=["429", "500", "503"])
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        async with httpx.AsyncClient(base_url=sim.base_url, headers=headers, verify=TLS) as api:
            return [(await api.get("/credits")).status_code for _ in range(30)]


async def test_random_faults_are_reproducible_with_a_seed():
    first = await statuses_with_random_faults(7)
    assert first == await statuses_with_random_faults(7)
    assert first != await statuses_with_random_faults(8)
    assert {429, 500, 503, 200} <= set(first)


async def test_random_faults_rate_zero_and_one(api, nanobanana_sim):
    nanobanana_sim.random_faults(rate=0.0, seed=1)
    assert (await api.get("/credits")).status_code == 200
    nanobanana_sim.random_faults(rate=1.0, seed=1, kinds=["429"])
    assert (await api.get("/credits")).status_code == 429
    # Presets that cannot act on a request are skipped: no stream fault on a GET.
    nanobanana_sim.random_faults(rate=1.0, seed=1, kinds=["sse_cut"])
    assert (await api.get("/credits")).status_code == 200


def test_fault_validation():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault(kind="explode")
    with pytest.raises(ValueError, match="needs status="):
        Fault(kind="status")
    with pytest.raises(ValueError, match="after_charge"):
        Fault(kind="delay", after_charge=True)
    with pytest.raises(ValueError, match="times"):
        Fault(kind="reset", times=0)
    with Simulator() as sim, pytest.raises(ValueError, match="unknown preset"):
        sim.random_faults(kinds=["nope"])
    assert Fault(kind="cdn_html").origin == "cdn"
    assert Fault(kind="delay", method="get").method == "GET"
    assert "sse_split" in FAULT_KINDS
