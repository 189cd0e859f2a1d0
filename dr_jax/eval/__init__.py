"""Evaluation: F1, exact match and an LLM judge per dataset, like the paper's Tables 1-2.

`evaluate` rolls the agent out over a dataset and scores every trajectory; `score_results`
scores trajectories another system produced (DeepResearcher's rollout JSON), so the paper's
outputs and ours go through one scorer. Both write into `out_dir`:

- `samples.jsonl`: one record per question (trajectory text, prediction, scores, counts);
- `summary.json` and `summary.md`: one row per data source plus their macro average.

Scoring is DeepResearcher's offline scorer (reference §13.3), not the training reward: only
the final assistant turn counts, and a format error there scores 0 rather than -1.

    records.py   samples.jsonl: SampleRecord, scoring with the judge, resumable writing
    summary.py   per-dataset means, Markdown beside the paper's figures, summary files
    oracle.py    the world oracle replayed as a sampler (a pipeline check)
    run.py       EvalConfig and `evaluate`
    score.py     ScoreConfig and `score_results`
    markers.py   the chat template's markers DeepResearcher's text is scored by
"""

from dr_jax.eval.records import SAMPLES, SampleRecord
from dr_jax.eval.run import EvalConfig, evaluate
from dr_jax.eval.score import ScoreConfig, score_results
from dr_jax.eval.summary import render_markdown, summarize

__all__ = [
    "SAMPLES",
    "EvalConfig",
    "SampleRecord",
    "ScoreConfig",
    "evaluate",
    "render_markdown",
    "score_results",
    "summarize",
]
