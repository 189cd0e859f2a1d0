"""A small HTTP/1.1 server on 127.0.0.1 for tests, benchmarks and fault injection.

It runs its own asyncio loop in a background thread, so thousands of slow responses cost no
threads; a route is an async function of the request returning a `Reply` that may be delayed,
dripped byte by byte, or never sent at all.
"""

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What to send: `delay` s before the headers; the body in `chunks` pieces spaced
    `chunk_delay` s apart (a slow drip); `chunked` uses chunked transfer encoding (no declared
    length); `hang` never answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunks: int = 1
    chunk_delay: float = 0.0
    chunked: bool = False
    hang: bool = False


Handler = Callable[[Request], Awaitable[Reply]]


class LoopbackServer:
    """`with LoopbackServer(handler) as server: server.url` — counts requests in `requests` and
    the connections they came on in `connections`; `authority` ("127.0.0.1:PORT") is what the
    tools' allow-list takes."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: a server context (certificate loaded) to serve https instead of http."""
        self._handler = handler
        self._host, self._port = host, port
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.requests = 0
        self.connections = 0
        self.url = ""
        self.authority = ""

    def __enter__(self) -> "LoopbackServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self._host, self._port, ssl=self._tls), self._loop
        ).result()
        port = self._server.sockets[0].getsockname()[1]
        self.authority = f"{self._host}:{port}"
        self.url = f"{'https' if self._tls else 'http'}://{self.authority}"

    def stop(self) -> None:
        """Close the server and every open connection; stopping twice is harmless."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        self.connections += 1
        try:
            while request := await self._read_request(reader):
                self.requests += 1
                reply = await self._handler(request)
                await self._write(writer, reply, head_only=request.method == "HEAD")
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> Request | None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *fields = head.rstrip("\r\n").split("\r\n")
        if not line.strip():
            return None
        method, target, _ = line.split(" ", 2)
        headers = {}
        for field_line in fields:
            name, _, value = field_line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        return Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, head_only: bool) -> None:
        """`head_only` (a HEAD request): the head as for GET, no body."""
        if reply.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(reply.delay)
        reason = HTTPStatus(reply.status).phrase
        framing = (
            {"transfer-encoding": "chunked"}
            if reply.chunked
            else {"content-length": str(len(reply.body))}
        )
        headers = {"content-type": reply.content_type, **framing, **reply.headers}
        head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        unsent = head.encode("latin-1") + b"\r\n"  # goes out with the first piece, as servers do
        if head_only:
            writer.write(unsent)
            await writer.drain()
            return
        size = max(1, -(-len(reply.body) // reply.chunks))
        for start in range(0, len(reply.body), size):
            piece = reply.body[start : start + size]
            framed = b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece
            writer.write(unsent + framed)
            unsent = b""
            await writer.drain()
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        writer.write(unsent + (b"0\r\n\r\n" if reply.chunked else b""))
        await writer.drain()
