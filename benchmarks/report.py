"""How every benchmark reports: a readable table, then one JSON summary as the very last line."""

import json
from typing import Any


def print_table(rows: list[tuple[str, str]]) -> None:
    """Two aligned columns: what was measured, and its value."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def print_summary(
    benchmark: str,
    ours: float,
    reference: float,
    *,
    unit: str,
    higher_is_better: bool,
    setup: str,
    ratio: float | None = None,
    **extra: Any,
) -> None:
    """The last line every benchmark prints; `ratio` defaults to ours / reference."""
    summary = {
        "benchmark": benchmark,
        "ours": ours,
        "reference": reference,
        "ratio": round(ours / reference if ratio is None else ratio, 4),
        "unit": unit,
        "higher_is_better": higher_is_better,
        "setup": setup,
        **extra,
    }
    print(json.dumps(summary))
