"""Per-dataset means (a macro average over sources, as the paper's tables), as Markdown beside
the paper's own figures, and summary.{json,md} plus the report page."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dr_jax.eval.records import (
    SUMMARY_JSON,
    SUMMARY_MD,
)
from dr_jax.report import write_report

PAPER_ORDER = ("nq", "tq", "hotpotqa", "2wiki", "musique", "Bamboogle", "popqa")
PAPER_RESULTS = {  # DeepResearcher-7B, paper Tables 1-2: (F1 %, MBE judge %)
    "nq": (39.6, 61.9),
    "tq": (78.4, 85.0),
    "hotpotqa": (52.8, 64.3),
    "2wiki": (59.7, 66.6),
    "musique": (27.1, 29.3),
    "Bamboogle": (71.0, 72.8),
    "popqa": (48.5, 52.7),
}
METRICS = ("f1", "em", "judge", "turns", "tool_calls", "tokens")


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per data source: N and the mean of each metric; plus "average" over the sources.

    "average" is the macro mean (each source counts once, as in the paper's tables). A mean is
    None where a metric was not measured (no judge configured; tokens of a scored file).
    "unjudged" counts samples the judge never gave a usable verdict on (they score 0).
    """
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record["data_source"], []).append(record)
    rows = {
        source: {
            "n": len(group),
            **{m: _mean([r[m] for r in group]) for m in METRICS},
            "unjudged": sum(r["judge_source"] == "unjudged" for r in group),
        }
        for source, group in sorted(by_source.items(), key=lambda item: _paper_order(item[0]))
    }
    if rows:
        rows["average"] = {
            "n": sum(row["n"] for row in rows.values()),
            **{m: _mean([row[m] for row in rows.values()]) for m in METRICS},
            "unjudged": sum(row["unjudged"] for row in rows.values()),
        }
    return rows


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None if any value is missing (a metric not measured for these samples)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _paper_order(source: str) -> tuple[int, str]:
    return (PAPER_ORDER.index(source), "") if source in PAPER_ORDER else (len(PAPER_ORDER), source)


def render_markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary as a Markdown table (scores in %, like the paper) under a settings list.

    On the paper's benchmarks, DeepResearcher-7B's reported F1 and judge accuracy (Tables 1-2)
    are shown beside ours.
    """
    paper = any(source in PAPER_RESULTS for source in rows)
    reference = dict(PAPER_RESULTS)
    if set(rows) - {"average"} == set(PAPER_RESULTS):  # all seven: the paper's macro average too
        columns = zip(*PAPER_RESULTS.values(), strict=True)
        reference["average"] = tuple(sum(c) / len(c) for c in columns)
    lines = ["# Evaluation summary", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    header = ["Dataset", "N", "F1", "EM", "Judge", "Turns", "Tool calls", "Tokens"]
    header += ["Paper F1", "Paper judge"] if paper else []
    lines += ["", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for source, row in rows.items():
        cells = [source if source != "average" else "**average**", str(row["n"])]
        cells += [_cell(row[m], 100, ".1f") for m in ("f1", "em", "judge")]
        cells += [_cell(row["turns"], 1, ".2f"), _cell(row["tool_calls"], 1, ".2f")]
        cells.append(_cell(row["tokens"], 1, ".0f"))
        if paper:
            cells += [_cell(v, 1, ".1f") for v in reference.get(source, (None, None))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, scale: float, spec: str) -> str:
    return "—" if value is None else format(scale * value, spec)


def write_summary(out_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict:
    """Write summary.json, summary.md and report.html; returns the JSON object."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    summary = {"meta": meta, "datasets": rows}
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out_dir / SUMMARY_MD).write_text(render_markdown(rows, meta))
    write_report(out_dir)
    return summary
