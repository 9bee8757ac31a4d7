"""client.download() against the simulator's CDN over a real socket, with its CDN faults."""

import pytest

from nanobanana import DownloadError
from nanobanana._download import image_extension
from nanobanana.testing import Simulator

FIFTEEN_DAYS = 15 * 24 * 3600


@pytest.fixture
async def sim():
    async with Simulator(credits=100, concurrency_limit=4) as sim:
        yield sim


@pytest.fixture
async def client(sim):
    async with sim.client() as client:
        yield client


def cdn_requests(sim):
    return [r for r in sim.requests if r.origin == "cdn"]


async def logged_cdn_requests(sim, count):
    # The simulator logs a request once its answer is sent, which can be just after
    # the client has read it: wait for the log to catch up.
    await sim.wait_for_async(lambda: len(cdn_requests(sim)) >= count)
    return cdn_requests(sim)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


async def test_images_are_written_whole_with_no_key_and_our_user_agent(sim, client, tmp_path):
    generation = await client.generate("three bananas", quantity=3)
    paths = await client.download(generation, tmp_path / "out")
    assert [p.name for p in paths] == [f"{generation.id}-{i}.png" for i in range(3)]
    for path in paths:
        assert image_extension(path.read_bytes()[:16]) == "png"
    assert listing(tmp_path / "out") == [p.name for p in paths]
    requests = await logged_cdn_requests(sim, 3)
    assert len(requests) == 3
    assert all(r.status == 200 for r in requests)
    assert not any(r.authorization for r in requests)
    assert all(r.user_agent == client.user_agent for r in requests)


async def test_a_hostile_generation_id_cannot_leave_the_folder(sim, client, tmp_path):
    sim.inject("outcome", outcome="success", generation_id="../../escaped")
    generation = await client.generate("p")
    assert generation.id == "../../escaped"
    dest = tmp_path / "a" / "b"
    (path,) = await client.download(generation, dest)
    assert path.parent == dest.resolve()
    assert path.name.endswith("-0.png")
    assert "/" not in path.name
    assert not path.name.startswith(".")
    assert listing(tmp_path) == ["a"]
    assert listing(tmp_path / "a") == ["b"]


async def test_an_html_page_instead_of_a_png_is_an_error_and_leaves_no_file(sim, client, tmp_path):
    generation = await client.generate("p")
    sim.inject("cdn_html")
    with pytest.raises(DownloadError, match="text/html") as info:
        await client.download(generation, tmp_path)
    assert "sig=" not in str(info.value)
    assert "?" not in info.value.url
    assert listing(tmp_path) == []


async def test_a_huge_body_is_refused_by_its_declared_size(sim, client, tmp_path):
    generation = await client.generate("p")
    sim.inject("cdn_huge", size=8 * 1024 * 1024)
    with pytest.raises(DownloadError, match="max_size"):
        await client.download(generation, tmp_path, max_size=1024 * 1024)
    assert listing(tmp_path) == []


async def test_a_redirect_to_another_host_is_followed_without_the_key(sim, client, tmp_path):
    generation = await client.generate("p")
    sim.inject("cdn_redirect")
    (path,) = await client.download(generation, tmp_path)
    assert image_extension(path.read_bytes()[:16]) == "png"
    requests = await logged_cdn_requests(sim, 2)
    assert [r.status for r in requests] == [302, 200]
    assert not any(r.authorization for r in requests)


async def test_an_expired_url_raises_naming_the_url_without_its_signature(sim, client, tmp_path):
    generation = await client.generate("p")
    sim.clock.advance(FIFTEEN_DAYS + 60)
    with pytest.raises(DownloadError, match="15 days") as info:
        await client.download(generation, tmp_path)
    assert info.value.status_code == 403
    assert info.value.url == generation.image_urls[0].split("?")[0]
    assert "sig=" not in str(info.value)
    assert listing(tmp_path) == []


async def test_a_410_is_not_retried(sim, client, tmp_path):
    generation = await client.generate("p")
    sim.inject("cdn_410")
    with pytest.raises(DownloadError, match="410"):
        await client.download(generation, tmp_path)
    assert len(await logged_cdn_requests(sim, 1)) == 1


async def test_a_cdn_500_is_retried(sim, tmp_path):
    async with sim.client(max_retries=2) as client:
        generation = await client.generate("p")
        sim.inject("status", status=500, origin="cdn")
        (path,) = await client.download(generation, tmp_path)
    assert path.exists()
    assert [r.status for r in await logged_cdn_requests(sim, 2)] == [500, 200]


async def test_downloads_do_not_count_against_the_account_limit(sim, client, tmp_path):
    generation = await client.generate("p", quantity=4)
    await client.download(generation, tmp_path)
    assert sim.max_in_flight() == 1
    assert client.governor_stats().max_active == 1
