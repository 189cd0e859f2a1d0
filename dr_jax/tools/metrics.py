"""Counters and latency percentiles of the tool executor, cheap enough to update on every call."""

from collections import Counter, deque


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
            ordered = sorted(values)
            latency[tool] = {f"p{p}": _nearest_rank(ordered, p) for p in (50, 90, 99)}
            latency[tool]["max"] = ordered[-1]
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


def _nearest_rank(ordered: list[float], percent: int) -> float:
    """The percentile of sorted values by the nearest-rank rule: ordered[ceil(p n / 100) - 1]."""
    return ordered[max(0, -(-percent * len(ordered) // 100) - 1)]


def step_metrics(before: dict, after: dict, prefix: str = "tools/") -> dict[str, float]:
    """Flat scalars of what happened between two snapshots: calls per tool, errors by kind,
    requests, retries, the cache hit rate (NaN with no lookups), and the latency percentiles of
    the last `window` calls per tool."""

    def delta(key: str) -> float:
        return float(after.get(key, 0) - before.get(key, 0))

    out = {f"{prefix}{k}": delta(k) for k in ("requests", "retries", "deduplicated")}
    for group in ("calls", "errors"):
        for name, count in after[group].items():
            out[f"{prefix}{group}/{name}"] = float(count - before[group].get(name, 0))
    lookups = delta("cache_hits") + delta("cache_misses")
    out[f"{prefix}cache_hit_rate"] = delta("cache_hits") / lookups if lookups else float("nan")
    for tool, stats in after["latency_s"].items():
        for stat, seconds in stats.items():
            out[f"{prefix}latency_s/{tool}/{stat}"] = seconds
    return out
