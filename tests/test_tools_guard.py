"""The network guard: what it refuses (addresses that are not globally routable, IPv4 inside
IPv6, other schemes, credentials, legacy address spellings), that it refuses before a
connection is opened (real loopback servers count the connections they accept), that a name
is looked up once per connection and the connection goes to the checked address (DNS
rebinding), and that the allow-list opens one host:port, nothing more."""

import asyncio
import ipaddress
import json
from urllib.parse import urlsplit

import pytest
from loopback import LoopbackServer, Reply, Request

from dr_jax.runtime import start_world_tools
from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.errors import ToolError
from dr_jax.tools.http import HttpClient
from dr_jax.tools.urlsafety import Guard, allow_entry, parse_url, refusal
from dr_jax.world import World

PAGE = b"<html><body><article><p>The pier was rebuilt in 1907.</p></article></body></html>"


async def _page(request: Request) -> Reply:
    return Reply(body=PAGE)


# ------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata (AWS, GCP, Azure)
        ("fd00:ec2::254", "a private address"),  # AWS's metadata over IPv6
        ("fe80::1", "a link-local address"),
        ("100.64.0.1", "a shared-space address"),
        ("100.100.100.200", "a shared-space address"),  # Alibaba Cloud's metadata
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("::7f00:1", "a non-global address"),  # IPv4-compatible IPv6, deprecated
        ("2001:db8::1", "a private address"),  # documentation
        ("::ffff:127.0.0.1", "a loopback address (127.0.0.1), carried in the IPv4-mapped"),
        ("::ffff:10.0.0.1", "a private address (10.0.0.1), carried in the IPv4-mapped"),
        ("64:ff9b::7f00:1", "a loopback address (127.0.0.1), carried in the NAT64"),
        ("64:ff9b::a9fe:a9fe", "(169.254.169.254), carried in the NAT64"),
        ("2002:a00:1::", "a private address (10.0.0.1), carried in the 6to4"),
        ("2002:6464:64c8::", "a shared-space address (100.100.100.200, in 100.64.0.0/10)"),
        # Teredo: the client's IPv4 address is stored inverted (~127.0.0.1 = 80ff:fffe)
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "(127.0.0.1), carried in the Teredo"),
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused(address, why):
    assert why in refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"],
)
def test_global_addresses_pass_also_when_carried_in_ipv6(address):
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "kind", "why"),
    [
        ("ftp://example.com/x", "unsafe_url", "only http and https"),
        ("file:///etc/passwd", "unsafe_url", "only http and https"),
        ("javascript:alert(1)", "unsafe_url", "only http and https"),
        ("http://user:secret@example.com/", "unsafe_url", "URLs with credentials are refused"),
        ("http://127.1/", "unsafe_url", "four decimal numbers"),
        ("http://0x7f.0.0.1/", "unsafe_url", "four decimal numbers"),
        ("http://2130706433/", "unsafe_url", "four decimal numbers"),
        ("http://[::ffff:127.0.0.1]/", "unsafe_url", "carried in the IPv4-mapped"),
        ("http://100.100.100.200/latest/meta-data/", "unsafe_url", "shared-space"),
        ("http://example.com:99999/", "bad_url", "Port out of range"),
        ("http://example.com:http/", "bad_url", "port can't be converted"),
        ("http://example.com:0/", "bad_url", "port 0"),
        ("http://[::1/", "bad_url", "Invalid IPv6 URL"),
        ("http://exa mple.com/", "bad_url", "host 'exa mple.com'"),
        ("http:///no-host", "bad_url", "host ''"),
    ],
)
def test_urls_are_refused_before_any_lookup_with_a_reason(url, kind, why):
    with pytest.raises(ToolError) as refused:
        Guard().check_url(parse_url(url))
    assert refused.value.kind == kind and why in str(refused.value)
    assert "secret" not in str(refused.value)


def test_allow_list_entries_are_host_and_port():
    assert allow_entry("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert allow_entry("[::1]:8080") == ("::1", 8080)
    assert allow_entry("World.Example:80") == ("world.example", 80)
    for entry in ("127.0.0.1", "localhost:", "http://127.0.0.1:80/", "a:b"):
        with pytest.raises(ValueError, match=r"not host:port: write e\.g\. '127\.0\.0\.1:8080'"):
            ToolsConfig(allow_hosts=(entry,))


# ----------------------------------------------------------------- before any connection


def _get(url: str, guard: Guard) -> bytes:
    async def scenario() -> bytes:
        client = HttpClient(connect_timeout=1.0, read_timeout=1.0, user_agent="t", guard=guard)
        try:
            return (await client.request("GET", url)).body
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_a_refused_address_gets_no_connection_at_all():
    with LoopbackServer(_page) as server:
        port = urlsplit(server.url).port
        urls = [f"http://127.0.0.1:{port}/", f"http://[::ffff:127.0.0.1]:{port}/"]
        urls.append(f"http://localhost:{port}/")  # a name: refused by the resolver
        for url in urls:
            with pytest.raises(ToolError, match="a loopback address") as refused:
                _get(url, Guard())
            assert "--tools.allow-hosts" in str(refused.value)
        assert server.connections == 0
        assert _get(f"{server.url}/", Guard([f"127.0.0.1:{port}"])) == PAGE
        assert server.connections == 1  # the server does count what reaches it


def test_the_allow_list_opens_one_port_and_redirects_elsewhere_are_refused():
    with LoopbackServer(_page) as other:

        async def redirect(request: Request) -> Reply:
            if request.path == "/page":
                return Reply(body=PAGE)
            return Reply(status=302, headers={"location": f"{other.url}/x"})

        with LoopbackServer(redirect) as allowed:
            config = ToolsConfig(
                allow_hosts=(urlsplit(allowed.url).netloc,), extract_workers=0, retries=0
            )
            urls = [f"{allowed.url}/page", f"{allowed.url}/away", f"{other.url}/page"]
            pages = _browse(config, urls)
        assert "rebuilt in 1907" in pages[0]["pages"][0]
        assert pages[1]["error"] == pages[2]["error"] != ""
        assert f"refused {urlsplit(other.url).netloc}, a loopback address" in pages[2]["error"]
        assert other.connections == 0


def _browse(config: ToolsConfig, urls: list[str]) -> list[dict]:
    async def scenario() -> str:
        async with ToolExecutor(config, search=False) as tools:
            return await tools.execute(
                ToolCall("browse_webpage", {"url_list": urls}), ToolSession("")
            )

    return json.loads(asyncio.run(scenario()))


# ---------------------------------------------------------------------------- rebinding


class ScriptedDns:
    """Names answered from a script: `answers[name]` holds the addresses of each lookup in
    turn (the last repeats); `lookups` lists the names looked up. It replaces asyncio's
    getaddrinfo, the system resolver's entry point that the guard calls."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []


@pytest.fixture
def dns(monkeypatch) -> ScriptedDns:
    scripted = ScriptedDns()
    real = asyncio.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self, host, port, *args, **kwargs):
        if host not in scripted.answers:
            return await real(self, host, port, *args, **kwargs)
        scripted.lookups.append(host)
        turns = scripted.answers[host]
        addresses = turns.pop(0) if len(turns) > 1 else turns[0]
        return [info for a in addresses for info in await real(self, a, port, *args, **kwargs)]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    return scripted


def test_rebinding_gets_one_lookup_per_connection_and_never_reaches_the_server(dns):
    """A public answer, then loopback: the first connection goes to the public address it
    checked (unreachable here), the retry's lookup is refused, and nothing reaches us."""
    dns.answers["rebind.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    with LoopbackServer(_page) as server:
        port = urlsplit(server.url).port
        config = ToolsConfig(extract_workers=0, retries=1, backoff_base=0.01, connect_timeout=0.5)
        (page,) = _browse(config, [f"http://rebind.example:{port}/"])
    assert f"refused rebind.example:{port}, a loopback address (127.0.0.1)" in page["error"]
    assert dns.lookups == ["rebind.example", "rebind.example"]
    assert server.connections == 0


def test_an_answer_with_any_refused_address_is_refused_whole(dns):
    dns.answers["mixed.example"] = [["93.184.216.34", "127.0.0.1"]]
    with LoopbackServer(_page) as server:
        port = urlsplit(server.url).port
        (page,) = _browse(ToolsConfig(extract_workers=0), [f"http://mixed.example:{port}/"])
    assert "a loopback address (127.0.0.1)" in page["error"]
    assert dns.lookups == ["mixed.example"]  # refused: not retried
    assert server.connections == 0


# ------------------------------------------------------------------------------ the world


def test_the_world_run_allows_the_world_port_and_no_other():
    with LoopbackServer(_page) as other:

        async def scenario() -> tuple[tuple[str, ...], str, str]:
            config = ToolsConfig(extract_workers=0)
            async with start_world_tools(config, world=World.generate(0, "tiny")) as tools:
                search = await tools.execute(
                    ToolCall("web_search", {"query": ["history"]}), ToolSession("")
                )
                world_page = json.loads(search)[0]["results"][0]["url"]
                call = ToolCall("browse_webpage", {"url_list": [world_page, f"{other.url}/"]})
                browse = await tools.execute(call, ToolSession(""))
                return tools.config.allow_hosts, tools.config.search_url, browse

        allowed, world_url, browse = asyncio.run(scenario())
        read, refused = json.loads(browse)
    assert allowed == (urlsplit(world_url).netloc,)
    assert read["pages"] and "a loopback address" in refused["error"]
    assert other.connections == 0
