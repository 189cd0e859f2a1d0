"""The persistent tool cache in Redis, shared by every host of a pod.

An entry is a hash {value, created} at "dr_jax:tools:<kind>:<key>" that Redis expires after its
TTL, so the server's memory stays bounded; a lookup also checks the age against the caller's
TTL, as the SQLite cache does. A replay serves what Redis still holds.

A cache only saves work, so losing the server mid-run must not stop a run: the first failure
logs one warning and the cache steps aside; one call every `reconnect_every` seconds tries the
server again while the others skip it (so a call waits at most two `timeout`s, one per
attempt), and the first success says so. In replay mode the cache is the only source: a
failure is the call's error.
"""

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from dr_jax.tools.cache import fresh
from dr_jax.tools.errors import ToolError, ToolsSetupError

log = logging.getLogger("dr_jax.tools")
T = TypeVar("T")

PREFIX = "dr_jax:tools:"
PASSWORD_ENV = "REDISCLI_AUTH"  # the server's password, where redis-cli reads it too
TIMEOUT = 2.0  # seconds to connect or to answer: a LAN round trip takes < 1 ms, a page < 5 MB
CONNECTIONS = 32  # per process; a lookup holds one for about a round trip


class RedisCache:
    """`(kind, key) -> text` in Redis; `required` (replay) turns an unreachable server into
    ToolErrors instead of misses."""

    def __init__(
        self, url: str, *, required: bool, timeout: float = TIMEOUT, reconnect_every: float = 5.0
    ) -> None:
        self.url = url  # never holds a password (ToolsConfig refuses one)
        self._required = required
        self._reconnect_every = reconnect_every
        self._retry_at: float | None = None
        """While the server is unreachable: when the next call may try it again."""
        # Blocking: a burst of lookups waits for one of the connections instead of failing.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=CONNECTIONS,
            timeout=timeout,
            password=os.environ.get(PASSWORD_ENV) or None,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate reconnect: a pooled connection the server closed (a restart) fails
            # once, then works on a new connection.
            retry=Retry(NoBackoff(), 1),
        )
        self._redis = redis.Redis.from_pool(pool)

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as e:
            await self._redis.aclose()
            raise ToolsSetupError(
                f"the tool cache at {self.url} is unreachable ({e}): start redis-server there "
                f"or fix --tools.cache-url (a password goes in ${PASSWORD_ENV})"
            ) from None

    async def get(self, kind: str, key: str, ttl: float | None) -> tuple[str, float] | None:
        name = PREFIX + kind + ":" + key
        entry = await self._call(lambda: self._redis.hmget(name, "value", "created"))
        if entry is None or entry[0] is None or not fresh(float(entry[1]), ttl):
            return None
        return entry[0], float(entry[1])

    async def put(self, kind: str, key: str, value: str, ttl: float) -> None:
        name = PREFIX + kind + ":" + key

        async def store() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"value": value, "created": repr(time.time())})
                pipe.pexpire(name, max(1, round(ttl * 1000)))
                await pipe.execute()

        await self._call(store)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T | None:
        """`command()`'s result; None while the server is unreachable (raises when required)."""
        if self._retry_at is not None:
            if time.monotonic() < self._retry_at:
                return None
            self._retry_at = time.monotonic() + self._reconnect_every  # the others skip
        try:
            result = await command()
        except RedisError as e:
            if self._required:
                raise ToolError(
                    "cache_unavailable", f"the tool cache is unreachable in replay mode ({e})"
                ) from None
            if self._retry_at is None:
                log.warning(
                    "the tool cache at %s is unreachable (%s): going on without it, trying it "
                    "again every %g s",
                    self.url,
                    e,
                    self._reconnect_every,
                )
            self._retry_at = time.monotonic() + self._reconnect_every
            return None
        if self._retry_at is not None:
            self._retry_at = None
            log.info("the tool cache at %s is reachable again", self.url)
        return result
