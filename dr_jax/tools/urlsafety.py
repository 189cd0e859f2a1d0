"""Refuse URLs that would let a policy reach the training cluster's own network (SSRF guard)."""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from dr_jax.tools.errors import ToolError

# Cloud metadata services that are not covered by the private/link-local ranges.
_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why connecting to `address` is refused, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return "cloud metadata"
    for label in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{label}"):
            return label.replace("_", "-")
    return None


async def check_url(url: str, allow_hosts: tuple[str, ...] = ()) -> None:
    """Raise ToolError("unsafe_url") unless `url` is http(s) and every address it resolves to is
    public, or its host is in `allow_hosts`. Called again on every redirect hop."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError("unsafe_url", f"refused {url!r}: only http and https URLs can be browsed")
    host = parts.hostname
    if not host:
        raise ToolError("unsafe_url", f"refused {url!r}: no host")
    if host in allow_hosts:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as e:
            raise ToolError("dns", f"could not resolve {host}: {e.strerror or e}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        _refuse(url, host, address, allow_hosts)


def check_peer(url: str, peer_ip: str, allow_hosts: tuple[str, ...] = ()) -> None:
    """Re-check the address a connection actually reached, before its body is read: DNS may
    answer differently to the HTTP client than it did to `check_url` (DNS rebinding)."""
    host = urlsplit(url).hostname or ""
    if host not in allow_hosts:
        _refuse(url, host, ipaddress.ip_address(peer_ip.split("%")[0]), allow_hosts)


def _refuse(
    url: str,
    host: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    allow_hosts: tuple[str, ...],
) -> None:
    if str(address) in allow_hosts:
        return
    reason = _forbidden(address)
    if reason:
        raise ToolError(
            "unsafe_url",
            f"refused {url!r}: {host} is a {reason} address ({address}); to allow it, name the "
            f"host in --tools.allow-hosts (python -m dr_jax.tools: --allow-host {host})",
        )
