"""Serve a World on loopback: pages at their paths, SearXNG-shaped JSON search at /search."""

import contextlib
import html
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from dr_jax.world.world import World

MAX_COUNT = 50


class WorldServer:
    """Threaded HTTP server for a World; use as a context manager or start()/stop().

    GET {url}/search?q=QUERY&format=json[&count=K] answers
    {"query", "number_of_results", "results": [{"title", "url", "content", "score"}]}
    with absolute URLs, ranked by BM25 (without format=json: an HTML results page).
    """

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()  # kept-alive client connections
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("WorldServer is not running: call start() or use it in a `with`")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> "WorldServer":
        if self._httpd is not None:
            return self
        self.world.index  # build before accepting requests  # noqa: B018
        self._httpd = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="world-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection, as a server that went away would."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def search(self, query: str, count: int = 10) -> dict:
        """The JSON body of a search request (absolute result URLs)."""
        results = self.world.index.search(query, k=max(1, min(count, MAX_COUNT)))
        for r in results:
            r["url"] = self.url + r["url"]
        return {"query": query, "number_of_results": len(results), "results": results}

    def __enter__(self) -> "WorldServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def results_page(found: dict) -> str:
    """Search results as HTML, for people browsing the world (format=json is for tools)."""
    items = "\n".join(
        f'<li><a href="{html.escape(r["url"])}">{html.escape(r["title"])}</a>'
        f"<p>{html.escape(r['content'])}</p></li>"
        for r in found["results"]
    )
    query = html.escape(found["query"])
    return (
        f"<!DOCTYPE html><html><head><title>{query} - search</title></head><body>"
        f"<h1>Results for {query}</h1><ol>{items}</ol></body></html>"
    )


def _handler(server: WorldServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            super().finish()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/search":
                params = parse_qs(parts.query)
                query = params.get("q", [""])[0]
                if not query.strip():
                    return self._send(400, "application/json", b'{"error": "missing q"}')
                try:
                    count = int(params.get("count", ["10"])[0])
                except ValueError:
                    return self._send(400, "application/json", b'{"error": "bad count"}')
                found = server.search(query, count)
                if params.get("format", ["html"])[0] == "json":
                    return self._send(200, "application/json", json.dumps(found).encode())
                return self._send(200, "text/html; charset=utf-8", results_page(found).encode())
            page = (
                server.world.home_page()
                if parts.path == "/"
                else server.world.pages.get(parts.path)
            )
            if page is None:
                return self._send(404, "text/html; charset=utf-8", b"<h1>404 Not Found</h1>")
            return self._send(200, "text/html; charset=utf-8", page.encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: a training run issues thousands of requests."""

    return Handler
