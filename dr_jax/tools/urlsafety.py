"""The network guard's rules: which URLs a policy may fetch, and which addresses they may reach.

A policy chooses the URLs it browses, so without a guard it could reach the training
cluster's own network (SSRF): a cloud metadata service, an SGLang server, the JAX coordinator.
Only globally routable addresses pass (`ipaddress`'s `is_global`, so the shared space
100.64.0.0/10 is refused too, and no multicast or reserved address); IPv4 carried in IPv6
(mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address it carries; only http(s) URLs
without credentials. `http.GuardedResolver` applies these rules to every address a name
resolves to and hands the HTTP client only checked ones, so each connection goes where the
check looked, with no second lookup to rebind.
"""

import ipaddress
import re
import socket
from collections.abc import Iterable

from yarl import URL

from dr_jax.tools.errors import ToolError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Carrier-grade NAT, and Alibaba Cloud's metadata service (100.100.100.200).
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SPECIAL = (
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_unspecified", "an unspecified"),
    ("is_multicast", "a multicast"),
)
_NAME = re.compile(r"[a-z0-9_.-]+")  # yarl lower-cases names and IDNA-encodes non-ASCII ones
_ALLOW_FLAG = "--tools.allow-hosts (python -m dr_jax.tools browse: --allow-host)"


def parse_url(text: str) -> URL:
    """`text` as an http(s) URL with a host and a port, else a ToolError saying what is wrong
    ("bad_url"), or that the scheme is refused ("unsafe_url")."""
    try:
        url = URL(text)
        port = url.port
    except (ValueError, TypeError) as e:
        raise ToolError("bad_url", f"{text!r} is not a valid URL ({e})") from None
    if url.scheme not in ("http", "https"):
        raise ToolError("unsafe_url", f"refused {text!r}: only http and https URLs can be browsed")
    host = url.raw_host or ""
    if not (_NAME.fullmatch(host) or ":" in host):  # ":": an IPv6 address, checked by yarl
        raise ToolError("bad_url", f"{text!r} is not a valid URL (host {host!r})")
    if not port:
        raise ToolError("bad_url", f"{text!r} is not a valid URL (port 0)")
    return url


def allow_entry(text: str) -> tuple[str, int]:
    """An allow-list entry 'host:port' ('[::1]:8080' for IPv6) as the (host, port) it exempts."""
    try:
        url = URL(f"http://{text}")
        host, port = url.raw_host, url.explicit_port
    except ValueError:
        host = port = None
    if not host or not port or url.raw_path not in ("", "/") or url.user is not None:
        raise ValueError(
            f"allow_hosts entry {text!r} is not host:port: write e.g. '127.0.0.1:8080' or "
            "'[::1]:8080' (one port each; the host's other ports stay refused)"
        )
    return host, port


def _carried_ipv4(address: Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and how, else None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour:
        return "6to4", address.sixtofour
    if address.teredo:
        return "Teredo", address.teredo[1]
    return None


def refusal(address: Address) -> str | None:
    """Why `address` may not be reached ("a loopback address (127.0.0.1)"), else None."""
    carried = _carried_ipv4(address)
    if carried is not None:
        how, ipv4 = carried
        why = refusal(ipv4)
        if why is not None:
            return f"{why}, carried in the {how} address {address}"
        if how in ("IPv4-mapped", "NAT64"):  # the connection goes to the IPv4 address
            return None
    for test, kind in _SPECIAL:
        if getattr(address, test):
            return f"{kind} address ({address})"
    if address in _SHARED:
        return f"a shared-space address ({address}, in {_SHARED})"
    if address.is_private:
        return f"a private address ({address})"
    if address.is_reserved or not address.is_global:
        return f"a non-global address ({address})"
    return None


def _literal(host: str) -> Address | None:
    """The address `host` spells, None for a name; legacy IPv4 spellings ("127.1",
    "0x7f.0.0.1", "2130706433") are refused: resolvers read them as addresses."""
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    raise ToolError(
        "unsafe_url", f"refused host {host!r}: write an IPv4 address as four decimal numbers"
    )


class Guard:
    """The rules, with the run's exceptions: `allow` lists 'host:port' entries that pass
    unchecked (the world's server; tests' loopback servers)."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._allow = frozenset(allow_entry(entry) for entry in allow)

    def check_url(self, url: URL) -> None:
        """Before connecting: no credentials, and a host that is an address must pass (a name
        is checked by `check_addresses` when it is resolved)."""
        if url.user is not None or url.password is not None:
            raise ToolError(
                "unsafe_url", f"refused {url.with_user(None)}: URLs with credentials are refused"
            )
        host, port = url.raw_host or "", url.port or 0
        if (host, port) in self._allow:
            return
        address = _literal(host)
        if address is not None:
            self._check(host, port, address)

    def check_addresses(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """After resolving `host`: every address must pass, unless host:port is allowed."""
        if (host, port) in self._allow:
            return
        for text in addresses:
            self._check(host, port, ipaddress.ip_address(text.partition("%")[0]))

    def _check(self, host: str, port: int, address: Address) -> None:
        if (str(address), port) in self._allow:
            return
        why = refusal(address)
        if why is not None:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ToolError(
                "unsafe_url",
                f"refused {where}, {why}; to browse it, add '{where}' to {_ALLOW_FLAG}",
            )
