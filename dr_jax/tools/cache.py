"""A persistent key-value cache in SQLite, safe for several processes (and hosts) at once.

SQLite serialises writers with file locks, so processes that share `path` never corrupt it.
WAL mode lets readers proceed while one process writes, but needs every process on one host;
on storage shared by several hosts use `shared_fs=True` (rollback journal, plain file locks).
"""

import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID
"""


class ToolCache:
    """`(kind, key) -> text` with a creation time; `get` honours a TTL unless `ttl` is None."""

    def __init__(self, path: str | Path, *, shared_fs: bool = False, busy_timeout: float = 60.0):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.execute(f"PRAGMA journal_mode={'DELETE' if shared_fs else 'WAL'}")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def get(self, kind: str, key: str, ttl: float | None) -> str | None:
        """The stored value if present and younger than `ttl` seconds (any age when None)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value, created FROM entries WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        if row is None or (ttl is not None and time.time() - row[1] > ttl):
            return None
        return row[0]

    def put(self, kind: str, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO entries (kind, key, value, created) VALUES (?, ?, ?, ?)",
                (kind, key, value, time.time()),
            )

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            return self._conn.execute(
                "SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class MemoryCache:
    """The most recently used values in this process, at most `max_chars` characters in all,
    with the same TTL rule as ToolCache: the 16 samples of one question mostly search and
    browse the same things."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._items: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, kind: str, key: str, ttl: float | None) -> str | None:
        item = self._items.get((kind, key))
        if item is None or (ttl is not None and time.time() - item[1] > ttl):
            return None
        self._items.move_to_end((kind, key))
        return item[0]

    def put(self, kind: str, key: str, value: str) -> None:
        old = self._items.pop((kind, key), None)
        if old is not None:
            self._chars -= len(old[0])
        if len(value) > self._max_chars:
            return
        self._items[(kind, key)] = (value, time.time())
        self._chars += len(value)
        while self._chars > self._max_chars:
            _, (evicted, _) = self._items.popitem(last=False)
            self._chars -= len(evicted)
