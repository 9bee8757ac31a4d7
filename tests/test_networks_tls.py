"""TLS, ALPN, HTTP/2 and Happy Eyeballs against real servers on loopback.

Certificates come from a CA made by the test (trustme). The HTTP/2 server is
hypercorn serving the simulator's ASGI app. The dual-stack test black-holes ::1
(a listener whose accept queue is full drops SYNs) next to a 127.0.0.1 listener.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import subprocess
import sys

import anyio
import httpx
import pytest

from components import require, require_binary, require_module
from nanobanana import APIConnectionError, AsyncNanoBanana, TLSCertificateError
from nanobanana._transport import _connect, make_ssl_context
from nanobanana.testing import Simulator
from network_support import (
    LOOPS,
    HypercornServer,
    ServerThread,
    TLSCountingServer,
    make_tls,
    run_on,
)
from transport_servers import ScriptedServer, ServerConn, keep_alive_ok

KEY = "nb_tls_SECRET_key_77a0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ["SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


def server_context(tls, alpn=("h2", "http/1.1")) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.cert.configure_cert(context)
    context.set_alpn_protocols(list(alpn))
    return context


def credits_answer(conn: ServerConn):
    body = b'{"data": {"credits": 7}}'
    return conn.respond(body, headers=(b"Content-Type: application/json",))


async def test_alpn_offers_http_1_1_only_by_default(tls):
    offered = []

    async def handler(conn: ServerConn) -> None:
        # The server prefers h2: it picks http/1.1 only if that is all we offered.
        offered.append(conn.writer.get_extra_info("ssl_object").selected_alpn_protocol())
        while await conn.read_request() is not None:
            await credits_answer(conn)

    async with (
        ScriptedServer(handler, ssl_context=server_context(tls)) as server,
        AsyncNanoBanana(
            api_key=KEY, base_url=server.url + "/api/v1", verify=str(tls.ca_pem)
        ) as client,
    ):
        assert await client.credits() == 7
        assert await client.credits() == 7
    assert offered == ["http/1.1"]
    assert server.connections == 1


async def test_ssl_cert_file_and_ssl_cert_dir_are_trusted_as_httpx_does(tls, monkeypatch, tmp_path):
    async with ScriptedServer(keep_alive_ok, ssl_context=server_context(tls)) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_pem))
        async with AsyncNanoBanana(api_key=KEY, base_url=server.url) as client:
            response = await client.http_client.get(server.url)
            assert response.content == b"ok"
        monkeypatch.delenv("SSL_CERT_FILE")
        # A folder of CA files named by their subject hash, as OpenSSL's c_rehash makes.
        folder = tmp_path / "certs"
        folder.mkdir()
        subject_hash = _subject_hash(tls)
        (folder / f"{subject_hash}.0").write_bytes(tls.ca.cert_pem.bytes())
        monkeypatch.setenv("SSL_CERT_DIR", str(folder))
        async with AsyncNanoBanana(api_key=KEY, base_url=server.url) as client:
            assert (await client.http_client.get(server.url)).content == b"ok"
        # trust_env=False reads neither: the certificate is then untrusted.
        async with AsyncNanoBanana(
            api_key=KEY, base_url=server.url + "/api/v1", trust_env=False, max_retries=0
        ) as client:
            with pytest.raises(TLSCertificateError):
                await client.credits()


async def test_verify_accepts_a_path_object(tls):
    async def handler(conn: ServerConn) -> None:
        while await conn.read_request() is not None:
            await credits_answer(conn)

    async with (
        ScriptedServer(handler, ssl_context=server_context(tls)) as server,
        AsyncNanoBanana(
            api_key=KEY, base_url=server.url + "/api/v1", verify=pathlib.Path(tls.ca_pem)
        ) as client,
    ):
        assert await client.credits() == 7


@pytest.mark.parametrize("verify", [5, None, b"/etc/ssl/ca.pem", ["ca.pem"]])
def test_verify_of_another_type_is_a_type_error_naming_what_is_accepted(verify):
    with pytest.raises(TypeError, match=r"verify must be True, False, a CA bundle path"):
        AsyncNanoBanana(api_key=KEY, verify=verify)


@pytest.mark.parametrize("as_path", [True, False])
def test_a_missing_ca_bundle_is_named_in_the_error(tmp_path, as_path):
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(FileNotFoundError, match=r"verify= names no CA bundle") as info:
        AsyncNanoBanana(api_key=KEY, verify=missing if as_path else str(missing))
    assert info.value.filename == str(missing)
    assert str(missing) in str(info.value)


def test_a_file_without_a_ca_certificate_is_a_value_error_naming_it(tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"notes\.txt.*holds no CA certificate"):
        AsyncNanoBanana(api_key=KEY, verify=garbage)


def test_a_missing_ssl_cert_file_is_named_in_the_error(tmp_path, monkeypatch):
    missing = tmp_path / "gone.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    with pytest.raises(FileNotFoundError, match=r"SSL_CERT_FILE names no CA bundle") as info:
        AsyncNanoBanana(api_key=KEY)
    assert info.value.filename == str(missing)
    # trust_env=False does not read it.
    assert make_ssl_context(trust_env=False).verify_mode == ssl.CERT_REQUIRED


def _subject_hash(tls) -> str:
    openssl = require_binary("openssl", "the subject hash of an SSL_CERT_DIR entry")
    done = subprocess.run(  # noqa: S603 - a fixed command line
        [openssl, "x509", "-hash", "-noout"],
        input=tls.ca.cert_pem.bytes(),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


@pytest.mark.parametrize("call", ["credits", "generate"])
@pytest.mark.parametrize("loop", LOOPS)
def test_an_untrusted_certificate_fails_at_once_and_is_never_retried(loop, tls, call):
    with ServerThread() as servers:
        server = servers.serve(TLSCountingServer(server_context(tls)))

        async def main():
            # No verify=: certifi's CAs do not include the test's CA.
            async with AsyncNanoBanana(api_key=KEY, base_url=server.url + "/api/v1") as client:
                with pytest.raises(TLSCertificateError) as info:
                    await (client.credits() if call == "credits" else client.generate("x"))
            return info.value

        error = run_on(loop, main)
    assert server.connections == 1  # One attempt: a certificate failure is permanent.
    assert server.handshakes == 0
    assert isinstance(error, APIConnectionError)
    assert error.may_have_been_charged is False
    # What failed, on every loop (trio hides it under its BrokenResourceError).
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert "unable to get local issuer certificate" in str(error)
    assert "verify=" in str(error)
    assert KEY not in str(error)


@pytest.mark.parametrize("loop", LOOPS)
def test_http2_through_httpx_transport_against_hypercorn(loop, tls, tmp_path):
    require_module("h2", "http2=True")
    require_module("hypercorn", "a real HTTP/2 server on loopback")
    with (
        Simulator(api_key=KEY, credits=20, concurrency_limit=4) as sim,
        ServerThread() as servers,
    ):
        api = servers.serve(HypercornServer(sim.asgi_app(origin="api"), cert_pem=tls.server_pem))
        versions = []

        async def record(response: httpx.Response) -> None:
            versions.append((response.url.port, response.http_version))

        async def main():
            async with AsyncNanoBanana(
                api_key=KEY,
                base_url=f"https://127.0.0.1:{api.port}/api/v1",
                http2=True,
                verify=str(tls.ca_pem),
            ) as client:
                client.http_client.event_hooks["response"].append(record)
                assert await client.credits() == 20
                generation = await client.generate("over h2")
                events = [e async for e in client.stream("streamed over h2")]
                async with anyio.create_task_group() as group:  # multiplexed on one h2 connection
                    for _ in range(3):
                        group.start_soon(client.get_generation, generation.id)
                paths = await client.download(generation, tmp_path)
                assert not client.http_client._transport.dispatch.uses_fast_path()
            return generation, events, paths

        generation, events, paths = run_on(loop, main)
    assert events[-1].type == "complete"
    assert paths[0].exists()
    cdn_port = httpx.URL(generation.image_urls[0]).port
    assert cdn_port != api.port
    by_port = {port: [v for p, v in versions if p == port] for port, _ in versions}
    assert set(by_port) == {api.port, cdn_port}
    # credits, generate, stream, 3 polls: every API response came over HTTP/2 ...
    assert len(by_port[api.port]) >= 6
    assert set(by_port[api.port]) == {"HTTP/2"}
    # ... and the CDN's (plain http, no ALPN) over HTTP/1.1.
    assert set(by_port[cdn_port]) == {"HTTP/1.1"}


@pytest.mark.parametrize("loop", LOOPS)
def test_https_on_every_loop(loop, tls):
    # uvloop's transports are not asyncio's classes: https used to fail there with a
    # bare AssertionError. asyncio and uvloop go through the fast pool, trio through
    # httpx's own.
    require_module("hypercorn", "a real TLS server on loopback")
    with Simulator(api_key=KEY, credits=9) as sim, ServerThread() as servers:
        api = servers.serve(HypercornServer(sim.asgi_app(origin="api"), cert_pem=tls.server_pem))

        async def main():
            async with AsyncNanoBanana(
                api_key=KEY, base_url=f"https://127.0.0.1:{api.port}/api/v1", verify=str(tls.ca_pem)
            ) as client:
                assert await client.credits() == 9
                generation = await client.generate("over https")
                return generation, client.http_client._transport.dispatch.uses_fast_path()

        generation, fast = run_on(loop, main)
    assert generation.image_urls
    assert fast is (loop != "trio")


def test_http2_without_h2_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "h2", None)
    with pytest.raises(ImportError, match=r"nanobanana\[http2\]"):
        AsyncNanoBanana(api_key=KEY, http2=True)


# -- Happy Eyeballs ---------------------------------------------------------------------


@contextlib.contextmanager
def black_holed_ipv6(port: int):
    """A ::1 listener on `port` that drops SYNs: its accept queue is full."""
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(("::1", port))
    except OSError as exc:
        listener.close()
        require(False, f"::1 port {port} cannot be bound here ({exc}), needed for a dual stack")
    listener.listen(0)
    fillers = []
    # Fill the queue: connections the listener never accepts.
    for _ in range(8):
        filler = socket.socket(socket.AF_INET6)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("::1", port))
        fillers.append(filler)
    probe = socket.socket(socket.AF_INET6)
    probe.settimeout(0.3)
    with pytest.raises(OSError):  # A new connect now hangs: SYNs are dropped.
        probe.connect(("::1", port))
    probe.close()
    try:
        yield
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_happy_eyeballs_reaches_ipv4_when_ipv6_drops_packets(loop, monkeypatch):
    # This machine's "localhost" has no ::1 entry, so the name is resolved here, as a
    # dual-stack name resolves: ::1 first (RFC 6724), then 127.0.0.1.
    asked = []

    async def resolve(_loop, host, port_):
        asked.append(host)
        return [(socket.AF_INET6, ("::1", port_, 0, 0)), (socket.AF_INET, ("127.0.0.1", port_))]

    monkeypatch.setattr(_connect, "resolve", resolve)
    with Simulator(api_key=KEY) as sim:
        port = int(sim.api_origin.rsplit(":", 1)[1])

        async def main():
            # A connect timeout well above the 250 ms stagger and far below what a
            # one-address-at-a-time connect would need (the whole timeout, then more).
            async with AsyncNanoBanana(
                api_key=KEY,
                base_url=f"http://dualstack.test:{port}/api/v1",
                timeout=httpx.Timeout(30, connect=3),
                max_retries=0,
                trust_env=False,
            ) as client:
                return await client.credits()

        with black_holed_ipv6(port):
            assert run_on(loop, main) == 100
    assert asked == ["dualstack.test"]


def test_interleave_alternates_families_starting_with_the_first():
    v6 = [(socket.AF_INET6, (f"::{i}", 1, 0, 0)) for i in range(1, 4)]
    v4 = [(socket.AF_INET, (f"127.0.0.{i}", 1)) for i in range(1, 3)]
    assert _connect.interleave([*v6, *v4]) == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    assert _connect.interleave([v4[0], *v6[:1], v4[1]]) == [v4[0], v6[0], v4[1]]
    assert _connect.interleave([v4[0], v4[0]]) == [v4[0]]


async def test_every_address_failing_is_one_connect_error(monkeypatch):
    closed = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        closed.append(sock)

    async def resolve(_loop, host, port_):
        return [(socket.AF_INET, ("127.0.0.1", s.getsockname()[1])) for s in closed]

    monkeypatch.setattr(_connect, "resolve", resolve)
    async with AsyncNanoBanana(
        api_key=KEY, base_url="http://two.test:1/api/v1", max_retries=0, trust_env=False
    ) as client:
        with pytest.raises(APIConnectionError, match="Every address failed"):
            await client.credits()
    for sock in closed:
        sock.close()
