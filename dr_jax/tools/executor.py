"""Runs the tool calls of many trajectories at once: concurrent, cached, bounded, never raising.

One asyncio event loop drives every call. The executor gives the tools their meaning (first N
queries, browse rules, windows, the reading agent, observations); every request it makes goes
through `dispatch.Dispatcher` (cache, de-duplication, per-host and global limits, bounded
retries). Each query or URL has its own deadline inside the call's, and whatever goes wrong
becomes text the model reads.
"""

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from dr_jax.tools.calls import ToolCall
from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.dispatch import Dispatcher
from dr_jax.tools.errors import ToolError, ToolsSetupError
from dr_jax.tools.extract import Document, split_windows
from dr_jax.tools.fetch import fetch_page
from dr_jax.tools.http import HttpError
from dr_jax.tools.metrics import ToolMetrics
from dr_jax.tools.observations import (
    PageResult,
    QueryResult,
    browse_observation,
    error_observation,
    search_observation,
)
from dr_jax.tools.reader import chat_completion, load_prompt, read_page
from dr_jax.tools.search import SearchBackend, SearchHit, make_backend
from dr_jax.tools.session import Note, ToolSession
from dr_jax.tools.urlsafety import parse_url
from dr_jax.tools.workers import Extractor

log = logging.getLogger("dr_jax.tools")
T = TypeVar("T")

SEARCH_TOOL = "web_search"
BROWSE_TOOL = "browse_webpage"

# Page failures that asking again will not change: cached like pages, so the 16 samples of a
# question pay for a dead link once (and a replay reproduces it).
PERMANENT_FAILURES = frozenset(
    {
        "http_4xx",
        "unsupported",
        "too_large",
        "empty",
        "unreadable",
        "redirect_loop",
        "unsafe_url",
        "bad_url",
    }
)


def _string_list(arguments: dict[str, Any], key: str) -> list[str]:
    """`arguments[key]` as a non-empty list of strings (a lone string is accepted too)."""
    if not isinstance(arguments, dict):
        raise ToolError("bad_arguments", "arguments must be a JSON object")
    value = arguments.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ToolError("bad_arguments", f"'{key}' must be a non-empty list of strings")
    items = list(dict.fromkeys(v.strip() for v in value if v.strip()))
    if not items:
        raise ToolError("bad_arguments", f"'{key}' holds only empty strings")
    return items


async def _all(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """asyncio.gather, minus its task and callbacks when there is one (the usual call)."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    return await asyncio.gather(*coroutines)


class ToolExecutor:
    """`async with ToolExecutor(cfg) as tools: await tools.execute(call, session)`.

    Start-up checks the backends (a missing key or an unreachable server raises
    ToolsSetupError here, not mid-run); `execute` never raises.
    """

    def __init__(self, config: ToolsConfig, *, search: bool = True) -> None:
        """`search=False` builds a browse-only executor: no search backend is made or checked."""
        self.config = config
        self._backend: SearchBackend | None = make_backend(config) if search else None
        self._prompt = load_prompt(config.reader_prompt_file)
        self._reader_key = os.environ.get(config.reader_key_env) or None
        self._metrics = ToolMetrics()
        self._dispatch = Dispatcher(config, self._metrics)
        self._extractor: Extractor | None = None

    async def __aenter__(self) -> "ToolExecutor":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        cfg = self.config
        try:
            await self._dispatch.start()
            if self._backend is not None and (not cfg.replay or cfg.search_backend == "local"):
                await self._backend.start(self._dispatch.http)
            if cfg.reader == "llm" and not cfg.replay:
                await self._check_reader()
            self._extractor = Extractor(
                cfg.extract_workers,
                cfg.extract_timeout,
                text_format=cfg.text_format,
                fast=cfg.fast_extraction,
            )
            await self._extractor.start()
        except BaseException:
            await self.close()
            raise

    async def _check_reader(self) -> None:
        url = (self.config.reader_url or "").rstrip("/") + "/models"
        try:
            await self._dispatch.http.request("GET", url, timeout=self.config.request_timeout)
        except (HttpError, ToolError) as e:
            raise ToolsSetupError(
                f"reader LLM at {self.config.reader_url} is unreachable ({e}); start it or fix "
                "reader_url (an OpenAI-compatible base URL ending in /v1)"
            ) from None

    async def close(self) -> None:
        await self._dispatch.close()
        if self._extractor is not None:
            await self._extractor.close()
            self._extractor = None

    def metrics(self) -> dict:
        """Calls, errors by kind, retries, requests made, cache and de-dup hits, latency
        percentiles per tool (see ToolMetrics.snapshot)."""
        return self._metrics.snapshot()

    # ----------------------------------------------------------------------------- the API

    async def execute(self, call: ToolCall, session: ToolSession) -> str:
        """The observation text for `call`; failures are described in the text, never raised."""
        fmt = self.config.observation_format
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.call_timeout):
                if call.name == SEARCH_TOOL:
                    text = await self._web_search(call.arguments, session)
                elif call.name == BROWSE_TOOL:
                    text = await self._browse(call.arguments, session)
                else:
                    self._metrics.errors["unknown_tool"] += 1
                    text = error_observation(
                        f"unknown tool {call.name!r}; the tools are {SEARCH_TOOL} and "
                        f"{BROWSE_TOOL}",
                        fmt,
                    )
        except TimeoutError:
            self._metrics.errors["call_timeout"] += 1
            text = error_observation(
                f"{call.name} failed: timeout after {self.config.call_timeout:g} s", fmt
            )
        except ToolError as e:
            self._metrics.errors[e.kind] += 1
            text = error_observation(f"{call.name} failed: {e}", fmt)
        except Exception as e:
            text = error_observation(f"{call.name} failed: {self._internal(call.name, e)}", fmt)
        self._metrics.observe(call.name, time.monotonic() - started)
        return text

    async def search(self, query: str) -> QueryResult:
        """One query through cache, de-dup and retries; the error is set instead of raising."""
        cfg = self.config
        if self._backend is None:
            return QueryResult(query, error="search failed: this executor was built without search")
        key = json.dumps(
            [self._backend.name, cfg.search_url, " ".join(query.split()).lower(), cfg.top_k]
        )

        async def produce() -> str:
            hits = await self._dispatch.attempt(
                lambda: self._backend.search(self._dispatch.http, query, cfg.top_k), host=None
            )
            return json.dumps([[h.title, h.url, h.snippet] for h in hits])

        try:
            value = await self._dispatch.once("search", key, cfg.search_ttl, produce)
        except ToolError as e:
            self._metrics.errors[e.kind] += 1
            return QueryResult(query, error=f"search failed: {e}")
        return QueryResult(query, hits=[SearchHit(*item) for item in json.loads(value)])

    async def document(self, url: str) -> Document:
        """The readable text of `url` (cached by URL); raises ToolError."""
        local = self._backend.document(url) if self._backend is not None else None
        if local is not None:
            return local
        host = parse_url(url).raw_host

        async def produce() -> str:
            try:
                fetched = await self._dispatch.attempt(
                    lambda: fetch_page(self._dispatch.pages, url, self.config), host=host
                )
                doc = await self._extractor.extract(fetched)
            except ToolError as e:
                if e.kind not in PERMANENT_FAILURES:
                    raise
                return json.dumps({"error": [e.kind, str(e)]})
            return json.dumps({"url": doc.url, "title": doc.title, "text": doc.text})

        value = json.loads(await self._dispatch.once("page", url, self.config.page_ttl, produce))
        if "error" in value:
            raise ToolError(*value["error"])
        return Document(value["url"], value["title"], value["text"])

    # ------------------------------------------------------------------------------- tools

    async def _web_search(self, arguments: dict[str, Any], session: ToolSession) -> str:
        queries = _string_list(arguments, "query")[: self.config.max_queries]
        deadline = self._unit_deadline()
        results = await _all([self._search_until(deadline, q) for q in queries])
        session.record_search([(r.query, [h.url for h in r.hits]) for r in results])
        return search_observation(results, self.config.observation_format)

    async def _browse(self, arguments: dict[str, Any], session: ToolSession) -> str:
        cfg = self.config
        urls = _string_list(arguments, "url_list")
        compat = cfg.observation_format == "deepresearcher"
        if cfg.browse_latest_search_only and compat:
            # The original silently ignored such URLs; JSON observations say why instead.
            urls = [u for u in urls if u in session.latest_search]
        urls, extra = urls[: cfg.max_urls], urls[cfg.max_urls :]
        deadline = self._unit_deadline()
        pages = await _all([self._browse_until(deadline, u, session) for u in urls])
        if extra and not compat:
            self._metrics.errors["too_many_urls"] += len(extra)
            why = f"not browsed: one call browses at most {cfg.max_urls} URLs"
            pages += [PageResult(u, error=why) for u in extra]
        return browse_observation(pages, cfg.observation_format)

    def _unit_deadline(self) -> float:
        """Each query or URL of a call must finish a little before the whole call does, so a
        stuck one costs only its own result."""
        return asyncio.get_running_loop().time() + 0.9 * self.config.call_timeout

    def _late(self) -> str:
        self._metrics.errors["timeout"] += 1
        return f"no result within {0.9 * self.config.call_timeout:g} s"

    async def _search_until(self, deadline: float, query: str) -> QueryResult:
        try:
            async with asyncio.timeout_at(deadline):
                return await self.search(query)
        except TimeoutError:
            return QueryResult(query, error=f"search failed: {self._late()}")
        except Exception as e:  # a bug must cost only this query's result
            return QueryResult(query, error=f"search failed: {self._internal(query, e)}")

    async def _browse_until(self, deadline: float, url: str, session: ToolSession) -> PageResult:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._browse_one(url, session)
        except TimeoutError:
            return PageResult(url, error=f"browse failed: {self._late()}")
        except Exception as e:  # a bug must cost only this URL's result
            return PageResult(url, error=f"browse failed: {self._internal(url, e)}")

    def _internal(self, what: str, error: Exception) -> str:
        """A bug's observation text, logged with its traceback."""
        log.error("%s failed unexpectedly", what, exc_info=error)
        self._metrics.errors["internal"] += 1
        return f"internal error ({type(error).__name__})"

    async def _browse_one(self, url: str, session: ToolSession) -> PageResult:
        cfg = self.config
        if cfg.browse_latest_search_only and url not in session.latest_search:
            self._metrics.errors["not_in_search"] += 1
            return PageResult(
                url, error="not in the latest search results; browse only URLs it returned"
            )
        try:
            doc = await self.document(url)
        except ToolError as e:
            self._metrics.errors[e.kind] += 1
            if e.kind == "unsafe_url":
                log.warning("%s", e)
            return PageResult(url, error=f"browse failed: {e}")
        windows = split_windows(doc.text, cfg.window_chars)
        start = session.next_window.get(url, 0)
        if cfg.reader == "none":
            end = min(len(windows), start + cfg.page_budget)
            session.next_window[url] = end
            pages = [(i, windows[i]) for i in range(start, end)]
            return PageResult(url, doc.title, pages, total_pages=len(windows))
        query = session.latest_search.get(url, "(none: the URL was not found by a search)")
        reading = await read_page(
            self._llm,
            self._prompt,
            question=session.question,
            query=query,
            memory=session.memory(),
            windows=windows,
            start=start,
            budget=cfg.page_budget,
        )
        session.next_window[url] = reading.next_window
        session.notes.extend(Note(query, url, page, text) for page, text in reading.notes)
        if reading.error:
            self._metrics.errors["reader"] += 1
            if not reading.notes:
                return PageResult(url, doc.title, error=reading.error)
        return PageResult(url, doc.title, reading.notes, total_pages=len(windows), notes=True)

    async def _llm(self, prompt: str) -> str:
        cfg = self.config
        key = hashlib.sha256(
            json.dumps([cfg.reader_model, cfg.reader_temperature, prompt]).encode()
        ).hexdigest()

        async def produce() -> str:
            return await self._dispatch.attempt(
                lambda: chat_completion(
                    self._dispatch.http,
                    cfg.reader_url or "",
                    cfg.reader_model or "",
                    prompt,
                    temperature=cfg.reader_temperature,
                    max_tokens=cfg.reader_max_tokens,
                    api_key=self._reader_key,
                    timeout=cfg.reader_timeout,
                ),
                host=None,
            )

        return await self._dispatch.once("reader", key, cfg.search_ttl, produce)
