"""One line of samples.jsonl per question: how it is scored (F1, EM, the judge), written,
read back and kept in dataset order."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dr_jax.data import QAExample
from dr_jax.judge import Judge, JudgeConfig, Verdict
from dr_jax.reward import last_turn_answer, last_turn_scores

SAMPLES, SUMMARY_JSON, SUMMARY_MD, RUN = "samples.jsonl", "summary.json", "summary.md", "run.json"


@dataclass
class SampleRecord:
    """One line of samples.jsonl."""

    id: str
    data_source: str
    question: str
    gold: list[str]
    trajectory: str
    prediction: str | None
    f1: float
    em: float
    judge: float | None
    """1.0 / 0.0 by the judge (or its exact-match shortcut); None when no judge is configured."""
    judge_source: str | None
    turns: int
    tool_calls: int
    tokens: int | None
    """Tokens the policy sampled (loss-mask 1), over all turns (None: unknown)."""
    context_tokens: int | None
    """Prompt + all turns + observations (None: unknown)."""
    time_s: float | None
    finish_reason: str
    judge_detail: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    """The conversation after the prompt, turn by turn (empty for a scored result file)."""


def make_record(
    example: QAExample,
    text: str,
    verdict: Verdict | None,
    *,
    turns: int,
    tool_calls: int,
    tokens: int | None = None,
    context_tokens: int | None = None,
    time_s: float | None = None,
    finish_reason: str = "",
    messages: Sequence[dict[str, str]] = (),
) -> SampleRecord:
    """Score `text` (a whole trajectory) against the example's gold answers."""
    f1, em = last_turn_scores(text, example.answers)
    detail = {}
    if verdict is not None and verdict.source in ("judge", "unjudged"):
        detail = {"attempts": verdict.attempts, "rationale": verdict.rationale}
        detail["error"] = verdict.error
    return SampleRecord(
        id=example.id,
        data_source=example.data_source,
        question=example.question,
        gold=list(example.answers),
        trajectory=text,
        prediction=last_turn_answer(text),
        f1=f1,
        em=em,
        judge=None if verdict is None else verdict.score,
        judge_source=None if verdict is None else verdict.source,
        turns=turns,
        tool_calls=tool_calls,
        tokens=tokens,
        context_tokens=context_tokens,
        time_s=time_s,
        finish_reason=finish_reason,
        judge_detail=detail,
        messages=list(messages),
    )


async def judge_all(
    judge: Judge | None, examples: Sequence[QAExample], texts: Sequence[str]
) -> list[Verdict | None]:
    """Verdicts on each text's final answer, concurrently (None for all when no judge)."""
    if judge is None:
        return [None] * len(examples)
    predictions = [last_turn_answer(t) for t in texts]
    calls = [
        judge.judge(e.question, list(e.answers), p)
        for e, p in zip(examples, predictions, strict=True)
    ]
    return list(await asyncio.gather(*calls))


@contextlib.asynccontextmanager
async def optional_judge(config: JudgeConfig) -> AsyncIterator[Judge | None]:
    """The configured judge, or None when --judge.url is not set."""
    if not config.enabled:
        yield None
        return
    async with Judge(config) as judge:
        yield judge


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already in samples.jsonl, by id.

    A run killed mid-write leaves a torn last line: it is cut off the file, so the next append
    starts on a fresh line and that question is simply evaluated again.
    """
    if not path.is_file():
        return {}
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    if complete != text:
        path.write_text(complete)
    records = (json.loads(line) for line in complete.splitlines())
    return {record["id"]: record for record in records}


def write_in_order(path: Path, examples: Sequence[QAExample], done: dict[str, dict]) -> None:
    """Rewrite samples.jsonl in dataset order (this run's questions first), atomically, so it
    reads as a rollout file for `score_results` whatever order the questions finished in."""
    selected = [e.id for e in examples]
    order = selected + sorted(set(done) - set(selected))
    temporary = path.with_suffix(".tmp")
    text = "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in order)
    temporary.write_text(text)
    temporary.replace(path)


def append_records(path: Path, records: Iterable[SampleRecord]) -> None:
    text = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records)
    with path.open("a") as f:
        f.write(text)
        f.flush()
