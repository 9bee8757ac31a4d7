import asyncio
import logging
import os
import random
import re
import stat
from datetime import datetime, timedelta, timezone

import anyio
import attrs
import httpx
import pytest
import respx

from nanobanana import (
    AsyncNanoBanana,
    DownloadError,
    FakeClock,
    Generation,
    GenerationStatus,
    NanoBananaError,
    RetryPolicy,
)
from nanobanana._download import image_extension, safe_stem
from nanobanana._logs import LOG_FIELDS
from transport_servers import ScriptedServer

API = "https://api.test/api/v1"
KEY = "nb_download_test_secret_key"
# Each ends where its format ends: a body without Content-Length is checked for that.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100 + b"png-body" + b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 100 + b"jpeg-body\xff\xd9"
WEBP = b"RIFF" + (8 + 4 + 50).to_bytes(4, "little") + b"WEBPVP8 " + b"\x02" * 54
GIF = b"GIF89a" + b"\x03" * 50 + b";"
AVIF = (
    b"\x00\x00\x00\x14ftypavif\x00\x00\x00\x00mif1"  # ftyp box, 20 bytes
    + (b"\x00\x00\x00\x10meta" + b"\x04" * 8)  # meta box, 16 bytes
    + (b"\x00\x00\x00\x01mdat" + (16 + 40).to_bytes(8, "big") + b"\x05" * 40)  # 64-bit size
)
HTML = b"<!DOCTYPE html><html><body>Access denied</body></html>"
SIGNED = "?X-Amz-Signature=s3cr3tsig&Expires=99"


def gen(gid, *urls, status=GenerationStatus.COMPLETED):
    return Generation(id=gid, status=status, image_urls=tuple(urls))


class Chunks(httpx.AsyncByteStream):
    def __init__(self, parts, *, gate=None, started=None, log=None):
        self.parts = parts
        self.gate = gate
        self.started = started
        self.log = log if log is not None else []

    async def __aiter__(self):
        for index, part in enumerate(self.parts):
            if index == 1 and self.started is not None:
                self.started.set()
            if index == 1 and self.gate is not None:
                await self.gate.wait()
            if isinstance(part, Exception):
                raise part
            self.log.append(len(part))
            yield part


@pytest.fixture
def router():
    return respx.Router(assert_all_called=False)


@pytest.fixture
async def make_client(router):
    made = []

    async def make(**kwargs):
        http = kwargs.pop("http", None) or httpx.AsyncClient(
            transport=httpx.MockTransport(router.async_handler)
        )
        kwargs.setdefault("clock", FakeClock())
        client = AsyncNanoBanana(
            api_key=KEY, base_url=API, http_client=http, rng=random.Random(5), **kwargs
        )
        made.append((client, http))
        return client

    yield make
    for client, http in made:
        await client.aclose()
        await http.aclose()


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


async def test_a_generations_images_are_written_with_our_names_and_no_api_key(
    make_client, router, tmp_path
):
    a = router.get("https://cdn.test/img/a.png").respond(200, content=PNG)
    b = router.get("https://cdn.test/img/b.png").respond(200, content=JPEG)
    client = await make_client()
    dest = tmp_path / "out" / "nested"
    paths = await client.download(
        gen("gen_abc", "https://cdn.test/img/a.png" + SIGNED, "https://cdn.test/img/b.png"), dest
    )
    assert [p.name for p in paths] == ["gen_abc-0.png", "gen_abc-1.jpg"]
    assert paths[0].read_bytes() == PNG
    assert paths[1].read_bytes() == JPEG
    assert listing(dest) == ["gen_abc-0.png", "gen_abc-1.jpg"]
    for route in (a, b):
        request = route.calls.last.request
        assert "authorization" not in request.headers
        assert request.headers["user-agent"] == client.user_agent
    assert a.calls.last.request.url.params["X-Amz-Signature"] == "s3cr3tsig"
    # Downloads go to the CDN: they do not take the API's concurrency slots.
    assert client.governor_stats().max_active == 0


async def test_files_get_the_permissions_of_the_umask_not_a_private_temp_mode(
    make_client, router, tmp_path
):
    router.get("https://cdn.test/a").respond(200, content=PNG)
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "hostile",
    ["../../x", "/etc/passwd", "a\x00b", "..", ".", ".hidden", "C:\\Windows\\x", "é/ü", "x" * 500],
)
async def test_hostile_generation_ids_never_leave_the_folder(
    make_client, router, tmp_path, hostile
):
    router.get("https://cdn.test/a").respond(200, content=PNG)
    client = await make_client()
    dest = tmp_path / "dest"
    (path,) = await client.download(gen(hostile, "https://cdn.test/a"), dest)
    assert path.parent == dest.resolve()
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*-0\.png", path.name)
    assert len(path.name) < 120
    assert listing(tmp_path) == ["dest"]


def test_safe_stem_keeps_clean_ids_and_separates_ids_that_sanitise_alike():
    assert safe_stem("clx9Abc_12-3.x") == "clx9Abc_12-3.x"
    assert safe_stem("a/b") != safe_stem("a_b")
    assert safe_stem("") != safe_stem(" ")
    assert "/" not in safe_stem("../../etc/passwd")
    assert not safe_stem("...").startswith(".")


@pytest.mark.parametrize(
    ("body", "ext"),
    [(PNG, "png"), (JPEG, "jpg"), (WEBP, "webp"), (GIF, "gif")],
)
async def test_the_extension_follows_the_bytes_not_the_url(
    make_client, router, tmp_path, body, ext
):
    router.get("https://cdn.test/picture.png").respond(
        200, content=body, headers={"content-type": "image/png"}
    )
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/picture.png"), tmp_path)
    assert path.name == f"g-0.{ext}"
    assert path.read_bytes() == body


def test_image_extension_recognises_avif_and_rejects_text():
    assert image_extension(b"\x00\x00\x00\x1cftypavif\x00\x00") == "avif"
    assert image_extension(b"<html>") is None
    assert image_extension(b"") is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (HTML, "text/html"),
        (HTML, "image/png"),  # the Content-Type is not trusted: the bytes decide
        (b"", "image/png"),
        (b'{"error": "rate limited"}', "application/json"),
    ],
    ids=["html", "html-labelled-png", "empty", "json"],
)
async def test_a_body_that_is_no_image_is_retried_like_a_5xx_and_never_written(
    make_client, router, tmp_path, body, content_type
):
    route = router.get("https://cdn.test/a.png")
    route.side_effect = [
        httpx.Response(200, content=body, headers={"content-type": content_type}),
        httpx.Response(200, content=body, headers={"content-type": content_type}),
        httpx.Response(200, content=PNG, headers={"content-type": "image/png"}),
    ]
    clock = FakeClock()
    client = await make_client(clock=clock, max_retries=0)  # max_retries: API calls only
    (path,) = await client.download(gen("g", "https://cdn.test/a.png"), tmp_path)
    assert path.read_bytes() == PNG
    assert route.call_count == 3
    assert len(clock.sleeps) == 2  # the client's backoff between attempts
    assert listing(tmp_path) == ["g-0.png"]


async def test_a_page_that_stays_no_image_is_a_download_error_when_the_deadline_passes(
    make_client, router, tmp_path
):
    route = router.get("https://cdn.test/a.png").respond(
        200, content=HTML, headers={"content-type": "text/html"}
    )
    clock = FakeClock()
    client = await make_client(clock=clock)
    start = clock.monotonic()
    with pytest.raises(DownloadError, match="text/html") as info:
        await client.download(gen("g", "https://cdn.test/a.png" + SIGNED), tmp_path, timeout=60)
    # Retried for as long as the deadline allows, never past it: not 4 attempts.
    assert route.call_count > client.retry_policy.attempts
    assert clock.monotonic() - start <= 60
    assert clock.monotonic() - start + client.retry_policy.wait_max > 60
    assert info.value.url == "https://cdn.test/a.png"
    assert info.value.status_code == 200
    assert "s3cr3tsig" not in str(info.value)
    assert listing(tmp_path) == []


async def test_a_timeout_of_zero_tries_each_image_once(make_client, router, tmp_path):
    route = router.get("https://cdn.test/a").respond(200, content=b"")
    clock = FakeClock()
    client = await make_client(clock=clock)
    with pytest.raises(DownloadError, match="empty body"):
        await client.download("https://cdn.test/a", tmp_path, timeout=0)
    assert route.call_count == 1
    assert clock.sleeps == []
    assert listing(tmp_path) == []


@pytest.mark.parametrize("bad", [-1, float("nan"), "10", True])
async def test_a_bad_timeout_is_a_value_error(make_client, tmp_path, bad):
    client = await make_client()
    with pytest.raises(ValueError, match="timeout"):
        await client.download("https://cdn.test/a", tmp_path, timeout=bad)


async def test_a_declared_size_over_the_limit_is_refused_before_reading(
    make_client, router, tmp_path
):
    log = []
    router.get("https://cdn.test/big").respond(
        200,
        headers={"content-length": str(10_000)},
        stream=Chunks([PNG, b"\x00" * (10_000 - len(PNG))], log=log),
    )
    client = await make_client()
    with pytest.raises(DownloadError, match="max_size"):
        await client.download(gen("g", "https://cdn.test/big"), tmp_path, max_size=1000)
    assert log == []
    assert listing(tmp_path) == []


async def test_a_body_growing_past_the_limit_stops_the_read(make_client, router, tmp_path):
    log = []
    router.get("https://cdn.test/big").respond(
        200, stream=Chunks([PNG] + [b"\x00" * 400] * 100, log=log)
    )
    client = await make_client()
    with pytest.raises(DownloadError, match="larger than 1000 bytes"):
        await client.download(gen("g", "https://cdn.test/big"), tmp_path, max_size=1000)
    assert len(log) < 10
    assert listing(tmp_path) == []


@pytest.mark.parametrize("code", [403, 404, 410])
async def test_an_expired_or_missing_image_names_the_url_without_its_query(
    make_client, router, tmp_path, code
):
    route = router.get("https://cdn.test/old.png").respond(code, text="gone")
    client = await make_client()
    with pytest.raises(DownloadError, match="15 days") as info:
        await client.download(gen("g", "https://cdn.test/old.png" + SIGNED), tmp_path)
    assert info.value.status_code == code
    assert info.value.url == "https://cdn.test/old.png"
    assert "s3cr3tsig" not in str(info.value)
    assert "Expires" not in repr(info.value)
    assert route.call_count == 1


async def test_server_errors_are_retried_with_the_clients_backoff(make_client, router, tmp_path):
    clock = FakeClock()
    route = router.get("https://cdn.test/a")
    route.side_effect = [
        httpx.Response(502),
        httpx.Response(503, headers={"Retry-After": "4"}),
        httpx.Response(200, content=PNG),
    ]
    client = await make_client(clock=clock)
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == PNG
    assert route.call_count == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= client.retry_policy.wait_initial
    assert clock.sleeps[1] == 4.0


async def test_a_connection_dropped_mid_body_is_retried_from_the_start(
    make_client, router, tmp_path
):
    route = router.get("https://cdn.test/a")
    route.side_effect = [
        httpx.Response(200, stream=Chunks([PNG[:20], httpx.ReadError("reset")])),
        httpx.ConnectError("refused"),
        httpx.Response(200, content=PNG),
    ]
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == PNG
    assert listing(tmp_path) == ["g-0.png"]


async def test_retries_go_on_until_the_deadline_not_for_a_count(make_client, router, tmp_path):
    route = router.get("https://cdn.test/a" + SIGNED).respond(500)
    clock = FakeClock()
    client = await make_client(clock=clock, retry_policy=RetryPolicy(attempts=3, timeout=120))
    with pytest.raises(DownloadError, match="500") as info:
        await client.download(gen("g", "https://cdn.test/a" + SIGNED), tmp_path)
    assert route.call_count > 3
    assert sum(clock.sleeps) <= 120
    assert max(clock.sleeps) <= client.retry_policy.wait_max
    assert info.value.status_code == 500
    assert "s3cr3tsig" not in str(info.value)


async def test_without_any_deadline_the_policys_attempts_bound_the_retries(
    make_client, router, tmp_path
):
    route = router.get("https://cdn.test/a").respond(503)
    client = await make_client(retry_policy=RetryPolicy(attempts=3, timeout=None))
    with pytest.raises(DownloadError, match="503"):
        await client.download("https://cdn.test/a", tmp_path)
    assert route.call_count == 3


async def test_transport_errors_are_download_errors_chained_to_the_cause(
    make_client, router, tmp_path
):
    router.get("https://cdn.test/a").mock(side_effect=httpx.ConnectError("refused"))
    client = await make_client(retry_policy=RetryPolicy(attempts=2))
    with pytest.raises(DownloadError, match="ConnectError") as info:
        await client.download("https://cdn.test/a", tmp_path)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_a_redirect_to_another_host_is_followed_without_the_key(
    make_client, router, tmp_path
):
    first = router.get("https://cdn.test/a.png").respond(
        302, headers={"location": "https://other-cdn.test/real.png" + SIGNED}
    )
    second = router.get("https://other-cdn.test/real.png").respond(200, content=PNG)
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a.png"), tmp_path)
    assert path.read_bytes() == PNG
    for route in (first, second):
        assert "authorization" not in route.calls.last.request.headers
        assert route.calls.last.request.headers["user-agent"] == client.user_agent


async def test_a_redirect_to_the_api_host_still_carries_no_key(make_client, router, tmp_path):
    router.get("https://cdn.test/a").respond(301, headers={"location": f"{API}/img.png"})
    api = router.get(f"{API}/img.png").respond(200, content=PNG)
    client = await make_client()
    await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert "authorization" not in api.calls.last.request.headers


async def test_a_borrowed_client_with_default_auth_headers_does_not_leak_them(
    router, tmp_path, monkeypatch
):
    route = router.get("https://cdn.test/a").respond(200, content=PNG)
    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(router.async_handler),
            headers={"Authorization": f"Bearer {KEY}"},
            auth=("user", "pass"),
        ) as http,
        AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client,
    ):
        await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert "authorization" not in route.calls.last.request.headers


async def test_redirect_loops_and_non_http_targets_are_refused(make_client, router, tmp_path):
    router.get("https://cdn.test/loop").respond(302, headers={"location": "/loop"})
    router.get("https://cdn.test/ftp").respond(302, headers={"location": "ftp://x.test/a"})
    client = await make_client()
    with pytest.raises(DownloadError, match="redirects"):
        await client.download("https://cdn.test/loop", tmp_path)
    with pytest.raises(DownloadError, match="non-http"):
        await client.download("https://cdn.test/ftp", tmp_path)
    with pytest.raises(DownloadError, match="http"):
        await client.download("file:///etc/passwd", tmp_path)
    assert listing(tmp_path) == []


async def test_bare_urls_are_named_from_a_hash_and_each_gets_its_own_file(
    make_client, router, tmp_path
):
    router.get("https://cdn.test/x.png").respond(200, content=PNG)
    router.get("https://cdn.test/y").respond(200, content=GIF)
    client = await make_client()
    paths = await client.download(
        ["https://cdn.test/x.png", "https://cdn.test/y", "https://cdn.test/x.png"], tmp_path
    )
    names = [p.name for p in paths]
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"image-[0-9a-f]{16}-\d\.(png|gif)", n) for n in names)
    (single,) = await client.download("https://cdn.test/y", tmp_path)
    assert single.name.endswith("-0.gif")


async def test_one_failed_image_raises_after_the_others_are_written(make_client, router, tmp_path):
    router.get("https://cdn.test/ok").respond(200, content=PNG)
    router.get("https://cdn.test/gone").respond(404)
    client = await make_client()
    gone = "https://cdn.test/gone" + SIGNED
    with pytest.raises(DownloadError, match="404") as info:
        await client.download(
            gen("g_rec", "https://cdn.test/ok", gone, "https://cdn.test/ok"), tmp_path
        )
    assert listing(tmp_path) == ["g_rec-0.png", "g_rec-2.png"]
    error = info.value
    # Everything needed to recover: which generation, what was saved, what was not.
    assert error.generation_id == "g_rec"
    assert [path.name for path in error.saved] == ["g_rec-0.png", "g_rec-2.png"]
    assert error.unsaved_urls == (gone,)  # whole, to download again; not in the text
    assert "s3cr3tsig" not in str(error)
    assert "s3cr3tsig" not in repr(error)


async def test_an_error_before_any_fetch_still_lists_every_url_as_unsaved(
    make_client, router, tmp_path
):
    client = await make_client()
    (tmp_path / "file").write_text("x")
    urls = ("https://cdn.test/a", "https://cdn.test/b")
    with pytest.raises(DownloadError, match="not a folder") as info:
        await client.download(gen("g", *urls), tmp_path / "file")
    assert (info.value.generation_id, info.value.saved, info.value.unsaved_urls) == ("g", (), urls)
    with pytest.raises(DownloadError, match="http") as info:
        await client.download(["https://cdn.test/a", "ftp://x/b"], tmp_path)
    assert info.value.generation_id is None  # bare URLs: no generation known
    assert info.value.unsaved_urls == ("https://cdn.test/a", "ftp://x/b")


def created(clock, *, days_ago):
    return datetime.fromtimestamp(clock.time(), tz=timezone.utc) - timedelta(days=days_ago)


async def test_a_gone_link_after_15_days_says_it_expired_and_to_generate_again(
    make_client, router, tmp_path
):
    router.get("https://cdn.test/old.png").respond(403, text="Forbidden: URL expired")
    clock = FakeClock()
    client = await make_client(clock=clock)
    old = attrs.evolve(gen("g_old", "https://cdn.test/old.png"), created_at=None)
    old = attrs.evolve(old, expires_at=created(clock, days_ago=16) + timedelta(days=15))
    with pytest.raises(DownloadError, match="expired at") as info:
        await client.download(old, tmp_path)
    message = str(info.value)
    assert old.expires_at.isoformat(timespec="seconds") in message
    assert "generate the image again" in message
    assert info.value.generation_id == "g_old"


async def test_a_gone_link_before_its_15_days_says_it_has_not_expired_and_what_to_try(
    make_client, router, tmp_path
):
    router.get("https://cdn.test/new.png").respond(404)
    clock = FakeClock()
    client = await make_client(clock=clock)
    fresh = Generation(
        id="g_new",
        status=GenerationStatus.COMPLETED,
        image_urls=("https://cdn.test/new.png",),
        created_at=created(clock, days_ago=1),
    )
    with pytest.raises(DownloadError, match="has not expired") as info:
        await client.download(fresh, tmp_path)
    assert "client.job('g_new').wait()" in str(info.value)
    assert fresh.expires_at.isoformat(timespec="seconds") in str(info.value)


async def test_any_failure_after_expiry_mentions_the_expiry(make_client, router, tmp_path):
    router.get("https://cdn.test/a").respond(500)
    clock = FakeClock()
    client = await make_client(clock=clock)
    old = Generation(
        id="g",
        status=GenerationStatus.COMPLETED,
        image_urls=("https://cdn.test/a",),
        created_at=created(clock, days_ago=20),
    )
    with pytest.raises(DownloadError, match=r"500 .*expired at"):
        await client.download(old, tmp_path, timeout=1)


@pytest.mark.parametrize("below", [(), ("sub",)], ids=["dest is a file", "dest is under a file"])
async def test_a_file_where_the_folder_should_be_is_a_download_error_naming_it(
    make_client, router, tmp_path, below
):
    route = router.get("https://cdn.test/a").respond(200, content=PNG)
    client = await make_client()
    taken = tmp_path / "taken"
    taken.write_bytes(b"mine")
    dest = taken.joinpath(*below)
    with pytest.raises(DownloadError, match=re.escape(repr(str(dest)))) as info:
        await client.download(gen("g", "https://cdn.test/a" + SIGNED), dest)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.url == "https://cdn.test/a"
    assert "s3cr3tsig" not in str(info.value)
    assert taken.read_bytes() == b"mine"
    assert listing(tmp_path) == ["taken"]
    assert not route.called


async def test_a_directory_under_the_images_name_is_a_download_error_and_leaves_no_temp_file(
    make_client, router, tmp_path
):
    route = router.get("https://cdn.test/a").respond(200, content=PNG)
    router.get("https://cdn.test/b").respond(200, content=JPEG)
    client = await make_client()
    (tmp_path / "g-0.png").mkdir()
    with pytest.raises(DownloadError, match=re.escape(repr(str(tmp_path / "g-0.png")))) as info:
        await client.download(gen("g", "https://cdn.test/a", "https://cdn.test/b"), tmp_path)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.url == "https://cdn.test/a"
    # Not a transient failure: not retried. The other image is written, whole.
    assert route.call_count == 1
    assert listing(tmp_path) == ["g-0.png", "g-1.jpg"]
    assert list((tmp_path / "g-0.png").iterdir()) == []


async def test_cancellation_mid_body_leaves_no_partial_file(make_client, router, tmp_path):
    started = anyio.Event()
    router.get("https://cdn.test/slow").respond(
        200, stream=Chunks([PNG[:50], PNG[50:]], gate=anyio.Event(), started=started)
    )
    client = await make_client()
    async with anyio.create_task_group() as group:
        group.start_soon(client.download, gen("g", "https://cdn.test/slow"), tmp_path)
        await started.wait()
        assert any(name.endswith(".part") for name in listing(tmp_path))
        group.cancel_scope.cancel()
    assert listing(tmp_path) == []


async def test_downloads_run_at_most_download_concurrency_at_once(make_client, router, tmp_path):
    gate = anyio.Event()
    active = 0
    peak = 0
    two_running = anyio.Event()

    def respond(request):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 2:
            two_running.set()

        class Counted(Chunks):
            async def aclose(self):
                nonlocal active
                active -= 1

        return httpx.Response(200, stream=Counted([PNG[:50], PNG[50:]], gate=gate))

    router.route(host="cdn.test").mock(side_effect=respond)
    client = await make_client(download_concurrency=2)
    urls = [f"https://cdn.test/{i}" for i in range(6)]
    result = []

    async def run():
        result.extend(await client.download(gen("g", *urls), tmp_path))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await two_running.wait()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert peak == 2
        gate.set()
    assert peak == 2
    assert [p.name for p in result] == [f"g-{i}.png" for i in range(6)]


async def test_a_generation_still_processing_is_refused_with_advice(make_client, tmp_path):
    client = await make_client()
    with pytest.raises(ValueError, match="wait"):
        await client.download(gen("g", status=GenerationStatus.PROCESSING), tmp_path)
    assert await client.download(gen("g"), tmp_path) == []


async def test_bad_arguments_are_type_errors(make_client, tmp_path):
    client = await make_client()
    with pytest.raises(TypeError):
        await client.download(42, tmp_path)
    with pytest.raises(TypeError):
        await client.download([b"https://cdn.test/a"], tmp_path)
    with pytest.raises(ValueError):
        await client.download("https://cdn.test/a", tmp_path, max_size=0)


async def test_a_closed_client_refuses_to_download(make_client, tmp_path):
    client = await make_client()
    await client.aclose()
    with pytest.raises(NanoBananaError, match="closed"):
        await client.download("https://cdn.test/a", tmp_path)


def test_downloads_work_under_trio(tmp_path):
    trio = pytest.importorskip("trio")
    router = respx.Router()
    router.get("https://cdn.test/a").respond(200, content=PNG)
    router.get("https://cdn.test/b").respond(200, content=JPEG)

    async def main():
        http = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
        async with AsyncNanoBanana(api_key=KEY, base_url=API, http_client=http) as client:
            paths = await client.download(
                gen("g", "https://cdn.test/a", "https://cdn.test/b"), tmp_path
            )
        await http.aclose()
        return paths

    paths = trio.run(main)
    assert [p.name for p in paths] == ["g-0.png", "g-1.jpg"]
    assert paths[1].read_bytes() == JPEG


async def test_with_options_copies_share_the_download_concurrency(make_client, router, tmp_path):
    gate = anyio.Event()
    active = 0
    peak = 0
    two_running = anyio.Event()

    def respond(request):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 2:
            two_running.set()

        class Counted(Chunks):
            async def aclose(self):
                nonlocal active
                active -= 1

        return httpx.Response(200, stream=Counted([PNG[:50], PNG[50:]], gate=gate))

    router.route(host="cdn.test").mock(side_effect=respond)
    client = await make_client(download_concurrency=2)
    copies = [client, client.with_options(timeout=5), client.with_options(max_retries=1)]

    async def run(index, copy):
        await copy.download(gen(f"g{index}", f"https://cdn.test/{index}"), tmp_path)

    async with anyio.create_task_group() as group:
        for index, copy in enumerate(copies):
            group.start_soon(run, index, copy)
        await two_running.wait()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        # One pool, one limit: the third copy's download waits for a slot.
        assert peak == 2
        gate.set()
    assert peak == 2
    assert listing(tmp_path) == ["g0-0.png", "g1-0.png", "g2-0.png"]


async def test_a_body_that_stalls_is_cut_off_by_the_timeout_and_leaves_no_partial_file(
    make_client, router, tmp_path
):
    started = anyio.Event()
    never = anyio.Event()  # the rest of the body never comes
    router.get("https://cdn.test/stall").respond(
        200, stream=Chunks([PNG[:50], PNG[50:]], gate=never, started=started)
    )
    client = await make_client()
    # A safety net for the test only: before the fix the download never returned.
    with anyio.fail_after(10), pytest.raises(DownloadError, match="timeout") as info:
        await client.download(
            gen("g_stall", "https://cdn.test/stall" + SIGNED), tmp_path, timeout=0.05
        )
    assert started.is_set()  # the attempt was under way, not waiting to start
    error = info.value
    assert error.url == "https://cdn.test/stall"
    assert error.generation_id == "g_stall"
    assert error.unsaved_urls == ("https://cdn.test/stall" + SIGNED,)
    assert error.saved == ()
    assert "s3cr3tsig" not in str(error)
    assert listing(tmp_path) == []


WHOLE = [PNG, JPEG, WEBP, GIF, AVIF]
FORMATS = ["png", "jpg", "webp", "gif", "avif"]


@pytest.mark.parametrize("body", WHOLE, ids=FORMATS)
@pytest.mark.parametrize("cut", [1, 2, 11, 30])
async def test_a_body_without_a_length_cut_short_is_retried_not_saved_as_an_image(
    make_client, router, tmp_path, body, cut
):
    # No Content-Length, no chunked coding: the body runs to the connection's end, so
    # a connection closed early looks like a normal end to HTTP. The format's end tells.
    route = router.get("https://cdn.test/a")
    route.side_effect = [
        httpx.Response(200, stream=Chunks([body[:16], body[16:-cut]])),
        httpx.Response(200, stream=Chunks([body[:16], body[16:]])),
    ]
    clock = FakeClock()
    client = await make_client(clock=clock)
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == body
    assert route.call_count == 2
    assert len(clock.sleeps) == 1  # the client's backoff, as for a dropped connection
    assert listing(tmp_path) == [path.name]


@pytest.mark.parametrize("body", WHOLE, ids=FORMATS)
async def test_a_whole_body_without_a_length_is_saved_at_once(make_client, router, tmp_path, body):
    route = router.get("https://cdn.test/a").mock(
        side_effect=lambda request: httpx.Response(200, stream=Chunks([body[:16], body[16:]]))
    )
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == body
    assert route.call_count == 1


@pytest.mark.parametrize(
    "body",
    [
        JPEG + b"\x00" * 20 + b"\r\n",  # padding after the end-of-image marker
        GIF + b"\n",
        WEBP + b"\x00" * 8,  # more than the RIFF size: not cut
        AVIF[: -40 - 16] + b"\x00\x00\x00\x00mdat" + b"\x05" * 33,  # last box to the end
    ],
    ids=["jpeg-padded", "gif-newline", "webp-longer", "avif-size-0-box"],
)
async def test_padding_after_an_images_end_is_no_cut(make_client, router, tmp_path, body):
    route = router.get("https://cdn.test/a").mock(
        side_effect=lambda request: httpx.Response(200, stream=Chunks([body]))
    )
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == body
    assert route.call_count == 1


async def test_a_body_that_keeps_arriving_cut_short_is_a_download_error_at_the_deadline(
    make_client, router, tmp_path
):
    route = router.get("https://cdn.test/a.png").mock(
        side_effect=lambda request: httpx.Response(200, stream=Chunks([PNG[:-4]]))
    )
    client = await make_client()
    with pytest.raises(DownloadError, match="before the end of its PNG image") as info:
        await client.download(gen("g", "https://cdn.test/a.png" + SIGNED), tmp_path, timeout=30)
    assert route.call_count > 1
    assert info.value.url == "https://cdn.test/a.png"
    assert info.value.status_code == 200
    assert listing(tmp_path) == []


async def test_a_short_body_with_a_length_is_left_to_the_transport(make_client, router, tmp_path):
    # With a Content-Length the transport refuses a short body; one that is all there
    # is not second-guessed by its format (this one has no PNG end, and is saved).
    body = PNG[:-12]
    router.get("https://cdn.test/a").respond(200, content=body)
    client = await make_client()
    (path,) = await client.download(gen("g", "https://cdn.test/a"), tmp_path)
    assert path.read_bytes() == body


async def test_download_retries_are_logged_and_counted_by_reason(
    make_client, router, tmp_path, caplog
):
    route = router.get("https://cdn.test/img/a.png")
    route.side_effect = [
        httpx.Response(502),
        httpx.Response(503, headers={"Retry-After": "4"}),
        httpx.Response(200, stream=Chunks([PNG[:20], httpx.ReadError("reset")])),
        httpx.Response(200, stream=Chunks([PNG[:-3]])),  # cut short, no Content-Length
        httpx.Response(200, content=HTML, headers={"content-type": "text/html"}),
        httpx.Response(200, content=PNG),
    ]
    clock = FakeClock()
    client = await make_client(clock=clock)
    copy = client.with_options(timeout=5)  # copies share the counters
    caplog.set_level(logging.INFO, logger="nanobanana")
    await copy.download(gen("gen_log", "https://cdn.test/img/a.png" + SIGNED), tmp_path)
    assert dict(client.stats().retries) == {"5xx": 2, "503": 1, "network": 2}
    assert client.stats().requests == {}  # CDN requests are not API requests
    records = [r for r in caplog.records if getattr(r, "event", None) == "retry"]
    assert [(r.status, r.reason, r.attempt) for r in records] == [
        (502, "5xx", 1),
        (503, "503", 2),
        (None, "network", 3),
        (200, "network", 4),
        (200, "5xx", 5),
    ]
    assert [r.wait for r in records] == clock.sleeps
    assert records[1].wait == 4.0
    for record in records:
        assert (record.method, record.path) == ("GET", "/img/a.png")
        assert record.generation_id == "gen_log"
        assert record.levelno == logging.INFO
        assert "s3cr3tsig" not in record.getMessage()
        assert "https://cdn.test/img/a.png" in record.getMessage()
        for field in LOG_FIELDS:
            assert "s3cr3tsig" not in str(getattr(record, field))


async def test_a_cancelled_download_drops_its_cdn_connection_at_once(tmp_path):
    # A CDN connection holds no slot of the account: no graceful close to wait for
    # (CLOSE_WAIT) when a download is cancelled mid-body, even if the server lingers.
    release = asyncio.Event()

    async def handler(conn):
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + PNG[:50])
        await release.wait()  # never closes on the client's EOF

    async with ScriptedServer(handler) as server:
        client = AsyncNanoBanana(api_key=KEY, base_url=API)
        try:
            task = asyncio.create_task(client.download(gen("g", server.url + "/a.png"), tmp_path))
            while not any(name.endswith(".part") for name in listing(tmp_path)):
                await asyncio.sleep(0)
            task.cancel()
            for _ in range(20):  # a few loop steps, not CLOSE_WAIT
                if task.done():
                    break
                await asyncio.sleep(0)
            assert task.done()
            assert not release.is_set()
            assert listing(tmp_path) == []
            stats = client.http_client._transport.stats()
            assert (stats.active, stats.waiting) == (0, 0)
        finally:
            release.set()
            await client.aclose()
    with pytest.raises(asyncio.CancelledError):
        task.result()


async def test_a_timeout_after_failures_keeps_the_last_failures_message(
    make_client, router, tmp_path
):
    never = anyio.Event()
    route = router.get("https://cdn.test/a")
    route.side_effect = [
        httpx.Response(200, content=HTML, headers={"content-type": "text/html"}),
        httpx.Response(200, stream=Chunks([PNG[:50], PNG[50:]], gate=never)),
    ]
    client = await make_client(retry_policy=RetryPolicy(wait_initial=0.001, wait_max=0.001))
    with pytest.raises(DownloadError, match="text/html") as info:
        await client.download(gen("g", "https://cdn.test/a"), tmp_path, timeout=0.05)
    assert "Still failing when the download timeout of 0.05 s ran out, during attempt 2" in str(
        info.value
    )
    assert info.value.status_code == 200
    assert route.call_count == 2
    assert listing(tmp_path) == []
