"""Configuration of the tool executor: which backends, how much patience, how much safety."""

import dataclasses
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from dr_jax.tools.urlsafety import allow_entry

SEARCH_BACKENDS = ("world", "searxng", "serper", "local")
SERPER_URL = "https://google.serper.dev/search"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _check_cache_url(url: str) -> None:
    """A SQLite path or a Redis URL without a password (it would show in process lists)."""
    parts = urlsplit(url)
    if "://" in url and parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"cache_url {url!r} is neither a file path nor a Redis URL: use e.g. "
            "/data/tools.sqlite or redis://host:6379/0"
        )
    if parts.scheme in REDIS_SCHEMES and (parts.password or "password" in parse_qs(parts.query)):
        raise ValueError(
            "cache_url holds a password, which process lists and logs would show: "
            "remove it and put it in $REDISCLI_AUTH"
        )


@dataclass(frozen=True)
class ToolsConfig:
    """Everything `ToolExecutor` needs. The defaults use the offline research world once
    `search_url` points at it (`dr_jax.runtime.start_world_tools` serves it and sets that)."""

    search_backend: Literal["world", "searxng", "serper", "local"] = "world"
    """world/searxng: SearXNG JSON at `search_url`; serper: Google via Serper; local: BM25 index."""
    search_url: str | None = None
    """Base URL of the SearXNG or world server (e.g. http://127.0.0.1:8080); serper: API URL."""
    serper_key_env: str = "SERPER_API_KEY"
    """Environment variable holding the Serper API key (the key is never logged or written)."""
    local_index: str | None = None
    """Directory of a BM25 index built with `python -m dr_jax.tools index` (backend "local")."""
    top_k: int = 10
    """Results kept per query."""
    max_queries: int = 3
    """Only the first N queries of one web_search call run (DeepResearcher: 3)."""

    reader: Literal["none", "llm"] = "none"
    """none: browse returns raw text windows; llm: a reading agent extracts new information."""
    reader_url: str | None = None
    """OpenAI-compatible base URL of the reader LLM, e.g. http://127.0.0.1:30000/v1."""
    reader_model: str | None = None
    """Model name sent to the reader endpoint."""
    reader_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the reader's API key (optional for local servers)."""
    reader_prompt_file: str | None = None
    """A prompt template file replacing the built-in reading prompt (see tools/reader.py)."""
    reader_temperature: float = 0.6
    """Sampling temperature of the reader LLM."""
    reader_max_tokens: int = 1024
    """Completion budget of one reader call."""
    reader_timeout: float = 120.0
    """Seconds for one reader LLM reply (a 40,960-character window is ~10k prompt tokens)."""
    page_budget: int = 4
    """At most this many windows of one page are read (llm) or returned (none)."""
    window_chars: int = 40_960
    """Characters per window; windows are cut on whitespace (DeepResearcher: 40,960)."""
    text_format: Literal["markdown", "text"] = "markdown"
    """How extracted HTML is rendered."""
    fast_extraction: bool = False
    """Trafilatura's main extractor alone, without checking it against its fallbacks
    (readability, jusText): a fifth to a third less CPU per real page (benchmarks/tools.py), at some
    loss of recall on the pages the main extractor misreads."""
    browse_latest_search_only: bool = False
    """Only URLs returned by the trajectory's latest search may be browsed (DeepResearcher rule)."""

    max_urls: int = 30
    """URLs browsed per browse_webpage call, the rest refused (DeepResearcher read at most the
    latest search's results: 3 queries x top-10)."""

    allow_hosts: tuple[str, ...] = ()
    """host:port pairs the network guard lets through although they are not globally routable
    (the world's server, a test's: "127.0.0.1:8080"; IPv6 "[::1]:8080"). Other ports stay
    refused."""
    max_bytes: int = 5_000_000
    """Refuse page bodies larger than this."""
    max_redirects: int = 5
    """Redirect hops followed (each hop is checked for safety)."""
    connect_timeout: float = 5.0
    """Seconds to open a connection."""
    read_timeout: float = 10.0
    """Seconds to wait for each chunk of a response."""
    request_timeout: float = 20.0
    """Seconds for one whole HTTP exchange (defeats slow-drip servers)."""
    call_timeout: float = 120.0
    """Seconds for one whole tool call, retries and reading included."""
    retries: int = 2
    """Extra attempts after a retryable failure (timeouts, network errors, 5xx, 429)."""
    backoff_base: float = 0.5
    """First backoff in seconds; doubles each attempt, with full jitter."""
    backoff_max: float = 8.0
    """Longest single wait, including a server's Retry-After."""
    concurrency: int = 64
    """Network requests in flight at once, over all trajectories."""
    per_host: int = 8
    """Page fetches in flight at once to one host."""
    extract_workers: int = 2
    """Worker processes extracting HTML/PDF text (0: extract in a thread of this process)."""
    extract_timeout: float = 30.0
    """Seconds a worker may spend extracting one page before it gives up on it."""
    user_agent: str = "dr_jax-tools/0.1 (+research agent)"
    """User-Agent header of page fetches."""

    memory_cache_chars: int = 256_000_000
    """Characters of results, pages and reader replies kept in this process (LRU; 0 = none)."""
    cache_url: str | None = None
    """Persistent cache: a SQLite file (processes of one host) or redis://host:6379/0 (every
    host of a pod; password in $REDISCLI_AUTH); None: none."""
    replay: bool = False
    """Serve only from the cache, never touch the network (reproducible runs)."""
    search_ttl: float = 7 * 24 * 3600.0
    """Seconds a cached search result stays valid (DeepResearcher: 7 days)."""
    page_ttl: float = 24 * 3600.0
    """Seconds a cached page stays valid."""

    observation_format: Literal["json", "deepresearcher"] = "json"
    """json: compact JSON; deepresearcher: the original's Python repr with sorted keys."""

    def __post_init__(self) -> None:
        if self.search_backend not in SEARCH_BACKENDS:
            raise ValueError(
                f"search_backend={self.search_backend!r} is unknown; use one of {SEARCH_BACKENDS}"
            )
        if self.search_backend == "local" and not self.local_index:
            raise ValueError(
                "search_backend='local' needs local_index (build one with "
                "`python -m dr_jax.tools index CORPUS.jsonl OUT_DIR`)"
            )
        if self.reader not in ("none", "llm"):
            raise ValueError(f"reader={self.reader!r} is unknown; use 'none' or 'llm'")
        if self.reader == "llm" and not (self.reader_url and self.reader_model):
            raise ValueError("reader='llm' needs reader_url and reader_model")
        if self.observation_format not in ("json", "deepresearcher"):
            raise ValueError(
                f"observation_format={self.observation_format!r}; use 'json' or 'deepresearcher'"
            )
        if self.replay and not self.cache_url:
            raise ValueError("replay=True serves from the cache: set cache_url")
        if self.cache_url:
            _check_cache_url(self.cache_url)
        for name in (
            "top_k",
            "max_queries",
            "max_urls",
            "page_budget",
            "window_chars",
            "concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.per_host < 1 or min(self.retries, self.extract_workers) < 0:
            raise ValueError("per_host must be >= 1; retries and extract_workers >= 0")
        if self.memory_cache_chars < 0:
            raise ValueError("--tools.memory-cache-chars must be >= 0")
        for name in (
            "connect_timeout",
            "read_timeout",
            "request_timeout",
            "call_timeout",
            "reader_timeout",
            "extract_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        for entry in self.allow_hosts:
            allow_entry(entry)

    @classmethod
    def deepresearcher(cls, **overrides: object) -> "ToolsConfig":
        """The original's tool semantics: Serper top-10, 3 queries, 40,960-char windows read by
        an LLM, browsing limited to the latest search, observations as sorted-key Python repr."""
        preset = dict(
            search_backend="serper",
            top_k=10,
            max_queries=3,
            reader="llm",
            reader_temperature=0.6,
            window_chars=40_960,
            browse_latest_search_only=True,
            observation_format="deepresearcher",
            search_ttl=7 * 24 * 3600.0,
        )
        preset.update(overrides)
        return cls(**preset)

    def replace(self, **changes: object) -> "ToolsConfig":
        return dataclasses.replace(self, **changes)
