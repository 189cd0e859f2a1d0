"""`score_results`: score trajectories another system produced (DeepResearcher's rollout JSON)
with the same scorer as ours."""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tyro

from dr_jax.data import load_dataset
from dr_jax.eval.markers import ASSISTANT_TURN, TOOL_RESPONSE
from dr_jax.eval.records import (
    SAMPLES,
    append_records,
    judge_all,
    make_record,
    optional_judge,
)
from dr_jax.eval.summary import write_summary
from dr_jax.judge import JudgeConfig


def read_rollout_json(path: Path) -> list[dict[str, Any]]:
    """Rows of a DeepResearcher rollout file: a JSON list of objects (or JSON lines)."""
    text = path.read_text()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} must hold a JSON list of objects, one per question.")
    return rows


@dataclass(frozen=True)
class ScoreConfig:
    """Score trajectories another run produced (DeepResearcher's rollout JSON) with our scorer."""

    results: tyro.conf.Positional[str]
    """JSON list of rows with a `message_str` trajectory each (or JSON lines), in dataset order."""
    dataset: str
    """The questions those rows answer, e.g. tests/data/deepresearcher/test.parquet."""
    out_dir: str = ""
    """Where to write samples.jsonl and summary.{json,md} ("": <results>.scored/ beside it)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    text_field: str = "message_str"
    """Row field holding the whole trajectory text."""


async def score_results(config: ScoreConfig) -> dict:
    """Score rollout rows paired with the dataset's questions by position.

    DeepResearcher's scorer zips result rows with test.parquet rows, so the file must follow
    the dataset's order; rows that carry a `question` are checked against it.
    """
    started = time.perf_counter()
    rows = read_rollout_json(Path(config.results))
    examples = load_dataset(Path(config.dataset))
    if len(rows) != len(examples):
        raise ValueError(
            f"{config.results} has {len(rows)} rows but {config.dataset} has {len(examples)} "
            "questions: a rollout file holds one row per question, in the dataset's order."
        )
    texts = []
    for i, (row, example) in enumerate(zip(rows, examples, strict=True)):
        if not isinstance(row.get(config.text_field), str):
            raise ValueError(f"row {i} of {config.results} has no {config.text_field!r} text.")
        question = row.get("question")
        if question is not None and question.strip() != example.question.strip():
            raise ValueError(
                f"row {i} of {config.results} asks {question!r}, but question {i} of "
                f"{config.dataset} is {example.question!r}: rows must follow the dataset's order."
            )
        texts.append(row[config.text_field])

    async with optional_judge(config.judge) as judge:
        verdicts = await judge_all(judge, examples, texts)
    records = [
        make_record(
            example,
            text,
            verdict,
            turns=text.count(ASSISTANT_TURN),
            tool_calls=text.count(TOOL_RESPONSE),
        )
        for example, text, verdict in zip(examples, texts, verdicts, strict=True)
    ]
    out = Path(config.out_dir or f"{config.results}.scored")
    out.mkdir(parents=True, exist_ok=True)
    (out / SAMPLES).unlink(missing_ok=True)
    append_records(out / SAMPLES, records)
    meta = {
        "results": config.results,
        "dataset": config.dataset,
        "scorer": "final assistant turn (DeepResearcher's offline scorer)",
        "judge_model": config.judge.model if config.judge.enabled else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    return write_summary(out, [asdict(r) for r in records], meta)
