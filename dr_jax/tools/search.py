"""Search backends behind one interface: a query in, up to top-k (title, url, snippet) out.

- `SearxngBackend`: the SearXNG JSON API (self-hosted, free); also the offline world's endpoint.
- `SerperBackend`: Google through serper.dev; the key comes from an environment variable.
- `LocalBM25Backend`: a BM25 index (bm25s) over a JSONL corpus, built by `build_index`.

bm25s is imported only where a local index is used: it pulls in JAX when JAX is installed.
"""

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dr_jax.tools.bm25 import BM25Index, query_words, top_k
from dr_jax.tools.config import SERPER_URL, ToolsConfig
from dr_jax.tools.errors import ToolError, ToolsSetupError
from dr_jax.tools.extract import Document
from dr_jax.tools.fetch import raise_for_status, transport_errors
from dr_jax.tools.http import HttpClient, HttpError, Response


@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    name: str

    async def start(self, client: HttpClient) -> None:
        """Check the backend can answer; raise ToolsSetupError with the fix otherwise."""

    async def search(self, client: HttpClient, query: str, top_k: int) -> list[SearchHit]:
        """Up to `top_k` hits; raises ToolError on failures the executor may retry."""

    def document(self, url: str) -> Document | None:
        """The text behind `url` when the backend holds it (local corpora), else None."""


def _hits(items: object, url_key: str, snippet_key: str, top_k: int) -> list[SearchHit]:
    if not isinstance(items, list):
        raise ToolError("malformed", "search response has no result list")
    hits = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(url_key), str):
            hits.append(
                SearchHit(
                    title=str(item.get("title") or ""),
                    url=item[url_key],
                    snippet=str(item.get(snippet_key) or ""),
                )
            )
    return hits[:top_k]


def _json(response: Response, what: str) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise ToolError("malformed", f"{what} returned malformed JSON") from None
    if not isinstance(data, dict):
        raise ToolError("malformed", f"{what} returned JSON that is not an object")
    return data


class SearxngBackend:
    """GET {url}/search?q=...&format=json -> {"results": [{"title", "url", "content"}]}."""

    def __init__(self, url: str, timeout: float, name: str = "searxng") -> None:
        self.name = name
        self._endpoint = url.rstrip("/") + "/search"
        self._timeout = timeout

    async def _get(self, client: HttpClient, query: str, top_k: int) -> dict:
        what = f"{self.name} search"
        with transport_errors(what, self._timeout):
            async with asyncio.timeout(self._timeout):
                response = await client.request(
                    "GET", self._endpoint, params={"q": query, "format": "json", "count": top_k}
                )
        raise_for_status(response, what)
        return _json(response, what)

    async def start(self, client: HttpClient) -> None:
        try:
            data = await self._get(client, "test", 1)
        except ToolError as e:
            raise ToolsSetupError(
                f"search backend {self.name!r} at {self._endpoint} does not answer ({e}); start "
                "it (the world: `python -m dr_jax.world serve`) or fix search_url; SearXNG needs "
                "`json` in search.formats of its settings.yml"
            ) from None
        if "results" not in data:
            raise ToolsSetupError(f"{self._endpoint} did not return SearXNG JSON (no 'results')")

    async def search(self, client: HttpClient, query: str, top_k: int) -> list[SearchHit]:
        data = await self._get(client, query, top_k)
        return _hits(data.get("results"), "url", "content", top_k)

    def document(self, url: str) -> Document | None:
        return None


class SerperBackend:
    """POST https://google.serper.dev/search {"q", "num"} with header X-API-KEY -> "organic"."""

    name = "serper"

    def __init__(self, url: str, key_env: str, timeout: float) -> None:
        key = os.environ.get(key_env, "").strip()
        if not key:
            raise ToolsSetupError(
                f"search_backend='serper' needs an API key in the environment variable {key_env} "
                "(get one at serper.dev); or use search_backend='searxng' / 'local' / 'world'"
            )
        self._url, self._key, self._timeout = url, key, timeout

    def __repr__(self) -> str:  # never show the key
        return f"SerperBackend(url={self._url!r})"

    async def start(self, client: HttpClient) -> None:
        """Reachability without spending a paid query: any HTTP answer from the host will do."""
        try:
            await client.request("HEAD", self._url, timeout=self._timeout)
        except HttpError as e:
            raise ToolsSetupError(f"Serper at {self._url} is unreachable: {e}") from None

    async def search(self, client: HttpClient, query: str, top_k: int) -> list[SearchHit]:
        with transport_errors("serper search", self._timeout):
            async with asyncio.timeout(self._timeout):
                response = await client.request(
                    "POST",
                    self._url,
                    json_body={"q": query, "num": top_k, "gl": "us", "hl": "en"},
                    headers={"x-api-key": self._key},
                )
        raise_for_status(response, "serper search")
        return _hits(_json(response, "serper search").get("organic"), "link", "snippet", top_k)

    def document(self, url: str) -> Document | None:
        return None


def _snippet(text: str, chars: int = 300) -> str:
    if len(text) <= chars:
        return text
    cut = text.rfind(" ", 0, chars)
    return text[: cut if cut > 0 else chars] + " ..."


def _doc_url(doc: dict) -> str:
    return doc.get("url") or f"local:{doc['id']}"


def build_index(corpus_path: str | Path, out_dir: str | Path) -> int:
    """Index a JSONL corpus of `{id, title, text, url?}` with BM25 and save it; returns its size."""
    docs = []
    with open(corpus_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            if "id" not in doc or "text" not in doc:
                raise ValueError(f"{corpus_path}:{line_number}: each line needs 'id' and 'text'")
            docs.append(
                {
                    "id": str(doc["id"]),
                    "title": doc.get("title", ""),
                    "text": doc["text"],
                    "url": _doc_url(doc),
                }
            )
    if not docs:
        raise ValueError(f"{corpus_path} holds no documents")
    BM25Index.build([f"{d['title']}\n{d['text']}" for d in docs]).save(out_dir, docs)
    return len(docs)


class LocalBM25Backend:
    """BM25 over a saved bm25s index; its documents can be browsed by their `url` field."""

    name = "local"

    def __init__(self, index_dir: str) -> None:
        self._dir = index_dir
        self._index: BM25Index | None = None
        self._docs: list[dict] = []
        self._by_url: dict[str, dict] = {}

    async def start(self, client: HttpClient) -> None:
        if not (Path(self._dir) / "params.index.json").is_file():
            raise ToolsSetupError(
                f"no BM25 index at {self._dir}: build it with "
                "`python -m dr_jax.tools index CORPUS.jsonl OUT_DIR`"
            )
        self._index, self._docs = await asyncio.to_thread(BM25Index.load, self._dir)
        self._by_url = {doc["url"]: doc for doc in self._docs}

    def _search(self, query: str, k: int) -> list[SearchHit]:
        assert self._index is not None, "LocalBM25Backend.start() was not awaited"
        scores = self._index.scores(query_words(query))
        return [
            SearchHit(doc["title"], doc["url"], _snippet(doc["text"]))
            for doc in (self._docs[i] for i in top_k(scores, k))
        ]

    async def search(self, client: HttpClient, query: str, top_k: int) -> list[SearchHit]:
        return await asyncio.to_thread(self._search, query, top_k)

    def document(self, url: str) -> Document | None:
        doc = self._by_url.get(url)
        return Document(url=url, title=doc["title"], text=doc["text"]) if doc else None


def make_backend(cfg: ToolsConfig) -> SearchBackend:
    """The backend `cfg` names; a missing key or index path fails here, before any call."""
    if cfg.search_backend in ("world", "searxng"):
        if not cfg.search_url:
            raise ToolsSetupError(
                f"search_backend={cfg.search_backend!r} needs search_url, e.g. "
                "http://127.0.0.1:8080 (`python -m dr_jax.world serve` prints it)"
            )
        return SearxngBackend(cfg.search_url or "", cfg.request_timeout, name=cfg.search_backend)
    if cfg.search_backend == "serper":
        return SerperBackend(cfg.search_url or SERPER_URL, cfg.serper_key_env, cfg.request_timeout)
    return LocalBM25Backend(cfg.local_index or "")
