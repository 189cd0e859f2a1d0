"""The Redis cache's own behaviour (its shared semantics are tested with SQLite's in
test_tools_cache.py): entries expire in Redis, a server lost mid-run costs a warning and the
cache until it is back, replay needs it, and its password stays out of URLs and logs."""

import asyncio
import json
import logging
import os
import signal
import time

import pytest
import redis
from loopback import LoopbackServer
from redis_server import RedisServer
from test_tools_cache import _config, _searxng, _value

from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession, ToolsSetupError
from dr_jax.tools.cache import open_cache
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.redis_cache import RedisCache


@pytest.fixture
def web():
    server = LoopbackServer(_searxng(lambda: server.url))
    with server:
        yield server


def _searches(*queries: str) -> list[ToolCall]:
    return [ToolCall("web_search", {"query": [q]}) for q in queries]


async def _run(tools: ToolExecutor, calls: list[ToolCall]) -> list[str]:
    return await asyncio.gather(*(tools.execute(c, ToolSession("q")) for c in calls))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_entries_expire_in_redis_after_their_ttl(redis_url):
    async def scenario():
        cache = await open_cache(redis_url, replay=False)
        await cache.put("page", "http://a/", "text", ttl=0.2)
        kept = await _value(cache, "page", "http://a/", ttl=None)
        await asyncio.sleep(0.3)
        gone = await _value(cache, "page", "http://a/", ttl=None)
        await cache.close()
        return kept, gone

    with redis.Redis.from_url(redis_url) as client:
        assert asyncio.run(scenario()) == ("text", None)
        assert client.dbsize() == 0  # Redis itself dropped it: its memory stays bounded


def test_a_killed_server_costs_one_warning_and_the_cache_until_it_is_back(caplog):
    with RedisServer() as server:

        async def scenario():
            cache = RedisCache(server.url, required=False, reconnect_every=0.3)
            await cache.start()
            await cache.put("search", "q", "recorded", ttl=60)
            server.kill()
            started = time.monotonic()
            down = [await _value(cache, "search", "q", ttl=None) for _ in range(100)]
            for i in range(100):
                await cache.put("search", f"q{i}", "lost", ttl=60)
            spent = time.monotonic() - started
            server.start()  # the same address, empty (it saved nothing)
            await asyncio.sleep(0.35)
            await cache.put("search", "q", "new", ttl=60)
            back = await _value(cache, "search", "q", ttl=None)
            await cache.close()
            return down, spent, back

        with caplog.at_level(logging.INFO, logger="dr_jax.tools"):
            down, spent, back = asyncio.run(scenario())
    assert down == [None] * 100 and back == "new"
    assert spent < 1.0  # 200 calls: the ones between attempts do not touch the network
    assert len(_warnings(caplog)) == 1 and "unreachable" in _warnings(caplog)[0]
    assert [r.getMessage() for r in caplog.records].count(
        f"the tool cache at {server.url} is reachable again"
    ) == 1


def test_a_server_restarted_between_two_calls_is_not_even_noticed(caplog):
    with RedisServer() as server:

        async def scenario():
            cache = RedisCache(server.url, required=False)
            await cache.start()
            await cache.put("search", "q", "old", ttl=60)
            server.kill()
            server.start()  # the pooled connection is now a dead one
            await cache.put("search", "q", "new", ttl=60)
            value = await _value(cache, "search", "q", ttl=None)
            await cache.close()
            return value

        with caplog.at_level(logging.WARNING, logger="dr_jax.tools"):
            assert asyncio.run(scenario()) == "new"
    assert not _warnings(caplog)


def test_a_hung_server_costs_one_call_its_timeout_and_the_others_nothing(caplog):
    with RedisServer() as server:

        async def scenario():
            cache = RedisCache(server.url, required=False, timeout=0.2, reconnect_every=60)
            await cache.start()
            os.kill(server.pid, signal.SIGSTOP)  # connections open, nothing ever answers
            try:
                started = time.monotonic()
                first = await _value(cache, "search", "q", ttl=None)
                first_took = time.monotonic() - started
                rest = [await _value(cache, "search", "q", ttl=None) for _ in range(100)]
                rest_took = time.monotonic() - started - first_took
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await cache.close()
            return first, first_took, rest, rest_took

        with caplog.at_level(logging.WARNING, logger="dr_jax.tools"):
            first, first_took, rest, rest_took = asyncio.run(scenario())
    assert first is None and rest == [None] * 100
    assert 0.2 <= first_took < 1.0 and rest_took < 0.1
    assert len(_warnings(caplog)) == 1


def test_a_run_goes_on_without_its_cache_when_the_server_dies(web, caplog):
    with RedisServer() as server:

        async def scenario():
            async with ToolExecutor(_config(web, server.url)) as tools:
                before = await _run(tools, _searches("owls", "voles"))
                server.kill()
                after = await _run(tools, _searches(*(f"mice {i}" for i in range(20))))
                return before, after, tools.metrics()

        with caplog.at_level(logging.WARNING, logger="dr_jax.tools"):
            before, after, metrics = asyncio.run(scenario())
    assert json.loads(before[1])[0]["results"][0]["title"] == "Owls voles"
    assert json.loads(after[19])[0]["results"][0]["title"] == "Owls mice 19"
    assert not metrics["errors"] and metrics["requests"] == 22
    assert len(_warnings(caplog)) == 1


def test_replay_needs_its_redis_server_at_start_and_mid_run(web):
    server = RedisServer()  # not started yet: nothing listens at its address
    replay = _config(web, server.url, replay=True)

    async def start_only():
        async with ToolExecutor(replay):
            pass

    with pytest.raises(ToolsSetupError, match=r"unreachable.*start redis-server"):
        asyncio.run(start_only())

    with server:

        async def scenario():
            async with ToolExecutor(_config(web, server.url)) as tools:
                await _run(tools, _searches("owls", "voles"))
            async with ToolExecutor(replay) as tools:
                served = await _run(tools, _searches("owls"))
                server.kill()
                lost = await _run(tools, _searches("voles"))
                return served, lost, tools.metrics()

        served, lost, metrics = asyncio.run(scenario())
    assert json.loads(served[0])[0]["results"][0]["title"] == "Owls owls"
    assert "unreachable in replay mode" in json.loads(lost[0])[0]["error"]
    assert metrics["errors"] == {"cache_unavailable": 1} and metrics["requests"] == 0


def test_the_password_is_read_from_the_environment_and_refused_in_the_url(monkeypatch):
    for url in ("redis://:sekret-pw@127.0.0.1:6379/0", "redis://127.0.0.1/0?password=sekret-pw"):
        with pytest.raises(ValueError, match=r"put it in \$REDISCLI_AUTH") as refused:
            ToolsConfig(cache_url=url)
        assert "sekret" not in str(refused.value)
    with pytest.raises(ValueError, match="neither a file path nor a Redis URL"):
        ToolsConfig(cache_url="memcached://127.0.0.1:11211")

    with RedisServer("--requirepass", "sekret-pw") as server:
        monkeypatch.delenv("REDISCLI_AUTH", raising=False)
        with pytest.raises(ToolsSetupError, match="REDISCLI_AUTH") as refused:
            asyncio.run(open_cache(server.url, replay=False))
        assert "sekret" not in str(refused.value)

        monkeypatch.setenv("REDISCLI_AUTH", "sekret-pw")

        async def round_trip():
            cache = await open_cache(server.url, replay=False)
            await cache.put("search", "q", "v", ttl=60)
            value = await _value(cache, "search", "q", ttl=60)
            await cache.close()
            return value

        assert asyncio.run(round_trip()) == "v"
