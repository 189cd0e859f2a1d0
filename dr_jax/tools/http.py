"""The tools' HTTP/1.1 client: h11 (the protocol engine inside httpx) over asyncio streams,
with kept-alive connections.

Why not httpx itself: at 64 requests in flight its layers (anyio, httpcore's pool, the
request and response models) cost about 1 ms of CPU per request, several times what the
tools' own work costs, and the tools need none of what they buy (proxies, cookies, HTTP/2,
automatic redirects). This client does only what the tools use: a connect timeout, a read
timeout per chunk, TLS with certifi's roots, gzip and deflate, the address each connection
reached (for the DNS-rebinding check) and a body read chunk by chunk (for byte caps).
"""

import asyncio
import contextlib
import json
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import certifi
import h11

KEEPALIVE_S = 5.0
"""An idle connection older than this is closed rather than reused (servers drop them)."""
CHUNK = 65_536
"""Bytes read from a socket, or decompressed, at a time."""
_SAFE_IN_TARGET = "!#$%&'()*+,/:;=?@[]~"  # kept; non-ASCII and other unsafe bytes are %-escaped
_UNSAFE_IN_TARGET = re.compile(r"[^A-Za-z0-9_.\-" + re.escape(_SAFE_IN_TARGET) + "]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpError(Exception):
    """A transport failure: no connection, or a response that broke off or is not HTTP."""


class HttpTimeout(HttpError):
    """No connection within the connect timeout, or no data within the read timeout."""


class BadEncoding(HttpError):
    """A body whose Content-Encoding does not decode (asking again will not help)."""


_IO_ERRORS = (OSError, h11.ProtocolError)  # OSError includes TimeoutError


def _failure(error: Exception, what: str, seconds: float) -> HttpError:
    if isinstance(error, TimeoutError):
        return HttpTimeout(f"{what}: no progress within {seconds:g} s")
    return HttpError(f"{what}: {type(error).__name__}: {error}")


class _Connection:
    """One HTTP/1.1 connection: h11's state machine over an asyncio stream pair."""

    def __init__(
        self, origin: tuple[str, str, int], reader: asyncio.StreamReader, writer: Any, peer: str
    ) -> None:
        self.origin = origin
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.peer: str = peer
        self.idle_since = 0.0

    async def exchange(self, request: h11.Request, body: bytes, timeout: float) -> h11.Response:
        """Send the request; the response's head once it has arrived."""
        data = self.protocol.send(request)
        if body:
            data += self.protocol.send(h11.Data(data=body))
        self.writer.write(data + self.protocol.send(h11.EndOfMessage()))
        if self.writer.transport.get_write_buffer_size():  # the socket did not take it all
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
            except _IO_ERRORS as e:
                raise _failure(e, "sending the request", timeout) from None
        head = await self.receive(timeout)
        while isinstance(head, h11.InformationalResponse):  # 100 Continue and the like
            head = await self.receive(timeout)
        return head

    async def receive(self, timeout: float) -> Any:
        """The next h11 event (h11.Response, h11.Data, h11.EndOfMessage), reading as needed;
        `timeout` bounds each read."""
        try:
            while (event := self.protocol.next_event()) is h11.NEED_DATA:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(CHUNK)
                self.protocol.receive_data(data)
        except _IO_ERRORS as e:
            raise _failure(e, "reading the response", timeout) from None
        return event

    def finished(self) -> bool:
        """The exchange is complete and the connection can carry the next one."""
        return self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE

    def alive(self, now: float) -> bool:
        idle = now - self.idle_since
        return idle < KEEPALIVE_S and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for a gzip or deflate Content-Encoding, None for identity (and for
    codings it does not know, passed through as bytes, as httpx does)."""
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # either header, detected
    return None


class Response:
    """Status, headers (lower-case names; repeats joined by ", ") and the address the
    connection reached. The body arrives through `async for chunk in response` (decoded),
    or `await response.read()`, which also keeps it in `body`."""

    def __init__(self, connection: _Connection, head: h11.Response, read_timeout: float) -> None:
        self.status: int = head.status_code
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self.peer = connection.peer
        self.body = b""
        self.connection = connection
        self._timeout = read_timeout
        self._decoder = _decoder(headers.get("content-encoding", "").strip().lower())
        self._ended = False

    @property
    def complete(self) -> bool:
        """The whole body has been received."""
        return self._ended

    @property
    def is_redirect(self) -> bool:
        return self.status in _REDIRECTS and "location" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)

    async def read(self) -> bytes:
        self.body = b"".join([chunk async for chunk in self])
        return self.body

    def __aiter__(self) -> "Response":
        return self

    async def __anext__(self) -> bytes:
        decoder = self._decoder
        while True:
            if decoder is not None and decoder.unconsumed_tail:
                return self._decompress(decoder.unconsumed_tail)
            if self._ended:
                raise StopAsyncIteration
            event = await self.connection.receive(self._timeout)
            if isinstance(event, h11.EndOfMessage):
                self._ended = True
                if decoder is not None and (rest := decoder.flush()):
                    return rest
                continue
            if not isinstance(event, h11.Data):
                raise HttpError(f"unexpected {type(event).__name__} in a response body")
            chunk = self._decompress(event.data) if decoder is not None else event.data
            if chunk:
                return chunk

    def _decompress(self, data: bytes) -> bytes:
        """At most CHUNK bytes out at a time, so a compression bomb meets the caller's cap."""
        try:
            return self._decoder.decompress(data, CHUNK)
        except zlib.error as e:
            raise BadEncoding(f"the compressed body could not be decoded: {e}") from None


def _escaped(text: str) -> str:
    """`text` with non-ASCII and unsafe characters %-escaped (most URLs have none: no copy)."""
    return quote(text, safe=_SAFE_IN_TARGET) if _UNSAFE_IN_TARGET.search(text) else text


def _target(path: str, query: str, params: dict[str, Any] | None) -> str:
    target = _escaped(path or "/")
    if query:
        target += "?" + _escaped(query)
    if params:
        target += ("&" if query else "?") + urlencode(params)
    return target


class HttpClient:
    """`async with client.stream("GET", url) as response:` / `await client.request(...)`.

    Connections are kept alive and reused by origin, most recently used first; at most
    `max_idle` stay open while idle. Concurrency is the caller's to limit (the dispatcher's
    semaphores). No proxies and no cookies: the peer-address check sees the real server.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str,
        max_idle: int = 64,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._user_agent = user_agent
        self._max_idle = max_idle
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self._idle: list[_Connection] = []  # oldest first

    def _prepare(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
        body: bytes,
    ) -> tuple[tuple[str, str, int], h11.Request]:
        """The origin to connect to and the request to send."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise HttpError(f"cannot request {url!r}: not an http(s) URL with a host")
        default_port = 443 if parts.scheme == "https" else 80
        try:
            host = host if host.isascii() else host.encode("idna").decode("ascii")
            port = parts.port or default_port
        except (UnicodeError, ValueError) as e:
            raise HttpError(f"cannot request {url!r}: {e}") from None
        authority = f"[{host}]" if ":" in host else host
        fields = {
            "host": authority if port == default_port else f"{authority}:{port}",
            "user-agent": self._user_agent,
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            **(headers or {}),
        }
        if body:
            fields["content-length"] = str(len(body))
        target = _target(parts.path, parts.query, params)
        try:
            request = h11.Request(method=method, target=target, headers=list(fields.items()))
        except (h11.LocalProtocolError, UnicodeError) as e:
            raise HttpError(f"cannot request {url!r}: {e}") from None
        return (parts.scheme, host, port), request

    async def _connection(self, origin: tuple[str, str, int]) -> _Connection:
        """The most recently used live idle connection to `origin`, else a new one."""
        now = time.monotonic()
        while self._idle and not self._idle[0].alive(now):
            self._idle.pop(0).close()
        for i in range(len(self._idle) - 1, -1, -1):
            if self._idle[i].origin == origin:
                connection = self._idle.pop(i)
                if connection.alive(now):
                    return connection
                connection.close()
        scheme, host, port = origin
        tls = self._tls if scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=CHUNK
                )
        except _IO_ERRORS as e:
            raise _failure(e, f"connecting to {host}:{port}", self._connect_timeout) from None
        peer = writer.get_extra_info("peername")
        if not peer:  # reset as soon as it opened
            writer.close()
            raise HttpError(f"connecting to {host}:{port}: closed at once")
        return _Connection(origin, reader, writer, peer[0])

    async def _open(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
        body: bytes,
        timeout: float | None,
    ) -> Response:
        origin, request = self._prepare(method, url, params, headers, body)
        read_timeout = timeout or self._read_timeout
        connection = await self._connection(origin)
        try:
            head = await connection.exchange(request, body, read_timeout)
        except BaseException:
            connection.close()
            raise
        return Response(connection, head, read_timeout)

    def _release(self, response: Response) -> None:
        """Keep the connection for the next request if this one is complete, else close it."""
        connection = response.connection
        if not response.complete or not connection.finished():
            connection.close()
            return
        connection.protocol.start_next_cycle()
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if len(self._idle) > self._max_idle:
            self._idle.pop(0).close()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """The response once its head has arrived; the body is read inside the block (a body
        left unread closes the connection instead of returning it to the pool). `timeout`
        replaces the client's read timeout."""
        response = await self._open(method, url, params, headers, body, timeout)
        try:
            yield response
        finally:
            self._release(response)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """The whole response, body read (`json_body` is sent as JSON)."""
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        response = await self._open(method, url, params, headers, body, timeout)
        try:
            await response.read()
        finally:
            self._release(response)
        return response

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
