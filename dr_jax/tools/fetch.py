"""HTTP exchanges that always end: bounded time, bounded bytes, every redirect hop re-checked."""

import asyncio
import contextlib
import email.utils
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

import certifi
import httpx

from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.errors import ToolError
from dr_jax.tools.urlsafety import check_peer, check_url


class ClientPool:
    """`cfg.concurrency` single-connection httpx clients, lent out one request at a time.

    A lease is also the global concurrency limit: at most that many requests are in flight.
    httpcore's pool does work proportional to (connections x waiting requests) on every
    scheduling step, which dominates at 64 requests in flight in one client; a client per
    request keeps that cost flat, and an idle client keeps its connection alive for the next.
    """

    def __init__(self, cfg: ToolsConfig) -> None:
        tls = ssl.create_default_context(cafile=certifi.where())
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        # trust_env=False: no proxy from the environment, so the peer-address check sees the
        # real server (through a proxy it would see the proxy).
        self._clients = [
            httpx.AsyncClient(verify=tls, limits=limits, timeout=timeout, trust_env=False)
            for _ in range(cfg.concurrency)
        ]
        self._idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self._clients:
            self._idle.put_nowait(client)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        client = await self._idle.get()
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


@dataclass(frozen=True)
class Fetched:
    """A downloaded body and what is needed to decode it."""

    url: str
    """Final URL, after redirects."""
    media_type: str
    """Lower-case media type without parameters, e.g. "text/html"."""
    charset: str | None
    body: bytes


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map an HTTP error status to a ToolError whose kind drives retries (5xx and 429 retry)."""
    code = response.status_code
    if code < 400:
        return
    if code == 429:
        raise ToolError(
            "http_429",
            f"{what} rate limited (HTTP 429)",
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    kind = "http_5xx" if code >= 500 else "http_4xx"
    raise ToolError(kind, f"{what} returned HTTP {code}")


@contextlib.contextmanager
def transport_errors(what: str, deadline: float) -> Iterator[None]:
    """Turn httpx and deadline exceptions into ToolErrors the executor can observe and retry."""
    try:
        yield
    except TimeoutError:
        raise ToolError("timeout", f"{what} timed out after {deadline:g} s") from None
    except httpx.TimeoutException:
        raise ToolError("timeout", f"{what} timed out") from None
    except httpx.TransportError as e:
        raise ToolError("network", f"{what} failed: {type(e).__name__}: {e}") from None


async def fetch_page(client: httpx.AsyncClient, url: str, cfg: ToolsConfig) -> Fetched:
    """GET `url`, following at most `cfg.max_redirects` redirects by hand so each hop passes
    `check_url`; refuse bodies over `cfg.max_bytes`; give up after `cfg.request_timeout` s."""
    seen: set[str] = set()
    with transport_errors(f"fetching {url}", cfg.request_timeout):
        async with asyncio.timeout(cfg.request_timeout):
            for _ in range(cfg.max_redirects + 1):
                if url in seen:
                    raise ToolError("redirect_loop", f"redirect loop at {url}")
                seen.add(url)
                await check_url(url, cfg.allow_hosts)
                async with client.stream(
                    "GET", url, headers={"user-agent": cfg.user_agent}, follow_redirects=False
                ) as response:
                    stream = response.extensions.get("network_stream")
                    peer = stream.get_extra_info("server_addr") if stream else None
                    if peer:
                        check_peer(url, peer[0], cfg.allow_hosts)
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    raise_for_status(response, url)
                    return await _read_capped(response, url, cfg.max_bytes)
    raise ToolError("redirect_loop", f"more than {cfg.max_redirects} redirects from {url}")


async def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> Fetched:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ToolError("too_large", f"{url} is {int(declared):,} bytes (limit {max_bytes:,})")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ToolError("too_large", f"{url} is larger than {max_bytes:,} bytes")
    media_type, _, params = response.headers.get("content-type", "").partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip("\"'").lower()
    return Fetched(url, media_type.strip().lower(), charset, bytes(body))
