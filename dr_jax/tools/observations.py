"""What the policy reads after a tool call: compact JSON, or the original DeepResearcher repr.

The DeepResearcher rendering reproduces what its model saw (reference §4.5): `str()` of a list of
dicts whose keys arrive sorted (Flask's jsonify sorted them), i.e. a Python repr:
  search: [{'search_query': q, 'web_page_info_list': [{'quick_summary', 'title', 'url'}]}]
  browse: [{'information': [{'page_number', 'page_summary'}], 'url': u}]
and a failure is an empty list (the original returned `[]` on any exception).
"""

import json
from dataclasses import dataclass, field
from typing import Any

from dr_jax.tools.search import SearchHit


@dataclass(frozen=True)
class QueryResult:
    query: str
    hits: list[SearchHit] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class PageResult:
    """A browsed URL: raw windows (reader "none") or reader notes, each tagged with its page."""

    url: str
    title: str = ""
    pages: list[tuple[int, str]] = field(default_factory=list)
    total_pages: int = 0
    notes: bool = False
    error: str | None = None


def _sorted(value: Any) -> Any:
    """Dicts rebuilt with keys in sorted order, recursively (repr then lists them sorted)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def search_observation(results: list[QueryResult], fmt: str) -> str:
    if fmt == "deepresearcher":
        return str(
            _sorted(
                [
                    {
                        "search_query": r.query,
                        "web_page_info_list": [
                            {"title": h.title, "url": h.url, "quick_summary": h.snippet}
                            for h in r.hits
                        ],
                    }
                    for r in results
                ]
            )
        )
    return _json(
        [
            {"query": r.query, "error": r.error}
            if r.error
            else {
                "query": r.query,
                "results": [{"title": h.title, "url": h.url, "snippet": h.snippet} for h in r.hits],
            }
            for r in results
        ]
    )


def page_json(page: PageResult) -> dict[str, Any]:
    """One browsed URL as DESIGN.md's browse JSON: {url, title, pages | notes, total_pages}."""
    if page.error:
        return {"url": page.url, "error": page.error}
    item: dict[str, Any] = {"url": page.url, "title": page.title}
    if page.notes:
        item["notes"] = [{"page": number, "info": text} for number, text in page.pages]
    else:
        item["pages"] = [text for _, text in page.pages]
        item["first_page"] = page.pages[0][0] if page.pages else page.total_pages
    item["total_pages"] = page.total_pages
    return item


def browse_observation(pages: list[PageResult], fmt: str) -> str:
    if fmt == "deepresearcher":
        return str(
            _sorted(
                [
                    {
                        "url": p.url,
                        "information": [
                            {"page_number": n, "page_summary": text} for n, text in p.pages
                        ],
                    }
                    for p in pages
                ]
            )
        )
    return _json([page_json(p) for p in pages])


def error_observation(message: str, fmt: str) -> str:
    return "[]" if fmt == "deepresearcher" else _json({"error": message})
