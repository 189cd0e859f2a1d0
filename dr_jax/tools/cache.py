"""The tools' caches: a persistent one shared by processes (a SQLite file on one host, Redis
across the hosts of a pod) and an in-process LRU in front of it.

Every cache maps (kind, key) -> text with the time it was written; a lookup honours the
caller's TTL, or serves any age when the TTL is None (replay).
"""

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from dr_jax.tools.config import REDIS_SCHEMES
from dr_jax.tools.errors import ToolsSetupError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID
"""


def fresh(created: float, ttl: float | None) -> bool:
    """Whether an entry written at `created` (time.time()) is still valid for `ttl` seconds."""
    return ttl is None or time.time() - created <= ttl


class PersistentCache(Protocol):
    """What the dispatcher needs from a cache that outlives the process."""

    async def get(self, kind: str, key: str, ttl: float | None) -> tuple[str, float] | None:
        """(value, the time.time() it was written) if present and younger than `ttl` seconds
        (any age when None)."""

    async def put(self, kind: str, key: str, value: str, ttl: float) -> None:
        """Store `value`, to be kept at least `ttl` seconds (Redis forgets it after that)."""

    async def close(self) -> None: ...


async def open_cache(url: str, *, replay: bool) -> PersistentCache:
    """The cache at `url`: redis://host:port/db (or rediss://, unix://), else a SQLite file.

    Raises ToolsSetupError when it cannot be opened, or holds nothing to replay."""
    if urlsplit(url).scheme in REDIS_SCHEMES:
        from dr_jax.tools.redis_cache import RedisCache

        cache = RedisCache(url, required=replay)
        await cache.start()
        return cache
    path = Path(url)
    if replay and not path.is_file():
        raise ToolsSetupError(f"replay=True but there is no cache at {path}: record one")
    try:
        return SqliteCache(path)
    except sqlite3.Error as e:
        raise ToolsSetupError(f"cannot open the tool cache {path}: {e}") from None


class SqliteCache:
    """A SQLite file that processes on one host share: SQLite serialises writers with file
    locks, and WAL lets readers proceed while one process writes. WAL needs every process on
    the same host (and file locks on network filesystems are unreliable): several hosts share
    a Redis cache instead. Entries never expire; `get` checks their age."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 60.0):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    async def get(self, kind: str, key: str, ttl: float | None) -> tuple[str, float] | None:
        row = await asyncio.to_thread(self._select, kind, key)
        return row if row is not None and fresh(row[1], ttl) else None

    async def put(self, kind: str, key: str, value: str, ttl: float) -> None:
        await asyncio.to_thread(self._insert, kind, key, value)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _select(self, kind: str, key: str) -> tuple[str, float] | None:
        with self._lock:
            return self._conn.execute(
                "SELECT value, created FROM entries WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()

    def _insert(self, kind: str, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO entries (kind, key, value, created) VALUES (?, ?, ?, ?)",
                (kind, key, value, time.time()),
            )


class MemoryCache:
    """The most recently used values in this process, at most `max_chars` characters in all,
    with the persistent caches' TTL rule: the 16 samples of one question mostly search and
    browse the same things."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._items: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, kind: str, key: str, ttl: float | None) -> str | None:
        item = self._items.get((kind, key))
        if item is None or not fresh(item[1], ttl):
            return None
        self._items.move_to_end((kind, key))
        return item[0]

    def put(self, kind: str, key: str, value: str, created: float | None = None) -> None:
        """Keep `value`, written at `created` (default: now); a copy of a persistent entry
        keeps its age, so its TTL still counts from the original fetch."""
        old = self._items.pop((kind, key), None)
        if old is not None:
            self._chars -= len(old[0])
        if len(value) > self._max_chars:
            return
        self._items[(kind, key)] = (value, time.time() if created is None else created)
        self._chars += len(value)
        while self._chars > self._max_chars:
            _, (evicted, _) = self._items.popitem(last=False)
            self._chars -= len(evicted)
