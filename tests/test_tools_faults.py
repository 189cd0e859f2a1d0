"""The web misbehaves in every way we know; each tool call still ends, quickly, with an observation.

A loopback server injects the faults (5xx, 429 + Retry-After, hangs, slow drips, huge bodies,
binaries, redirect loops, redirects to private addresses, malformed search JSON) and plays a
reader LLM that errors or never says stop.
"""

import asyncio
import json
import time
from collections import Counter

import pytest
from loopback import LoopbackServer, Reply, Request

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, executor
from dr_jax.tools.calls import ToolCall

ARTICLE = (
    "<html><head><title>Harbor history</title></head><body><nav>Home | About | Login</nav>"
    "<article><h1>Harbor history</h1>"
    + "".join(
        f"<p>Paragraph {i}: the harbor was rebuilt in {1900 + i} after the storm of that year, "
        f"and the new pier measured {100 + i} metres from the shore to the lighthouse.</p>"
        for i in range(12)
    )
    + "</article><footer>Privacy Policy</footer></body></html>"
).encode()
HUGE = b"<p>" + b"x" * 300_000 + b"</p>"


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF showing `text` in Helvetica, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


class FaultyWeb:
    """Routes by path; `hits` counts requests per path so retries can be asserted."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.server = LoopbackServer(self.handle)

    def url(self, path: str) -> str:
        return self.server.url + path

    async def handle(self, request: Request) -> Reply:
        path = request.path
        self.hits[path] += 1
        n = self.hits[path]
        if path == "/search":
            return self.search(request.query.get("q", ""))
        if path.startswith("/v1/"):
            return self.llm(request)
        routes = {
            "/page": lambda: Reply(body=ARTICLE),
            "/500": lambda: Reply(status=500, body=b"boom"),
            "/flaky": lambda: Reply(status=503) if n <= 2 else Reply(body=ARTICLE),
            "/429": lambda: (
                Reply(status=429, headers={"retry-after": "1"}) if n == 1 else Reply(body=ARTICLE)
            ),
            "/429-forever": lambda: Reply(status=429, headers={"retry-after": "3600"}),
            "/hang": lambda: Reply(hang=True),
            "/drip": lambda: Reply(body=ARTICLE, chunks=200, chunk_delay=0.05),
            "/big": lambda: Reply(body=HUGE),
            "/big-chunked": lambda: Reply(body=HUGE, chunked=True, chunks=30),
            "/chunked": lambda: Reply(body=ARTICLE, chunked=True, chunks=7),
            "/binary": lambda: Reply(body=bytes(range(256)) * 40, content_type="image/png"),
            "/nul": lambda: Reply(body=b"\x00\x01\x02" * 1000, content_type="text/html"),
            "/loop": lambda: Reply(status=302, headers={"location": "/loop2"}),
            "/loop2": lambda: Reply(status=302, headers={"location": "/loop"}),
            "/to-private": lambda: Reply(status=302, headers={"location": "http://10.1.2.3/x"}),
            "/to-metadata": lambda: Reply(
                status=301, headers={"location": "http://169.254.169.254/latest/meta-data/"}
            ),
            "/to-page": lambda: Reply(status=307, headers={"location": "/page"}),
            "/to-bad-port": lambda: Reply(status=302, headers={"location": "http://h.org:99999/"}),
            "/to-bad-ipv6": lambda: Reply(status=302, headers={"location": "http://[::1/x"}),
            "/pdf": lambda: Reply(
                body=_pdf("The lighthouse keeper logged 312 ships in 1911."),
                content_type="application/pdf",
            ),
        }
        return routes.get(path, lambda: Reply(status=404, body=b"not found"))()

    def search(self, query: str) -> Reply:
        if query == "malformed":
            return Reply(body=b'{"results": [oops', content_type="application/json")
        if query == "down":
            return Reply(status=503)
        if query == "stuck":
            return Reply(hang=True)
        results = [
            {"title": "Harbor", "url": self.url("/page"), "content": f"about {query}"},
            {"title": "Broken", "url": self.url("/500"), "content": "a broken page"},
        ]
        body = {"query": query, "number_of_results": 2, "results": results}
        return Reply(body=json.dumps(body).encode(), content_type="application/json")

    def llm(self, request: Request) -> Reply:
        if request.path == "/v1/models":
            return Reply(body=b'{"data": []}', content_type="application/json")
        model = json.loads(request.body)["model"]
        if model == "broken":
            return Reply(status=500, body=b"model crashed")
        if model == "stuck":
            return Reply(hang=True)
        if model == "garbage":
            return Reply(body=b"<html>proxy error</html>", content_type="text/html")
        prompt = json.loads(request.body)["messages"][0]["content"]
        window = prompt.split("Window ")[1].split()[0]
        text = f"<new_info>fact from window {window}</new_info><read_next>yes</read_next>"
        reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        return Reply(body=json.dumps(reply).encode(), content_type="application/json")


@pytest.fixture(scope="module")
def web():
    faulty = FaultyWeb()
    with faulty.server:
        yield faulty


def _config(web: FaultyWeb, **overrides) -> ToolsConfig:
    base = dict(
        search_backend="searxng",
        search_url=web.server.url,
        allow_hosts=(web.server.authority,),
        connect_timeout=0.5,
        read_timeout=0.5,
        request_timeout=1.0,
        reader_timeout=1.0,
        call_timeout=8.0,
        retries=2,
        backoff_base=0.01,
        backoff_max=2.0,
        max_bytes=100_000,
        extract_workers=0,
        window_chars=300,
        page_budget=3,
    )
    return ToolsConfig(**{**base, **overrides})


def _run(config: ToolsConfig, call: ToolCall) -> tuple[str, float, dict]:
    """Execute one call in a fresh executor; returns (observation, seconds, metrics)."""

    async def scenario():
        async with ToolExecutor(config) as tools:
            started = time.monotonic()
            text = await tools.execute(call, ToolSession(question="When was the harbor rebuilt?"))
            return text, time.monotonic() - started, tools.metrics()

    return asyncio.run(scenario())


def _browse(web: FaultyWeb, path: str, **overrides) -> tuple[dict, float, dict]:
    text, seconds, metrics = _run(
        _config(web, **overrides), ToolCall("browse_webpage", {"url_list": [web.url(path)]})
    )
    (page,) = json.loads(text)
    return page, seconds, metrics


def test_server_error_is_retried_then_reported(web):
    page, seconds, metrics = _browse(web, "/500")
    assert "HTTP 500" in page["error"]
    assert web.hits["/500"] == 3  # first try + 2 retries
    assert metrics["retries"] == 2 and seconds < 2


def test_transient_503_recovers_after_retries(web):
    page, _, metrics = _browse(web, "/flaky")
    assert "rebuilt in 1900" in page["pages"][0]
    assert metrics["retries"] == 2


def test_429_waits_for_retry_after_then_succeeds(web):
    page, seconds, _ = _browse(web, "/429")
    assert "rebuilt in 1900" in page["pages"][0]
    assert 0.9 <= seconds < 3


def test_429_with_an_unreasonable_retry_after_fails_fast(web):
    page, seconds, _ = _browse(web, "/429-forever")
    assert "429" in page["error"] and "too long" in page["error"]
    assert seconds < 1


def test_server_that_never_answers_times_out(web):
    page, seconds, metrics = _browse(web, "/hang", retries=1)
    assert "timed out" in page["error"]
    assert metrics["errors"] == {"timeout": 1}
    assert seconds < 3


def test_slow_drip_is_cut_by_the_request_deadline(web):
    page, seconds, _ = _browse(web, "/drip", retries=0)  # 200 chunks x 50 ms, deadline 1 s
    assert "timed out after 1 s" in page["error"]
    assert seconds < 2


def test_body_declared_larger_than_the_cap_is_refused_before_reading(web):
    page, _, _ = _browse(web, "/big")
    assert "300,007 bytes (limit 100,000)" in page["error"]


def test_undeclared_body_is_cut_off_at_the_cap(web):
    page, _, _ = _browse(web, "/big-chunked")
    assert "larger than 100,000 bytes" in page["error"]


def test_chunked_body_within_the_cap_is_read(web):
    page, _, _ = _browse(web, "/chunked")
    assert "rebuilt in 1900" in page["pages"][0]


@pytest.mark.parametrize("path", ["/binary", "/nul"])
def test_binary_content_is_refused_with_a_reason(web, path):
    page, _, _ = _browse(web, path)
    assert "binary" in page["error"] or "image/png" in page["error"]


def test_pdf_text_is_extracted(web):
    page, _, _ = _browse(web, "/pdf")
    assert "312 ships in 1911" in page["pages"][0]


def test_redirect_loop_is_detected(web):
    page, seconds, _ = _browse(web, "/loop")
    assert "redirect loop" in page["error"] and seconds < 1


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
def test_redirect_to_a_private_address_is_refused(web, path):
    page, seconds, metrics = _browse(web, path)
    assert page["error"].startswith("browse failed: refused")
    assert metrics["errors"] == {"unsafe_url": 1} and seconds < 1


def test_safe_redirect_is_followed(web):
    page, _, _ = _browse(web, "/to-page")
    assert page["url"].endswith("/to-page") and "rebuilt in 1900" in page["pages"][0]


def test_loopback_is_refused_without_allow_hosts(web):
    page, _, _ = _browse(web, "/page", allow_hosts=())
    assert "loopback" in page["error"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("malformed", "malformed JSON"), ("down", "HTTP 503"), ("stuck", "timed out")],
)
def test_search_failures_become_per_query_errors(web, query, expected):
    text, seconds, _ = _run(
        _config(web, retries=1), ToolCall("web_search", {"query": [query, "harbor"]})
    )
    failed, ok = json.loads(text)
    assert expected in failed["error"]
    assert ok["results"][0]["title"] == "Harbor"
    assert seconds < 3


def test_reader_llm_that_errors_leaves_an_observation(web):
    page, seconds, _ = _browse(
        web, "/page", reader="llm", reader_url=web.url("/v1"), reader_model="broken"
    )
    assert "reader failed on page 0" in page["error"] and "HTTP 500" in page["error"]
    assert seconds < 2


def test_reader_llm_with_garbage_replies_leaves_an_observation(web):
    page, _, _ = _browse(
        web, "/page", reader="llm", reader_url=web.url("/v1"), reader_model="garbage"
    )
    assert "unexpected response" in page["error"]


def test_reader_llm_that_never_answers_times_out(web):
    page, seconds, _ = _browse(
        web, "/page", reader="llm", reader_url=web.url("/v1"), reader_model="stuck", retries=1
    )
    assert "reader failed on page 0" in page["error"] and "timed out" in page["error"]
    assert seconds < 3


def test_reader_that_never_says_stop_is_stopped_by_the_page_budget(web):
    page, _, _ = _browse(
        web, "/page", reader="llm", reader_url=web.url("/v1"), reader_model="chatty"
    )
    assert [note["page"] for note in page["notes"]] == [0, 1, 2]  # page_budget=3
    assert page["total_pages"] > 3


def test_reader_that_never_says_stop_is_stopped_by_the_last_window(web):
    page, _, _ = _browse(
        web,
        "/page",
        reader="llm",
        reader_url=web.url("/v1"),
        reader_model="chatty",
        page_budget=100,
    )
    assert len(page["notes"]) == page["total_pages"]


def test_a_stuck_query_costs_only_its_own_result(web):
    text, seconds, metrics = _run(
        _config(web, call_timeout=0.5, read_timeout=5, request_timeout=5),
        ToolCall("web_search", {"query": ["stuck", "harbor"]}),
    )
    stuck, ok = json.loads(text)
    assert stuck == {"query": "stuck", "error": "search failed: no result within 0.45 s"}
    assert ok["results"][0]["title"] == "Harbor"
    assert seconds < 1 and metrics["errors"] == {"timeout": 1}


def test_a_stuck_page_costs_only_its_own_result(web):
    text, seconds, _ = _run(
        _config(web, call_timeout=1.0, read_timeout=5, request_timeout=5),
        ToolCall("browse_webpage", {"url_list": [web.url("/hang"), web.url("/page")]}),
    )
    stuck, ok = json.loads(text)
    assert stuck["error"] == "browse failed: no result within 0.9 s"
    assert "rebuilt in 1900" in ok["pages"][0]
    assert seconds < 1.5


@pytest.mark.parametrize(
    "call",
    [
        ToolCall("web_search", {"query": 42}),
        ToolCall("browse_webpage", {}),
        ToolCall("browse_webpage", {"url_list": ["   "]}),
        ToolCall("web_search", ["not", "an", "object"]),
        ToolCall("open_the_pod_bay_doors", {"query": ["x"]}),
    ],
)
def test_bad_calls_are_described_not_raised(web, call):
    text, _, metrics = _run(_config(web), call)
    assert json.loads(text)["error"].startswith(f"{call.name} failed: ") or "unknown tool" in text
    assert "internal" not in metrics["errors"]


def test_global_and_per_host_limits_bound_requests_in_flight():
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    async def handle(request: Request) -> Reply:
        host = request.headers["host"].split(":")[0]
        for key in (host, "all"):
            in_flight[key] += 1
            peak[key] = max(peak[key], in_flight[key])
        await asyncio.sleep(0.05)
        for key in (host, "all"):
            in_flight[key] -= 1
        return Reply(body=ARTICLE)

    with LoopbackServer(handle) as server:
        port = server.url.rsplit(":", 1)[1]
        # "localhost" and "127.0.0.1" are two hosts to the executor, one server to us.
        hosts = ("127.0.0.1", "localhost")
        urls = [f"http://{host}:{port}/p{i}" for host in hosts for i in range(12)]
        config = ToolsConfig(
            allow_hosts=(f"127.0.0.1:{port}", f"localhost:{port}"),
            per_host=2,
            concurrency=3,
            extract_workers=0,
        )

        async def scenario():
            async with ToolExecutor(config, search=False) as tools:
                calls = [ToolCall("browse_webpage", {"url_list": [u]}) for u in urls]
                return await asyncio.gather(*(tools.execute(c, ToolSession("q")) for c in calls))

        texts = asyncio.run(scenario())
    assert all("rebuilt in 1900" in t for t in texts)
    assert peak["127.0.0.1"] == 2 and peak["localhost"] <= 2
    assert peak["all"] == 3


def test_malformed_urls_ports_and_locations_fail_alone(web):
    urls = [
        web.url("/page"),
        "http://exa mple.com/",
        "http://example.com:99999/",
        "http://[::1/",
        web.url("/to-bad-port"),
        web.url("/to-bad-ipv6"),
        web.url("/chunked"),
    ]
    text, _, metrics = _run(_config(web), ToolCall("browse_webpage", {"url_list": urls}))
    first, space, port, ipv6, location_port, location_ipv6, last = json.loads(text)
    assert "rebuilt in 1900" in first["pages"][0] and "rebuilt in 1900" in last["pages"][0]
    assert "is not a valid URL (host 'exa mple.com')" in space["error"]
    assert "is not a valid URL (Port out of range 0-65535)" in port["error"]
    assert "is not a valid URL (Invalid IPv6 URL)" in ipv6["error"]
    assert "redirects to a malformed URL 'http://h.org:99999/'" in location_port["error"]
    assert "redirects to a malformed URL 'http://[::1/x'" in location_ipv6["error"]
    assert metrics["errors"] == {"bad_url": 5} and metrics["retries"] == 0


def test_a_bug_on_one_url_costs_only_that_url(web, monkeypatch):
    real = executor.split_windows

    def split_windows(text: str, window_chars: int) -> list[str]:
        if "312 ships" in text:
            raise RuntimeError("a bug")
        return real(text, window_chars)

    monkeypatch.setattr(executor, "split_windows", split_windows)
    call = ToolCall("browse_webpage", {"url_list": [web.url("/pdf"), web.url("/page")]})
    text, _, metrics = _run(_config(web), call)
    buggy, fine = json.loads(text)
    assert buggy["error"] == "browse failed: internal error (RuntimeError)"
    assert "rebuilt in 1900" in fine["pages"][0] and metrics["errors"] == {"internal": 1}


def test_a_browse_call_reads_at_most_max_urls(web):
    urls = [web.url("/page"), web.url("/chunked"), web.url("/capped")]
    text, _, metrics = _run(
        _config(web, max_urls=2), ToolCall("browse_webpage", {"url_list": urls})
    )
    read, also_read, refused = json.loads(text)
    assert read["pages"] and also_read["pages"]
    assert refused == {"url": urls[2], "error": "not browsed: one call browses at most 2 URLs"}
    assert web.hits["/capped"] == 0 and metrics["errors"] == {"too_many_urls": 1}
