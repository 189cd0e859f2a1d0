"""HTTP exchanges that always end: bounded time, bounded bytes, every redirect hop re-checked."""

import asyncio
import contextlib
import email.utils
import time
from collections.abc import Iterator
from dataclasses import dataclass

from yarl import URL

from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.errors import ToolError
from dr_jax.tools.http import BadEncoding, DnsError, HttpClient, HttpError, HttpTimeout, Response
from dr_jax.tools.urlsafety import parse_url


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


def raise_for_status(response: Response, what: str) -> None:
    """Map an HTTP error status to a ToolError whose kind drives retries (5xx and 429 retry)."""
    code = response.status
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
    """Turn transport and deadline exceptions into ToolErrors the executor can observe and retry."""
    try:
        yield
    except TimeoutError:
        raise ToolError("timeout", f"{what} timed out after {deadline:g} s") from None
    except HttpTimeout as e:
        raise ToolError("timeout", f"{what} timed out ({e})") from None
    except BadEncoding as e:
        raise ToolError("unreadable", f"{what} failed: {e}") from None
    except DnsError as e:
        raise ToolError("dns", f"{what} failed: {e}") from None
    except HttpError as e:
        raise ToolError("network", f"{what} failed: {e}") from None


def _redirect(url: str, location: str) -> str:
    """The URL a redirect's Location points to; ToolError("bad_url") when it is malformed."""
    try:
        return str(parse_url(url).join(URL(location)))
    except ValueError as e:
        raise ToolError(
            "bad_url", f"{url} redirects to a malformed URL {location!r} ({e})"
        ) from None


async def fetch_page(client: HttpClient, url: str, cfg: ToolsConfig) -> Fetched:
    """GET `url` with the guarded client, following at most `cfg.max_redirects` redirects by
    hand (each hop is a new request, so the guard checks it); refuse bodies over
    `cfg.max_bytes`; give up after `cfg.request_timeout` s."""
    seen: set[str] = set()
    with transport_errors(f"fetching {url}", cfg.request_timeout):
        async with asyncio.timeout(cfg.request_timeout):
            for _ in range(cfg.max_redirects + 1):
                if url in seen:
                    raise ToolError("redirect_loop", f"redirect loop at {url}")
                seen.add(url)
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = _redirect(url, response.headers["location"])
                        continue
                    raise_for_status(response, url)
                    return await _read_capped(response, url, cfg.max_bytes)
    raise ToolError("redirect_loop", f"more than {cfg.max_redirects} redirects from {url}")


async def _read_capped(response: Response, url: str, max_bytes: int) -> Fetched:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ToolError("too_large", f"{url} is {int(declared):,} bytes (limit {max_bytes:,})")
    body = bytearray()
    async for chunk in response:
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
