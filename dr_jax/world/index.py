"""BM25 search over the world's pages, with query-dependent snippets.

Titles and article text (no navigation, footer or infobox) are scored separately and summed,
so a name query finds its page first; a snippet is the sentence near the top of the page that
shares the most words with the query.
"""

import functools
import html
import re
import threading

from dr_jax.tools.bm25 import BM25Index, query_words, top_k

_BLOCK = re.compile(r"</?(?:h\d|p|li|ul|caption|tr|article)\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")
_INFOBOX = re.compile(r"<table.*?</table>", re.S)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w\w+")


def _article(page_html: str) -> str:
    """The <article> element's inner HTML without the infobox (the whole page if none)."""
    start, end = page_html.find("<article>"), page_html.rfind("</article>")
    body = page_html[start + len("<article>") : end] if 0 <= start < end else page_html
    return _INFOBOX.sub(" ", body)


def page_text(page_html: str) -> str:
    """Visible article text of a world page, one block per line: no nav, footer or infobox."""
    text = _TAG.sub("", _BLOCK.sub("\n", _article(page_html)))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return html.unescape("\n".join(line for line in lines if line))


def sentences(text: str) -> list[tuple[str, frozenset[str]]]:
    """Sentences (and headings) of `text`, each with its set of lower-case words."""
    return [(s, frozenset(w.lower() for w in _WORD.findall(s))) for s in _SENTENCE.split(text) if s]


def snippet(parts: list[tuple[str, frozenset[str]]], query: str, max_chars: int = 240) -> str:
    """The sentence sharing most words with the query (ties: full sentences, then earliest),
    continued with the sentences after it up to `max_chars`."""
    if not parts:
        return ""
    words = {w.lower() for w in _WORD.findall(query)}
    best = max(
        range(len(parts)),
        key=lambda i: (len(words & parts[i][1]), parts[i][0].endswith("."), -i),
    )
    out = parts[best][0]
    for nxt, _ in parts[best + 1 :]:
        if not nxt.endswith("."):
            continue
        if len(out) + 1 + len(nxt) > max_chars:
            break
        out += " " + nxt
    return out if len(out) <= max_chars else out[: max_chars - 3].rsplit(" ", 1)[0] + "..."


class SearchIndex:
    """BM25 (Lucene variant, English stop words) over titles and article text; thread-safe.

    score(page) = BM25_text(page) + TITLE_WEIGHT * BM25_title(page): a page's own name counts
    even when its article is long (length normalisation would otherwise bury it).
    """

    TITLE_WEIGHT = 2.0
    SNIPPET_CHARS = 4_000  # snippets come from the top of a page, as in a search engine

    def __init__(self, pages: dict[str, str], titles: dict[str, str]) -> None:
        self.paths = list(pages)
        self.titles = titles
        self._pages = pages
        self._text = BM25Index.build(
            [f"{titles[p]} {html.unescape(_TAG.sub(' ', _article(pages[p])))}" for p in self.paths]
        )
        self._title = BM25Index.build([titles[p] for p in self.paths])
        self._lock = threading.Lock()
        self._head = functools.lru_cache(maxsize=4096)(self._head_sentences)

    def _head_sentences(self, path: str) -> list[tuple[str, frozenset[str]]]:
        return sentences(page_text(self._pages[path])[: self.SNIPPET_CHARS])

    def search(self, query: str, k: int = 10) -> list[dict[str, str]]:
        """Top-`k` pages as SearXNG results: {"title", "url" (a path), "content", "score"}."""
        words = query_words(query)
        with self._lock:
            scores = self._text.scores(words) + self.TITLE_WEIGHT * self._title.scores(words)
        results = []
        for doc in top_k(scores, k):
            path = self.paths[int(doc)]
            results.append(
                {
                    "title": self.titles[path],
                    "url": path,
                    "content": snippet(self._head(path), query),
                    "score": round(float(scores[doc]), 4),
                }
            )
        return results
