"""The tools' HTTP client (aiohttp): decoding, percent-escaping, keep-alive, TLS against
certifi's roots, its time limits, and what it must not do (reuse a connection the server is
done with)."""

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import time
import zlib

import certifi
import pytest
from loopback import LoopbackServer, Reply, Request

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.http import HttpClient, HttpError, HttpTimeout

TEXT = b"<html><body><article><p>The pier was rebuilt in 1907.</p></article></body></html>"


async def _handle(request: Request) -> Reply:
    if request.path == "/gzip":
        return Reply(body=gzip.compress(TEXT), headers={"content-encoding": "gzip"})
    if request.path == "/deflate":
        return Reply(body=zlib.compress(TEXT), headers={"content-encoding": "deflate"})
    if request.path == "/bomb":  # 2 MB of spaces in about 2 kB
        body = gzip.compress(b"<p>" + b" " * 2_000_000 + b"</p>")
        return Reply(body=body, headers={"content-encoding": "gzip"})
    if request.path == "/bad-gzip":
        return Reply(body=b"not gzip at all", headers={"content-encoding": "gzip"})
    if request.path == "/close":
        return Reply(body=TEXT, headers={"connection": "close"})
    if request.path == "/stall":  # the head, then nothing for longer than the read timeout
        return Reply(body=TEXT, chunks=2, chunk_delay=3.0)
    return Reply(body=request.path.encode())


def _get_all(server: LoopbackServer, paths: list[str]) -> list[bytes]:
    return _get([server.url + path for path in paths])


def _get(urls: list[str], connect_timeout: float = 1.0, read_timeout: float = 1.0) -> list[bytes]:
    async def scenario():
        client = HttpClient(
            connect_timeout=connect_timeout, read_timeout=read_timeout, user_agent="test"
        )
        try:
            return [(await client.request("GET", url)).body for url in urls]
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_a_server_that_never_accepts_times_out_at_connect():
    """A listening socket whose accept queue is full: the kernel drops further SYNs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        started = time.monotonic()
        with pytest.raises(HttpTimeout, match="Connection timeout"):
            _get([f"http://127.0.0.1:{port}/"], connect_timeout=0.3)
        assert time.monotonic() - started < 1.5
        for filler in fillers:
            filler.close()


def test_a_body_that_stops_arriving_times_out_per_read():
    with LoopbackServer(_handle) as server:
        started = time.monotonic()
        with pytest.raises(HttpTimeout, match="Timeout on reading data from socket"):
            _get([f"{server.url}/stall"], read_timeout=0.3)
        assert time.monotonic() - started < 1.5


def test_gzip_and_deflate_bodies_are_decoded():
    with LoopbackServer(_handle) as server:
        assert _get_all(server, ["/gzip", "/deflate"]) == [TEXT, TEXT]


def _browse(path: str) -> tuple[str, dict]:
    with LoopbackServer(_handle) as server:
        config = ToolsConfig(allow_hosts=(server.authority,), extract_workers=0, max_bytes=100_000)
        call = ToolCall("browse_webpage", {"url_list": [server.url + path]})

        async def scenario():
            async with ToolExecutor(config, search=False) as tools:
                return await tools.execute(call, ToolSession("")), tools.metrics()

        return asyncio.run(scenario())


def test_the_byte_cap_counts_decoded_bytes():
    text, _ = _browse("/bomb")
    assert "larger than 100,000 bytes" in text


def test_a_body_that_does_not_decode_is_unreadable_and_not_retried():
    text, metrics = _browse("/bad-gzip")
    assert "could not be decoded" in text
    assert metrics["errors"] == {"unreadable": 1} and metrics["retries"] == 0


def test_sequential_requests_share_one_kept_alive_connection():
    with LoopbackServer(_handle) as server:
        assert _get_all(server, ["/a", "/b", "/c"]) == [b"/a", b"/b", b"/c"]
        assert server.connections == 1


def test_a_connection_the_server_closes_is_not_reused():
    with LoopbackServer(_handle) as server:
        assert _get_all(server, ["/close", "/close", "/a"]) == [TEXT, TEXT, b"/a"]
        assert server.connections == 3


def test_non_ascii_and_unsafe_characters_in_urls_are_percent_escaped():
    with LoopbackServer(_handle) as server:
        paths = ["/wiki/Zürich", "/a b", "/already%20escaped"]
        assert _get_all(server, paths) == [b"/wiki/Z%C3%BCrich", b"/a%20b", b"/already%20escaped"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    command += " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    command = [*command.split(), "-keyout", key, "-out", cert]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def _tls_server(certificate: tuple[str, str]) -> LoopbackServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return LoopbackServer(_handle, tls=context)


def test_https_is_verified_against_the_trusted_roots(certificate):
    with _tls_server(certificate) as server, pytest.raises(HttpError, match="VERIFY_FAILED"):
        _get_all(server, ["/a"])


def test_https_to_a_trusted_server_works_and_keeps_its_connection(certificate, monkeypatch):
    monkeypatch.setattr(certifi, "where", lambda: certificate[0])  # trust it as a root
    with _tls_server(certificate) as server:
        assert server.url.startswith("https://")
        assert _get_all(server, ["/a", "/gzip"]) == [b"/a", TEXT]
        assert server.connections == 1
