"""The path every tool request takes to the network, and the reasons it often does not.

A request is identified by (kind, key). `Dispatcher.once` serves it from memory, then from the
persistent cache, then joins an identical request already in flight, and only then makes it
(in replay mode it never does). `Dispatcher.attempt` makes it under a per-host and a global
limit and retries retryable failures a bounded number of times with backoff.
"""

import asyncio
import contextlib
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dr_jax.retry import exponential, retry
from dr_jax.tools.cache import MemoryCache, PersistentCache, open_cache
from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.errors import ToolError
from dr_jax.tools.http import HttpClient
from dr_jax.tools.metrics import ToolMetrics
from dr_jax.tools.urlsafety import Guard

T = TypeVar("T")


class _Abandoned(Exception):
    """Raised to the callers waiting on a request whose maker was cancelled or interrupted."""


class Dispatcher:
    """Cache, de-duplication, concurrency limits and retries for the tools' requests."""

    def __init__(self, config: ToolsConfig, metrics: ToolMetrics) -> None:
        self.config = config
        self._metrics = metrics
        self._rng = random.Random()
        self._memory = MemoryCache(config.memory_cache_chars)
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}
        # Weak: a host's semaphore lives while someone holds or awaits it, then goes away.
        self._host_limits: weakref.WeakValueDictionary[str, asyncio.Semaphore] = (
            weakref.WeakValueDictionary()
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        self.http: HttpClient | None = None
        """The client for the configured services (search, reader LLM): not guarded. Direct
        use (start-up checks) is outside the limits."""
        self.pages: HttpClient | None = None
        """The client for the URLs a policy browses: guarded (urlsafety), every request."""
        self._cache: PersistentCache | None = None

    async def start(self) -> None:
        cfg = self.config
        timeouts = dict(connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
        self.http = HttpClient(**timeouts, user_agent=cfg.user_agent)
        self.pages = HttpClient(**timeouts, user_agent=cfg.user_agent, guard=Guard(cfg.allow_hosts))
        if cfg.cache_url:
            self._cache = await open_cache(cfg.cache_url, replay=cfg.replay)

    async def close(self) -> None:
        for client in (self.http, self.pages):
            if client is not None:
                await client.aclose()
        self.http = self.pages = None
        if self._cache is not None:
            await self._cache.close()
            self._cache = None

    async def once(
        self, kind: str, key: str, ttl: float, produce: Callable[[], Awaitable[str]]
    ) -> str:
        """Memory, then the persistent cache, then an identical request already in flight,
        then `produce` (made once). Replay ignores TTLs and never produces.

        The first caller makes the request itself, not in a task of its own: under a burst of
        calls every extra task and callback is one more turn of the event loop between a
        response and the next request. Callers asking meanwhile wait for its result; if it
        gives up (cancelled at its deadline), they make the request again themselves."""
        ttl_or_none = None if self.config.replay else ttl
        value = self._memory.get(kind, key, ttl_or_none)
        if value is None and self._cache is not None:
            entry = await self._cache.get(kind, key, ttl_or_none)
            if entry is not None:
                value, created = entry
                self._memory.put(kind, key, value, created)
        if value is not None:
            self._metrics.counts["cache_hits"] += 1
            return value
        self._metrics.counts["cache_misses"] += 1
        if self.config.replay:
            raise ToolError("replay_miss", "not in the cache (replay mode: the network is off)")
        if (kind, key) in self._inflight:
            self._metrics.counts["deduplicated"] += 1
        while (pending := self._inflight.get((kind, key))) is not None:
            try:
                # shield: this caller giving up must not cancel the result the others await.
                return await asyncio.shield(pending)
            except _Abandoned:
                continue  # its maker gave up: the first of us to get here makes it anew
        return await self._produce_and_store(kind, key, ttl, produce)

    async def _produce_and_store(
        self, kind: str, key: str, ttl: float, produce: Callable[[], Awaitable[str]]
    ) -> str:
        pending = self._inflight[(kind, key)] = asyncio.get_running_loop().create_future()
        try:
            value = await produce()
            self._memory.put(kind, key, value)
            if self._cache is not None:
                await self._cache.put(kind, key, value, ttl)
        except BaseException as e:  # cancelled (or interrupted): those waiting make it anew
            pending.set_exception(e if isinstance(e, Exception) else _Abandoned())
            pending.exception()  # marked as retrieved: nobody may be waiting for it
            raise
        else:
            pending.set_result(value)
            return value
        finally:
            del self._inflight[(kind, key)]

    def _host_limit(self, host: str) -> asyncio.Semaphore:
        limit = self._host_limits.get(host)
        if limit is None:
            limit = self._host_limits[host] = asyncio.Semaphore(self.config.per_host)
        return limit

    async def attempt(self, request: Callable[[], Awaitable[T]], host: str | None) -> T:
        """Run `request()` under the limits (`host`'s, when given, and the global one),
        retrying retryable ToolErrors.

        Wait before retry n (0-based) ~ U(0, min(backoff_max, backoff_base * 2**n)), or the
        server's Retry-After when it gives one (refused when longer than backoff_max).
        """
        cfg = self.config
        backoff = exponential(cfg.backoff_base, cfg.backoff_max, self._rng)

        async def once(n: int) -> T:
            # Host first: waiting for a busy host must not hold one of the global slots.
            host_limit = self._host_limit(host) if host else contextlib.nullcontext()
            async with host_limit, self._slots:
                self._metrics.counts["requests"] += 1
                return await request()

        def wait(n: int, error: Exception) -> float:
            self._metrics.counts["retries"] += 1
            return backoff(n, error) if error.retry_after is None else error.retry_after

        def retryable(error: Exception) -> bool:
            if not isinstance(error, ToolError) or not error.retryable:
                return False
            if error.retry_after is not None and error.retry_after > cfg.backoff_max:
                raise ToolError(
                    error.kind, f"{error}; asked to wait {error.retry_after:g} s, too long"
                ) from None
            return True

        return await retry(once, attempts=cfg.retries + 1, retryable=retryable, wait=wait)
