"""Evaluation: F1, exact match and an LLM judge per dataset, like the paper's Tables 1-2.

`evaluate` rolls the agent out over a dataset and scores every trajectory; `score_results`
scores trajectories another system produced (DeepResearcher's rollout JSON), so the paper's
outputs and ours go through one scorer. Both write into `out_dir`:

- `samples.jsonl`: one record per question (trajectory text, prediction, scores, counts);
- `summary.json` and `summary.md`: one row per data source plus their macro average.

Scoring is DeepResearcher's offline scorer (reference §13.3), not the training reward: only
the final assistant turn counts, and a format error there scores 0 rather than -1.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tyro
from tqdm import tqdm

from dr_jax.config import PolicyConfig, SamplerConfig
from dr_jax.data import QAExample, examples_from_questions, load_dataset
from dr_jax.judge import Judge, JudgeConfig, Verdict
from dr_jax.report import write_report
from dr_jax.reward import last_turn_answer, last_turn_scores
from dr_jax.rollout import (
    Agent,
    AgentConfig,
    Sampler,
    SampleResult,
    SamplingParams,
    Trajectory,
)
from dr_jax.rollout.prompts import PromptConfig, PromptTemplate
from dr_jax.runtime import (
    build_policy,
    build_sampler,
    build_tokenizer,
    sampling_params,
    start_world_tools,
)
from dr_jax.tools import ToolExecutor, ToolsConfig
from dr_jax.world import World
from dr_jax.world.oracle import Demonstration
from dr_jax.world.oracle import solve as oracle_solve

ASSISTANT_TURN = "<|im_start|>assistant"
USER_TURN = "<|im_start|>user\n"
END_OF_TURN = "<|im_end|>"
TOOL_RESPONSE = "<|im_start|>user\n<tool_response>"
WORLD = "world"
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
SAMPLES, SUMMARY_JSON, SUMMARY_MD, RUN = "samples.jsonl", "summary.json", "summary.md", "run.json"
METRICS = ("f1", "em", "judge", "turns", "tool_calls", "tokens")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: questions, policy and sampler, tools, judge, output directory."""

    dataset: str = WORLD
    """Parquet/JSONL file or directory (DeepResearcher schema), or "world" (the offline world)."""
    split: str = "test"
    """Split of a directory dataset or of the world (train/dev/test)."""
    datasets: tuple[str, ...] = ()
    """Keep only these data sources (e.g. nq hotpotqa); empty keeps all."""
    limit: int | None = None
    """Evaluate only the first N questions (after --datasets), in dataset order."""
    out_dir: str = "runs/eval"
    """Directory for samples.jsonl and summary.{json,md}; an existing run there is resumed."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(temperature=0.0))
    """Decoding; the default is greedy. DeepResearcher's protocol: --sampler.temperature 1.0."""
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """The prompt the checkpoint was trained with (style, or files replacing it)."""
    today: str | None = None
    """Date the system prompt states (YYYY-MM-DD); default: today (UTC)."""
    max_turns: int = 10
    """Model turns per question (DeepResearcher: 10)."""
    max_context_tokens: int = 32_768
    """Prompt + all turns + observations, per question."""
    seed: int = 0
    """Sampling seed (ignored when greedy)."""
    world_seed: int = 0
    """Seed of the offline world (its questions and, for --tools.search-backend world, its web)."""
    world_size: str = "default"
    """Offline world size: "tiny", "default" or a number of entities (as in training)."""
    concurrency: int = 16
    """Questions in flight at once; each is written to samples.jsonl as soon as it finishes."""
    oracle: bool = False
    """Replay the world oracle's turns instead of sampling the policy (a pipeline check)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}.")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}.")

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a run is resumed (selection and batching may)."""
        sampler = self.sampler
        return {
            "dataset": self.dataset,
            "split": self.split,
            "world": [self.world_seed, self.world_size],
            "policy": "oracle" if self.oracle else asdict(self.policy),
            "sampler": [sampler.kind, sampler.temperature, sampler.top_p, sampler.top_k],
            "max_new_tokens": sampler.max_new_tokens,
            "max_turns": self.max_turns,
            "prompt": asdict(self.prompt),
            "max_context_tokens": self.max_context_tokens,
            "seed": self.seed,
            "search_backend": self.tools.search_backend,
            "judge_model": self.judge.model if self.judge.enabled else None,
        }


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


# ---------------------------------------------------------------------------------- summary


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
    """Write summary.json and summary.md; returns the JSON object."""
    rows = summarize(records)
    summary = {"meta": meta, "datasets": rows}
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out_dir / SUMMARY_MD).write_text(render_markdown(rows, meta))
    write_report(out_dir)
    return summary


# ---------------------------------------------------------------------------------- records


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


# ---------------------------------------------------------------------------------- oracle


class OracleSampler:
    """A `Sampler` that answers each prompt with the world oracle's next assistant turn.

    The oracle (`dr_jax.world.oracle`) solves a world question with the real tools, so its
    turns are correct by construction. Replayed through the agent, tools and scorer, they must
    score F1 ≈ 1: a check that the pipeline scores what it should. The oracle solves a question
    the first time it is asked, with the same tools the agent uses (same world server, so the
    same URLs and observations) and the same turn budget; turn k of a conversation gets the
    oracle's turn k.
    """

    def __init__(
        self,
        world: World,
        tokenizer: Any,
        tools: ToolExecutor,
        template: PromptTemplate,
        max_turns: int = 10,
    ) -> None:
        if tools.config.search_backend != WORLD or not tools.config.search_url:
            raise ValueError("the oracle replays the world: use --tools.search-backend world")
        self._questions = {q.question: q for q in world.questions}
        self._tokenizer = tokenizer
        self._tools = tools
        self._prefix = template.generation_prefix
        self._max_turns = max_turns
        self._solved: dict[str, asyncio.Task[Demonstration]] = {}

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> list[SampleResult]:
        return list(await asyncio.gather(*(self._next_turn(p) for p in prompts)))

    async def _next_turn(self, prompt_ids: list[int]) -> SampleResult:
        text = self._tokenizer.decode(prompt_ids, skip_special_tokens=False)
        user = text.index(USER_TURN) + len(USER_TURN)
        question = text[user : text.index(END_OF_TURN, user)]
        if question not in self._questions:
            raise ValueError(f"the oracle knows only world questions, not {question!r}")
        if question not in self._solved:
            url = self._tools.config.search_url
            solving = oracle_solve(self._questions[question], self._tools, url, self._max_turns)
            self._solved[question] = asyncio.ensure_future(solving)
        turns = (await self._solved[question]).turns
        turn = turns[min(text.count(ASSISTANT_TURN) - 1, len(turns) - 1)][0]
        reply = turn.removeprefix(self._prefix) + END_OF_TURN
        ids = self._tokenizer.encode(reply, add_special_tokens=False)
        return SampleResult(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop")


# ---------------------------------------------------------------------------------- evaluate


def select_examples(config: EvalConfig, world: World | None) -> list[QAExample]:
    """The questions of this run, in dataset order: filtered by source, then cut to --limit."""
    sources = list(config.datasets) or None
    if config.dataset == WORLD:
        assert world is not None
        examples = examples_from_questions(world.split(config.split))
        present = sorted({e.data_source for e in examples})
        if unknown := sorted(set(sources or ()) - set(present)):
            raise ValueError(f"the world has no data_source {unknown}; present: {present}")
        examples = [e for e in examples if sources is None or e.data_source in sources]
    else:
        path = Path(config.dataset)
        split = config.split if path.is_dir() else None
        examples = load_dataset(path, split=split, data_sources=sources)
    if not examples:
        raise ValueError(
            f"no questions in {config.dataset!r} (split {config.split!r}) match "
            f"--datasets {' '.join(config.datasets)}: check the data source names."
        )
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{config.dataset!r} repeats question ids: resuming needs unique ids.")
    return examples[: config.limit]


def check_resumable(out_dir: Path, config: EvalConfig) -> None:
    """Refuse to mix two different runs' samples in one directory."""
    run_file = out_dir / RUN
    fingerprint = config.fingerprint()
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise ValueError(
                f"{out_dir} holds a run with different settings ({', '.join(changed)}): "
                "pass another --out-dir, or delete that directory to start over."
            )
    else:
        run_file.write_text(json.dumps(fingerprint, indent=2) + "\n")


def run_meta(config: EvalConfig, seconds: float) -> dict[str, Any]:
    """Settings a reader needs next to the numbers: what was evaluated, and how."""
    sampler = config.sampler
    world = f"world(seed={config.world_seed}, size={config.world_size})"
    dataset = world if config.dataset == WORLD else config.dataset
    decoding = "greedy" if sampler.greedy else "sampled"
    return {
        "dataset": dataset,
        "split": config.split if config.dataset == WORLD or Path(dataset).is_dir() else None,
        "policy": "world oracle" if config.oracle else config.policy.path,
        "sampler": "oracle replay" if config.oracle else sampler.kind,
        "decoding": decoding,
        "temperature": sampler.temperature,
        "top_p": sampler.top_p,
        "top_k": sampler.top_k,
        "seed": config.seed,
        "prompt": config.prompt.system_file or config.prompt.style,
        "max_turns": config.max_turns,
        "max_new_tokens": sampler.max_new_tokens,
        "search_backend": config.tools.search_backend,
        "judge_model": config.judge.model if config.judge.enabled else None,
        "wall_time_s": round(seconds, 1),
    }


def trajectory_text(tokenizer: Any, trajectory: Trajectory) -> str:
    """The whole conversation as the model saw it, special tokens included."""
    ids = list(trajectory.prompt_ids) + list(trajectory.response_ids)
    return tokenizer.decode(ids, skip_special_tokens=False)


async def evaluate(
    config: EvalConfig, world: World | None = None, sampler: Sampler | None = None
) -> dict:
    """Run the agent over the selected questions, resuming `out_dir` if it holds the same run.

    `world` (default: generated from `world_seed` when needed) supplies the questions of
    `dataset="world"` and the web of the "world" search backend. `sampler` replaces the one
    `config.policy` and `config.sampler` describe (e.g. a JaxSampler already compiled, reused
    across runs); the summary still reports `config`. Returns the summary.
    """
    started = time.perf_counter()
    serves_world = config.tools.search_backend == WORLD and not config.tools.search_url
    if world is None and (config.dataset == WORLD or serves_world or config.oracle):
        size = int(config.world_size) if config.world_size.isdigit() else config.world_size
        world = World.generate(seed=config.world_seed, size=size)
    examples = select_examples(config, world)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(out_dir, config)
    samples_path = out_dir / SAMPLES
    done = read_records(samples_path)
    if any(e.id not in done for e in examples):
        await _run(config, world, sampler, examples, done, samples_path)
        write_in_order(samples_path, examples, done)
    records = [done[e.id] for e in examples]
    return write_summary(out_dir, records, run_meta(config, time.perf_counter() - started))


async def _run(
    config: EvalConfig,
    world: World | None,
    sampler: Sampler | None,
    examples: list[QAExample],
    done: dict[str, dict[str, Any]],
    samples_path: Path,
) -> None:
    """Roll out the examples not `done`, appending each record to samples.jsonl when ready."""
    todo = [e for e in examples if e.id not in done]
    template = config.prompt.template()
    tokenizer = build_tokenizer(config.policy)
    async with contextlib.AsyncExitStack() as stack:
        tools = await stack.enter_async_context(start_world_tools(config.tools, world))
        judge = await stack.enter_async_context(optional_judge(config.judge))
        if config.oracle:
            assert world is not None
            sampler = OracleSampler(world, tokenizer, tools, template, config.max_turns)
        elif sampler is None:
            policy = build_policy(config.policy) if config.sampler.kind == "jax" else None
            sampler = build_sampler(config.sampler, policy, tokenizer)
            if hasattr(sampler, "aclose"):
                stack.push_async_callback(sampler.aclose)
        context = config.max_context_tokens
        if config.sampler.kind == "jax" and not config.oracle:  # the KV cache bounds the context
            context = min(context, config.sampler.max_seq_len)
        agent_config = AgentConfig(
            max_turns=config.max_turns,
            max_context_tokens=context,
            sampling=sampling_params(config.sampler),
            today=config.today,
        )
        agent = Agent(sampler, tokenizer, tools, config=agent_config, template=template)
        finished = len(examples) - len(todo)
        progress = stack.enter_context(tqdm(total=len(examples), initial=finished, unit="q"))
        f1_sum = sum(done[e.id]["f1"] for e in examples if e.id in done)
        in_flight = asyncio.Semaphore(config.concurrency)
        position = {e.id: i for i, e in enumerate(examples)}

        async def evaluate_one(example: QAExample) -> SampleRecord:
            async with in_flight:
                seed = config.seed + position[example.id]
                [trajectory] = await agent.rollout([example.question], n_samples=1, seed=seed)
            return await score_trajectory(example, trajectory, tokenizer, judge)

        for next_record in asyncio.as_completed([evaluate_one(e) for e in todo]):
            record = await next_record
            append_records(samples_path, [record])
            done[record.id] = asdict(record)
            f1_sum += record.f1
            progress.update(1)
            progress.set_postfix(f1=f"{f1_sum / progress.n:.3f}")


async def score_trajectory(
    example: QAExample, trajectory: Trajectory, tokenizer: Any, judge: Judge | None
) -> SampleRecord:
    """The record of one rolled-out question: its scores, the judge's verdict, its costs."""
    text = trajectory_text(tokenizer, trajectory)
    [verdict] = await judge_all(judge, [example], [text])
    return make_record(
        example,
        text,
        verdict,
        turns=trajectory.num_turns,
        tool_calls=trajectory.num_tool_calls,
        tokens=trajectory.num_sampled,
        context_tokens=trajectory.num_tokens,
        time_s=round(trajectory.timings.get("total", 0.0), 3),
        finish_reason=trajectory.finish_reason,
        messages=trajectory.messages,
    )


# ---------------------------------------------------------------------------------- score


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
