"""client.download() against the simulator's CDN over a real socket, with its CDN faults."""

from datetime import timedelta

import httpx
import pytest

from nanobanana import DownloadError, FakeClock, PollPolicy, RetryPolicy
from nanobanana._download import image_extension
from nanobanana.testing import Simulator, render_image

FAST_RETRIES = RetryPolicy(wait_initial=0.005, wait_max=0.02, timeout=20.0)
FAST_POLLS = PollPolicy(first_delay=0.01, max_interval=0.02, jitter=0.0)


def fast_client(sim):
    return sim.client(retry_policy=FAST_RETRIES, poll_policy=FAST_POLLS)


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


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("cdn_html", "cdn_html"),
        ("cdn_cut", "cdn_cut"),
        ("cdn_cut_chunked", "cdn_cut"),
        ("cdn_cut_close", "cdn_cut"),
        ("cdn_reset", "reset"),
        ("cdn_500", "status"),
    ],
)
async def test_a_transient_cdn_fault_is_retried_and_the_whole_image_saved(
    sim, tmp_path, fault, kind
):
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        sim.inject(fault, times=2)
        (path,) = await client.download(generation, tmp_path)
    record = sim.generation(generation.id)
    assert path.read_bytes() == render_image(record.prompt, 0, size=sim.config.image_size)
    requests = await logged_cdn_requests(sim, 3)
    assert [r.faults for r in requests] == [(kind,), (kind,), ()]
    assert listing(tmp_path) == [path.name]


async def test_an_html_page_that_never_ends_is_an_error_and_leaves_no_file(sim, tmp_path):
    async with fast_client(sim) as client:
        generation = await client.generate("p")
        sim.inject("cdn_html", times=None)
        with pytest.raises(DownloadError, match="text/html") as info:
            await client.download(generation, tmp_path, timeout=0.1)
    assert "sig=" not in str(info.value)
    assert "?" not in info.value.url
    assert info.value.generation_id == generation.id
    assert info.value.unsaved_urls == generation.image_urls
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


async def test_an_expired_url_raises_naming_the_url_without_its_signature(sim, tmp_path):
    clock = FakeClock(start=sim.clock.now())  # the client's clock moves with the CDN's
    async with sim.client(clock=clock) as client:
        generation = await client.generate("p")
        sim.clock.advance(FIFTEEN_DAYS + 60)
        clock.advance(FIFTEEN_DAYS + 60)
        with pytest.raises(DownloadError, match="15 days") as info:
            await client.download(generation, tmp_path)
    assert "expired at" in str(info.value)
    assert info.value.status_code == 403
    assert info.value.url == generation.image_urls[0].split("?")[0]
    assert "sig=" not in str(info.value)
    assert listing(tmp_path) == []


async def test_a_generation_polled_16_days_later_says_its_urls_expired(sim, tmp_path):
    clock = FakeClock(start=sim.clock.now())
    async with sim.client(clock=clock) as client:
        job = await client.submit("p")
        generation = await job.wait()
        assert generation.expires_at == generation.created_at + timedelta(days=15)
        sim.clock.advance(16 * 24 * 3600)
        clock.advance(16 * 24 * 3600)
        with pytest.raises(DownloadError, match="expired at") as info:
            await client.download(generation, tmp_path)
    assert "generate the image again" in str(info.value)
    assert info.value.generation_id == generation.id


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


async def test_a_cdn_that_stalls_mid_body_is_given_up_at_the_timeout(sim, tmp_path):
    async with fast_client(sim) as client:
        generation = await client.generate("p", quantity=2)
        sim.inject("cdn_stall", path=f"/img/{generation.id}/1.png")
        with pytest.raises(DownloadError, match="timeout") as info:
            await client.download(generation, tmp_path, timeout=0.3)
    error = info.value
    assert error.generation_id == generation.id
    assert [p.name for p in error.saved] == [f"{generation.id}-0.png"]
    assert error.unsaved_urls == generation.image_urls[1:]
    assert listing(tmp_path) == [f"{generation.id}-0.png"]  # no .part file left
    requests = await logged_cdn_requests(sim, 2)
    stalled = [r for r in requests if r.faults == ("cdn_stall",)]
    assert [r.outcome for r in stalled] == ["disconnected"]


async def test_one_attempt_at_a_stalled_cdn_ends_at_the_client_s_read_timeout(sim, tmp_path):
    # timeout=0 is one attempt bounded only by the HTTP timeouts. A download request is
    # built bare (httpx.Request): httpx's send() gives it the client's timeouts.
    async with sim.client(timeout=0.3) as client:
        generation = await client.generate("p")
        sim.inject("cdn_stall", path=f"/img/{generation.id}/0.png")
        with pytest.raises(DownloadError) as info:
            await client.download(generation, tmp_path, timeout=0)
    assert info.value.generation_id == generation.id
    assert isinstance(info.value.__cause__, httpx.ReadTimeout) or "timed out" in str(info.value)
    assert listing(tmp_path) == []
