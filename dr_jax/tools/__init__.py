"""Web tools for research agents: search, browse with a reading agent, safe and cached.

    config.py        ToolsConfig (and the DeepResearcher preset)
    executor.py      ToolExecutor: tool semantics, deadlines, observations; never raises
    dispatch.py      cache -> in-flight de-dup -> per-host/global limits -> bounded retries
    cache.py         persistent cache (SQLite; TTL, replay) and an in-process LRU
    redis_cache.py   the persistent cache in Redis, shared by the hosts of a pod
    search.py        backends: SearXNG / the offline world, Serper, local BM25 (+ index build)
    http.py          HTTP client (aiohttp); for pages, the guard is its DNS resolver
    fetch.py         HTTP with deadlines, byte cap, hand-followed and re-checked redirects
    urlsafety.py     the guard's rules: only global addresses, http(s), host:port allow-list
    extract.py       HTML (trafilatura), PDF (pypdf) and text to readable text; windows
    workers.py       extraction in subprocesses driven by the event loop
    reader.py        the reading agent (OpenAI-compatible chat endpoint), its prompt
    session.py       per-trajectory memory and latest search results
    observations.py  compact JSON or DeepResearcher's Python-repr rendering
    metrics.py       calls, errors by kind, retries, cache hits, latency percentiles
    errors.py        ToolsSetupError (raised at start-up) and ToolError (observed)
    __main__.py      python -m dr_jax.tools search | browse | index

Names are imported on first use, so `dr_jax.tools.calls` or the extraction workers do not pay
for the HTTP client, trafilatura and the executor when they need none of them.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dr_jax.tools.config import ToolsConfig
    from dr_jax.tools.errors import ToolError, ToolsSetupError
    from dr_jax.tools.executor import ToolExecutor
    from dr_jax.tools.session import ToolSession

_HOMES = {
    "ToolError": "dr_jax.tools.errors",
    "ToolExecutor": "dr_jax.tools.executor",
    "ToolSession": "dr_jax.tools.session",
    "ToolsConfig": "dr_jax.tools.config",
    "ToolsSetupError": "dr_jax.tools.errors",
}
__all__ = ["ToolError", "ToolExecutor", "ToolSession", "ToolsConfig", "ToolsSetupError"]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'dr_jax.tools' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
