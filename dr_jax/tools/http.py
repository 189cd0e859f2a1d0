"""The tools' HTTP client: aiohttp (its C parser, kept-alive pooled connections, TLS verified
against certifi's roots, decompression in bounded steps), with a connect timeout (name lookup,
TCP and TLS) and a timeout per read, and its failures as this module's errors.

A client built with a `Guard` is the one that fetches pages: the guard checks every URL before
it is requested and is the connector's DNS resolver, so the connection goes to an address the
guard approved (one lookup per connection: none for a rebinding server to answer differently).
"""

import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import certifi
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import ContentEncodingError

from dr_jax.tools.urlsafety import Guard, parse_url

KEEPALIVE_S = 5.0
"""An idle connection older than this is closed rather than reused (servers drop them)."""
CHUNK = 65_536
"""Bytes of decoded body handed over at a time (and so the most a compression bomb adds
before the caller's byte cap sees it)."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpError(Exception):
    """A transport failure: no connection, or a response that broke off or is not HTTP."""


class HttpTimeout(HttpError):
    """No connection within the connect timeout, or no data within the read timeout."""


class BadEncoding(HttpError):
    """A body whose Content-Encoding does not decode (asking again will not help)."""


class DnsError(HttpError):
    """The host name does not resolve."""


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """aiohttp's exceptions as this module's (the guard's ToolErrors pass through)."""
    try:
        yield
    except aiohttp.ServerTimeoutError as e:
        raise HttpTimeout(f"{what}: {e or 'no progress in time'}") from None
    except aiohttp.ClientConnectorDNSError as e:
        raise DnsError(f"{what}: could not resolve {e.host} ({e.os_error})") from None
    except aiohttp.ClientPayloadError as e:
        if isinstance(e.__cause__, ContentEncodingError):
            raise BadEncoding(f"{what}: the compressed body could not be decoded") from None
        raise HttpError(f"{what}: {e}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise HttpError(f"{what}: {type(e).__name__}: {e}") from None


class GuardedResolver(AbstractResolver):
    """The system resolver's answers, each address checked by the guard: aiohttp connects only
    to addresses returned here, so what was checked is what is reached."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._system = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._system.resolve(host, port, family)
        self._guard.check_addresses(host, port, [answer["host"] for answer in answers])
        return answers

    async def close(self) -> None:
        await self._system.close()


class Response:
    """Status, headers (case-insensitive) and the body: `async for chunk in response`
    (decoded), or `await response.read()`, which also keeps it in `body`."""

    def __init__(self, response: aiohttp.ClientResponse, what: str) -> None:
        self.status: int = response.status
        self.headers = response.headers
        self.body = b""
        self._response = response
        self._what = what

    @property
    def is_redirect(self) -> bool:
        return self.status in _REDIRECTS and "location" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)

    async def read(self) -> bytes:
        with _errors(f"reading {self._what}"):
            self.body = await self._response.read()
        return self.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _errors(f"reading {self._what}"):
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk


class HttpClient:
    """`async with client.stream("GET", url) as response:` / `await client.request(...)`.

    Built inside a running event loop. Redirects are returned, not followed; no proxies from
    the environment and no cookies. Concurrency is the caller's to limit (the dispatcher's
    semaphores). With `guard`, a URL or an address the guard refuses raises its ToolError
    before any connection is opened.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str,
        guard: Guard | None = None,
    ) -> None:
        self._guard = guard
        self._connect_timeout = connect_timeout
        self._timeouts = aiohttp.ClientTimeout(connect=connect_timeout, sock_read=read_timeout)
        connector = aiohttp.TCPConnector(
            ssl=ssl.create_default_context(cafile=certifi.where()),
            limit=0,
            keepalive_timeout=KEEPALIVE_S,
            resolver=GuardedResolver(guard) if guard is not None else aiohttp.ThreadedResolver(),
            use_dns_cache=guard is None,  # guarded: one checked lookup per new connection
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"user-agent": user_agent, "accept": "*/*"},
            timeout=self._timeouts,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            read_bufsize=CHUNK,
        )

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """The response once its head has arrived; the body is read inside the block (a body
        left unread closes the connection instead of returning it to the pool). `timeout`
        replaces the client's read timeout."""
        target = parse_url(url)
        if self._guard is not None:
            self._guard.check_url(target)
        limits = self._timeouts
        if timeout is not None:
            limits = aiohttp.ClientTimeout(connect=self._connect_timeout, sock_read=timeout)
        with _errors(f"{method} {url}"):
            response = await self._session.request(
                method,
                target,
                params=params,
                headers=headers,
                json=json_body,
                allow_redirects=False,
                timeout=limits,
            )
        try:
            yield Response(response, url)
        finally:
            response.release()

    async def request(self, method: str, url: str, **options: Any) -> Response:
        """The whole response, body read (options as for `stream`; `json_body` is sent as JSON)."""
        async with self.stream(method, url, **options) as response:
            await response.read()
        return response

    async def aclose(self) -> None:
        await self._session.close()
