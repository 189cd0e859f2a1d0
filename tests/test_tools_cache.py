"""The persistent cache: nothing is paid for twice, processes share it, replay needs no web.

Each test with a `cache_url` runs on both backends: a SQLite file and a real Redis server."""

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import redis
from loopback import LoopbackServer, Reply, Request

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, ToolsSetupError
from dr_jax.tools.cache import MemoryCache, open_cache
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.dispatch import Dispatcher
from dr_jax.tools.metrics import ToolMetrics

PAGE = (
    b"<html><head><title>Owls</title></head><body><article>"
    + (b"<p>The barn owl hunts at night and swallows its prey whole.</p>" * 5)
    + b"</article></body></html>"
)


async def _value(cache, kind: str, key: str, ttl: float | None) -> str | None:
    """The cached text, without the time it was written."""
    entry = await cache.get(kind, key, ttl)
    return None if entry is None else entry[0]


def _searxng(server_url: str):
    async def handle(request: Request) -> Reply:
        if request.path == "/search":
            q = request.query["q"]
            results = [{"title": f"Owls {q}", "url": f"{server_url()}/owl.html", "content": q}]
            body = {"query": q, "number_of_results": 1, "results": results}
            # "slow ..." queries keep identical concurrent calls in flight together
            delay = 0.2 if q.startswith("slow") else 0.0
            data = json.dumps(body).encode()
            return Reply(body=data, content_type="application/json", delay=delay)
        if request.path == "/serper":
            organic = [{"title": "Owls", "link": f"{server_url()}/owl.html", "snippet": "hoot"}]
            return Reply(body=json.dumps({"organic": organic}).encode())
        return Reply(body=PAGE) if request.path == "/owl.html" else Reply(status=404)

    return handle


@pytest.fixture
def web():
    server = LoopbackServer(_searxng(lambda: server.url))
    with server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def cache_url(request, tmp_path) -> str:
    """Where the persistent cache lives: a fresh SQLite file, or the session's emptied Redis."""
    if request.param == "sqlite":
        return str(tmp_path / "c.sqlite")
    return request.getfixturevalue("redis_url")


def _entries(cache_url: str, kind: str) -> dict[str, str]:
    """Every stored `kind` entry, key -> value, read past the cache's own API."""
    if cache_url.startswith("redis://"):
        prefix = f"dr_jax:tools:{kind}:"
        with redis.Redis.from_url(cache_url, decode_responses=True) as client:
            names = client.scan_iter(match=prefix + "*")
            return {n.removeprefix(prefix): client.hget(n, "value") for n in names}
    with sqlite3.connect(cache_url) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return dict(conn.execute("SELECT key, value FROM entries WHERE kind = ?", (kind,)))


CALLS = [
    ToolCall("web_search", {"query": ["barn owl", "owl diet"]}),
    ToolCall("browse_webpage", {"url_list": ["{url}/owl.html"]}),
]


def _session_run(config: ToolsConfig, base_url: str, extra_query: str | None = None):
    """Run CALLS in one trajectory; returns (observations, metrics)."""

    async def scenario():
        async with ToolExecutor(config) as tools:
            session = ToolSession(question="What do barn owls eat?")
            texts = []
            for call in CALLS:
                urls = [u.format(url=base_url) for u in call.arguments.get("url_list", [])]
                args = {"url_list": urls} if urls else call.arguments
                texts.append(await tools.execute(ToolCall(call.name, args), session))
            if extra_query:
                call = ToolCall("web_search", {"query": [extra_query]})
                texts.append(await tools.execute(call, session))
            return texts, tools.metrics()

    return asyncio.run(scenario())


def _config(web: LoopbackServer, cache_url: str | None = None, **overrides) -> ToolsConfig:
    base = dict(search_backend="world", search_url=web.url, allow_hosts=(web.authority,))
    return ToolsConfig(**{**base, "cache_url": cache_url, "extract_workers": 0, **overrides})


def test_second_identical_run_makes_no_network_calls(web, cache_url):
    first, metrics = _session_run(_config(web, cache_url), web.url)
    served = web.requests
    assert metrics["requests"] == 3  # two searches and one page (start-up probe excluded)
    second, metrics = _session_run(_config(web, cache_url), web.url)
    assert second == first
    assert metrics["requests"] == 0 and metrics["cache_hits"] == 3
    assert web.requests == served + 1  # only the start-up reachability probe


def test_expired_entries_are_fetched_again(cache_url):
    async def scenario():
        cache = await open_cache(cache_url, replay=False)
        await cache.put("search", "q", "v", ttl=60)
        fresh = await _value(cache, "search", "q", ttl=60)
        await asyncio.sleep(0.01)
        expired = await _value(cache, "search", "q", ttl=0.001)
        any_age = await _value(cache, "search", "q", ttl=None)
        await cache.close()
        return fresh, expired, any_age

    assert asyncio.run(scenario()) == ("v", None, "v")


def test_a_copy_in_memory_expires_when_the_fetched_entry_does(web, cache_url):
    """The TTL counts from the fetch, not from when this process copied the entry to memory."""
    config = _config(web, cache_url, search_ttl=1.0)
    call = ToolCall("web_search", {"query": ["barn owl"]})

    async def scenario():
        async with ToolExecutor(config) as first:
            await first.execute(call, ToolSession("q"))  # fetched at t0
        await asyncio.sleep(0.3)
        async with ToolExecutor(config) as second:
            await second.execute(call, ToolSession("q"))  # ~t0 + 0.3: copied to memory
            await asyncio.sleep(0.8)
            await second.execute(call, ToolSession("q"))  # ~t0 + 1.1: expired, copy or not
            return second.metrics()

    metrics = asyncio.run(scenario())
    assert metrics["cache_hits"] == 1 and metrics["requests"] == 1


def test_without_a_cache_file_repeats_in_one_process_are_served_from_memory(web):
    config = _config(web)
    first, _ = _session_run(config, web.url)

    async def again():
        async with ToolExecutor(config) as tools:
            texts = []
            for _ in range(2):
                session = ToolSession(question="What do barn owls eat?")
                texts.append(await tools.execute(CALLS[0], session))
            return texts, tools.metrics()

    (one, two), metrics = asyncio.run(again())
    assert one == two == first[0]
    assert metrics["requests"] == 2 and metrics["cache_hits"] == 2


def test_memory_cache_keeps_the_most_recently_used_values_within_its_size():
    memory = MemoryCache(max_chars=10)
    memory.put("page", "a", "AAAA")
    memory.put("page", "b", "BBBB")
    assert memory.get("page", "a", ttl=None) == "AAAA"  # "a" is now the most recent
    memory.put("page", "c", "CCCC")  # 12 characters: the least recent ("b") goes
    assert memory.get("page", "b", ttl=None) is None
    assert memory.get("page", "a", ttl=None) == "AAAA" and memory.get("page", "c", ttl=60) == "CCCC"
    memory.put("page", "huge", "x" * 11)  # larger than the whole cache: not kept
    assert memory.get("page", "huge", ttl=None) is None and memory.get("page", "a", ttl=None)


def test_identical_concurrent_requests_are_made_once(web, cache_url):
    async def scenario():
        config = _config(web, cache_url)
        async with ToolExecutor(config) as tools:
            calls = [ToolCall("web_search", {"query": ["slow same question"]})] * 20
            texts = await asyncio.gather(*(tools.execute(c, ToolSession("q")) for c in calls))
            return texts, tools.metrics()

    texts, metrics = asyncio.run(scenario())
    assert len(set(texts)) == 1
    assert metrics["requests"] == 1 and metrics["deduplicated"] == 19


class _SlowPage:
    """One page behind a Dispatcher, each request taking 0.2 s; `made` counts the requests."""

    def __init__(self) -> None:
        self.dispatcher = Dispatcher(ToolsConfig(), ToolMetrics())
        self.made = 0

    async def _produce(self) -> str:
        self.made += 1
        number = self.made
        await asyncio.sleep(0.2)
        return f"made by request {number}"

    def ask(self, patience: float | None = None) -> asyncio.Task:
        """A caller of the page, giving up (TimeoutError) after `patience` seconds."""

        async def caller() -> str:
            async with asyncio.timeout(patience):
                return await self.dispatcher.once("page", "u", 60.0, self._produce)

        return asyncio.create_task(caller())


def test_a_request_whose_maker_gives_up_is_made_again_by_one_of_those_waiting():
    """The first caller makes the request on its own schedule; when its deadline cancels it,
    one of the callers waiting makes it anew and the others wait for that one."""

    async def scenario():
        page = _SlowPage()
        first = page.ask(patience=0.05)
        await asyncio.sleep(0)  # the first caller's request is in flight
        waiting = [page.ask() for _ in range(3)]
        with pytest.raises(TimeoutError):
            await first
        return await asyncio.gather(*waiting), page

    values, page = asyncio.run(scenario())
    assert values == ["made by request 2"] * 3 and page.made == 2
    assert not page.dispatcher._inflight


def test_a_waiting_caller_that_gives_up_leaves_the_request_to_the_others():
    async def scenario():
        page = _SlowPage()
        maker = page.ask()
        await asyncio.sleep(0)
        impatient, patient = page.ask(patience=0.05), page.ask()
        with pytest.raises(TimeoutError):
            await impatient
        return await asyncio.gather(maker, patient), page.made

    assert asyncio.run(scenario()) == (["made by request 1"] * 2, 1)


def test_replay_serves_the_cache_with_the_network_off(web, cache_url):
    recorded, _ = _session_run(_config(web, cache_url), web.url)
    url = web.url
    web.stop()  # the network is gone; replay must not need it, even at start-up
    replayed, metrics = _session_run(
        _config(web, cache_url, replay=True), url, extra_query="never asked"
    )
    assert replayed[:2] == recorded
    assert metrics["requests"] == 0
    assert "not in the cache (replay mode" in json.loads(replayed[2])[0]["error"]


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, ToolsSetupError
    from dr_jax.tools.calls import ToolCall

    async def main(url, cache, worker):
        config = ToolsConfig(search_backend="world", search_url=url, cache_url=cache,
                             extract_workers=0)
        async with ToolExecutor(config) as tools:
            queries = [f"shared {i}" for i in range(60)] + [f"own {worker} {i}" for i in range(60)]
            calls = [ToolCall("web_search", {"query": [q]}) for q in queries]
            await asyncio.gather(*(tools.execute(c, ToolSession("q")) for c in calls))
            errors = tools.metrics()["errors"]
            assert not errors, errors

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


def test_two_processes_share_one_cache_and_a_third_reads_it(web, cache_url, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), web.url, cache_url, str(w)])
        for w in range(2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    entries = _entries(cache_url, "search")
    assert sorted(json.loads(k)[2] for k in entries) == sorted(
        {f"shared {i}" for i in range(60)} | {f"own {w} {i}" for w in range(2) for i in range(60)}
    )
    # Every stored result is the one the server gave for that query.
    for key, value in entries.items():
        assert json.loads(value)[0][2] == json.loads(key)[2]

    async def read():
        async with ToolExecutor(_config(web, cache_url)) as tools:
            calls = [ToolCall("web_search", {"query": [f"own 1 {i}"]}) for i in range(60)]
            texts = await asyncio.gather(*(tools.execute(c, ToolSession("q")) for c in calls))
            return texts, tools.metrics()

    texts, metrics = asyncio.run(read())
    assert metrics["requests"] == 0 and metrics["cache_hits"] == 60
    assert json.loads(texts[7])[0]["results"][0]["title"] == "Owls own 1 7"


def test_replay_without_a_recorded_cache_file_is_a_start_up_error(web, tmp_path):
    config = _config(web, str(tmp_path / "never-recorded.sqlite"), replay=True)

    async def scenario():
        async with ToolExecutor(config):
            pass

    with pytest.raises(ToolsSetupError, match="no cache at"):
        asyncio.run(scenario())


def test_a_dead_link_is_fetched_once_and_its_error_replayed(web, cache_url):
    missing = ToolCall("browse_webpage", {"url_list": [f"{web.url}/gone.html"]})

    async def browse_twice(config):
        async with ToolExecutor(config) as tools:
            texts = [await tools.execute(missing, ToolSession("q")) for _ in range(2)]
            return texts, tools.metrics()

    (first, second), metrics = asyncio.run(browse_twice(_config(web, cache_url)))
    assert "HTTP 404" in json.loads(first)[0]["error"] and second == first
    assert metrics["requests"] == 1 and metrics["cache_hits"] == 1
    web.stop()
    replay = _config(web, cache_url, replay=True)
    (replayed, _), _ = asyncio.run(browse_twice(replay))
    assert replayed == first


def test_no_api_key_is_ever_stored(web, cache_url, monkeypatch):
    monkeypatch.setenv("TEST_SERPER_KEY", "sekret-123")
    serper = dict(search_backend="serper", search_url=f"{web.url}/serper")
    config = _config(web, cache_url, serper_key_env="TEST_SERPER_KEY", **serper)
    _, metrics = _session_run(config, web.url)
    assert not metrics["errors"]
    stored = _entries(cache_url, "search") | _entries(cache_url, "page")
    assert len(stored) == 3 and not any("sekret" in k + v for k, v in stored.items())
