"""The one BM25 wrapper (bm25s, Lucene variant, English stop words): the local search backend's
saved index and the offline world's title and text indexes both go through it.

bm25s is imported on first use: it imports jax (seconds), which most callers never need. Its
logger, which bm25s sets to DEBUG, is quieted here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

TOKEN_PATTERN = r"\w\w+"
"""bm25s' default without its \\b anchors: the same tokens, faster."""


def _bm25s() -> Any:
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def query_words(query: str) -> list[str]:
    """A query's tokens, as the indexes tokenize their documents."""
    return _bm25s().tokenize(
        [query], token_pattern=TOKEN_PATTERN, stopwords="en", return_ids=False, show_progress=False
    )[0]


class BM25Index:
    """BM25 scores of every document for a query; thread-compatible (callers lock)."""

    def __init__(self, retriever: Any, vocab: dict[str, int]) -> None:
        self._retriever = retriever
        self._vocab = vocab

    @classmethod
    def build(cls, texts: list[str]) -> BM25Index:
        bm25s = _bm25s()
        tokens = bm25s.tokenize(
            texts, token_pattern=TOKEN_PATTERN, stopwords="en", show_progress=False
        )
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, tokens.vocab)

    @classmethod
    def load(cls, directory: str | Path) -> tuple[BM25Index, list[dict]]:
        """An index `save` wrote, and the documents saved with it."""
        retriever = _bm25s().BM25.load(str(directory), load_corpus=True, show_progress=False)
        return cls(retriever, retriever.vocab_dict), list(retriever.corpus)

    def save(self, directory: str | Path, documents: list[dict]) -> None:
        self._retriever.save(str(directory), corpus=documents, show_progress=False)

    @property
    def size(self) -> int:
        return int(self._retriever.scores["num_docs"])

    def scores(self, words: list[str]) -> np.ndarray:
        """f32[documents]: the BM25 score of each document for the query's words."""
        ids = [self._vocab[w] for w in words if w in self._vocab]
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return self._retriever.get_scores(ids)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best positive scores, best first (ties: the earlier document)."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.lexsort((top, -scores[top]))]
    return [int(i) for i in top if scores[i] > 0]
