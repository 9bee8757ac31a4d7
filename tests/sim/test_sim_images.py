"""The simulated CDN: real PNGs on a separate origin, signed URLs that expire."""

from __future__ import annotations

import ssl
import struct
import zlib
from urllib.parse import urlsplit

import httpx
import pytest

from nanobanana.testing import Simulator, render_image

TLS = ssl.create_default_context()
FIFTEEN_DAYS = 15 * 24 * 3600


@pytest.fixture
async def api(nanobanana_sim: Simulator):
    headers = {"Authorization": f"Bearer {nanobanana_sim.api_key}"}
    async with httpx.AsyncClient(
        base_url=nanobanana_sim.base_url, headers=headers, verify=TLS
    ) as client:
        yield client


@pytest.fixture
async def cdn():
    async with httpx.AsyncClient(verify=TLS) as client:
        yield client


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Check a PNG's structure and return width, height and its RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = [raw[i * stride : (i + 1) * stride] for i in range(height)]
    assert all(row[0] == 0 for row in rows)  # filter type None
    return width, height, [row[1:] for row in rows]


async def image_urls(api, **body) -> list[str]:
    response = await api.post("/generate", json={"prompt": "a banana", **body})
    return response.json()["imageUrls"]


async def test_image_urls_serve_valid_pngs_from_another_origin(api, cdn, nanobanana_sim):
    urls = await image_urls(api, quantity=2)
    assert all(url.startswith(nanobanana_sim.cdn_base_url + "/img/") for url in urls)
    assert urlsplit(nanobanana_sim.cdn_base_url).port != urlsplit(nanobanana_sim.base_url).port
    bodies = []
    for url in urls:
        response = await cdn.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        width, height, rows = decode_png(response.content)
        assert (width, height) == (64, 64)
        assert len(set(rows)) > 1  # not a flat colour
        bodies.append(response.content)
    assert bodies[0] != bodies[1]
    assert bodies[0] == render_image("a banana", 0)


async def test_cdn_requests_are_logged_with_whether_authorization_was_sent(
    api, cdn, nanobanana_sim
):
    (url,) = await image_urls(api)
    await cdn.get(url)
    await cdn.get(url, headers={"Authorization": "Bearer leaked"})
    cdn_records = [r for r in nanobanana_sim.requests if r.origin == "cdn"]
    assert [r.authorization for r in cdn_records] == [False, True]
    assert all(r.status == 200 for r in cdn_records)


async def test_images_are_deterministic_for_a_prompt_and_index():
    assert render_image("x", 0) == render_image("x", 0)
    assert render_image("x", 0) != render_image("y", 0)
    assert decode_png(render_image("x", 1, size=16))[:2] == (16, 16)


@pytest.mark.nanobanana_sim(image_size=8)
async def test_image_size_is_settable(api, cdn):
    (url,) = await image_urls(api)
    assert decode_png((await cdn.get(url)).content)[:2] == (8, 8)


async def test_head_request_gives_headers_only(api, cdn):
    (url,) = await image_urls(api)
    response = await cdn.head(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == b""


async def test_urls_expire_after_fifteen_days_of_simulated_time(api, cdn, nanobanana_sim):
    (url,) = await image_urls(api)
    nanobanana_sim.clock.advance(FIFTEEN_DAYS - 60)
    assert (await cdn.get(url)).status_code == 200
    nanobanana_sim.clock.advance(120)
    response = await cdn.get(url)
    assert response.status_code == 403
    assert "expired" in response.text


async def test_tampered_signature_or_expiry_is_403(api, cdn):
    (url,) = await image_urls(api)
    assert (await cdn.get(url.replace("sig=", "sig=0"))).status_code == 403
    extended = url.replace("expires=", "expires=9")
    assert (await cdn.get(extended)).status_code == 403
    assert (await cdn.get(url.split("?")[0])).status_code == 403


def signed(sim, generation_id: str, index: int, expires: int = 2**40) -> str:
    sig = sim._state.signature(generation_id, index, expires)
    return f"{sim.cdn_base_url}/img/{generation_id}/{index}.png?expires={expires}&sig={sig}"


async def test_unknown_images_are_404_and_unsigned_ones_403(api, cdn, nanobanana_sim):
    (url,) = await image_urls(api)
    # Another index with this URL's signature: the signature does not match.
    assert (await cdn.get(url.replace("/0.png", "/1.png"))).status_code == 403
    assert (await cdn.get(signed(nanobanana_sim, "clnothere", 0))).status_code == 404
    assert (await cdn.get(nanobanana_sim.cdn_base_url + "/other")).status_code == 404
    assert (await cdn.get(nanobanana_sim.cdn_base_url + "/img/x/y.png")).status_code == 404


async def test_index_beyond_quantity_is_404_even_when_signed(api, cdn, nanobanana_sim):
    await image_urls(api)
    generation = nanobanana_sim.generations[0]
    assert (await cdn.get(signed(nanobanana_sim, generation.id, 0))).status_code == 200
    assert (await cdn.get(signed(nanobanana_sim, generation.id, 1))).status_code == 404


async def test_images_of_unfinished_generations_are_404(api, cdn, nanobanana_sim):
    with nanobanana_sim.hold():
        response = await api.post("/generate", json={"prompt": "a", "mode": "async"})
        (url,) = nanobanana_sim.generation(response.json()["generationId"]).image_urls
        assert (await cdn.get(url)).status_code == 404
    assert (await cdn.get(url)).status_code == 200


async def test_pythons_default_urllib_user_agent_is_refused(api, cdn):
    # "Some CDN-protected image URLs may reject the default Python urllib user agent"
    (url,) = await image_urls(api)
    response = await cdn.get(url, headers={"User-Agent": "Python-urllib/3.11"})
    assert response.status_code == 403


async def test_the_api_origin_does_not_serve_images(api, nanobanana_sim):
    (url,) = await image_urls(api)
    on_api = url.replace(nanobanana_sim.cdn_base_url, nanobanana_sim.api_origin)
    assert (await api.get(on_api)).status_code == 404


async def test_hostile_generation_id_is_escaped_in_urls(api, cdn, nanobanana_sim):
    nanobanana_sim.inject("outcome", generation_id="../../etc/passwd")
    (url,) = await image_urls(api)
    assert "/img/..%2F..%2Fetc%2Fpasswd/0.png?" in url
    response = await cdn.get(url)
    assert response.status_code == 200
    decode_png(response.content)
