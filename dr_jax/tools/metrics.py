"""Counters and latency percentiles of the tool executor, cheap enough to update on every call."""

from collections import Counter, deque

import numpy as np


class ToolMetrics:
    """Calls per tool, failures by kind, retries, requests made (not served by the cache or
    de-dup), cache and de-dup hits, and the latency of the last `window` calls per tool."""

    def __init__(self, window: int = 10_000) -> None:
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._window = window
        self._latency: dict[str, deque[float]] = {}

    def observe(self, tool: str, seconds: float) -> None:
        self.calls[tool] += 1
        if tool not in self._latency:
            self._latency[tool] = deque(maxlen=self._window)
        self._latency[tool].append(seconds)

    def snapshot(self) -> dict:
        latency = {}
        for tool, values in self._latency.items():
            p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
            latency[tool] = {"p50": p50, "p90": p90, "p99": p99, "max": max(values)}
        return {
            "calls": dict(self.calls),
            "errors": dict(self.errors),
            "requests": self.counts["requests"],
            "retries": self.counts["retries"],
            "cache_hits": self.counts["cache_hits"],
            "cache_misses": self.counts["cache_misses"],
            "deduplicated": self.counts["deduplicated"],
            "latency_s": {
                tool: {k: round(float(v), 4) for k, v in stats.items()}
                for tool, stats in latency.items()
            },
        }
