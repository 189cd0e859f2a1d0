"""`evaluate`: roll the agent out over a dataset, score each trajectory as it finishes, resume
an interrupted run, summarise."""

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dr_jax.config import PolicyConfig, SamplerConfig, at_least
from dr_jax.data import QAExample, examples_from_questions, load_dataset
from dr_jax.eval.oracle import WORLD, OracleSampler
from dr_jax.eval.records import (
    RUN,
    SAMPLES,
    SampleRecord,
    append_records,
    judge_all,
    make_record,
    optional_judge,
    read_records,
    write_in_order,
)
from dr_jax.eval.summary import write_summary
from dr_jax.judge import Judge, JudgeConfig
from dr_jax.progress import Progress
from dr_jax.rollout import (
    Agent,
    AgentConfig,
    Sampler,
    SGLangSampler,
    Trajectory,
)
from dr_jax.rollout.prompts import PromptConfig
from dr_jax.runtime import (
    build_policy,
    build_sampler,
    build_tokenizer,
    sampling_params,
    settled_heap,
    start_world_tools,
)
from dr_jax.tools import ToolsConfig
from dr_jax.world import World


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
    out_dir: str = ""
    """Directory for samples.jsonl, summary.{json,md} and report.html; an existing run there is
    resumed. "": a new directory runs/eval/<dataset>-<policy>-<time>."""
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
    max_observation_chars: int | None = None
    """Characters of a tool observation kept, the rest cut (the cut is said in the text) before
    it is tokenised; default: 4 per token of the context, which fills it even at that rate."""
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
        at_least(self, "", limit=1, concurrency=1, max_observation_chars=1)

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


def default_out_dir(config: EvalConfig) -> Path:
    """runs/eval/<dataset>-<policy>-<YYYYmmdd-HHMMSS>: each evaluation its own directory."""
    dataset = Path(config.dataset).stem if config.dataset != WORLD else WORLD
    policy = "oracle" if config.oracle else Path(config.policy.path.rstrip("/")).name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "eval" / f"{dataset}-{config.split}-{policy}-{stamp}"


def check_resumable(out_dir: Path, config: EvalConfig) -> None:
    """Refuse to mix two different runs' samples in one directory (reads only)."""
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


def claim(out_dir: Path, config: EvalConfig) -> None:
    """Tie the directory to this run, once it has started (a failed start leaves none)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / RUN).is_file():
        (out_dir / RUN).write_text(json.dumps(config.fingerprint(), indent=2) + "\n")


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
    out_dir = Path(config.out_dir) if config.out_dir else default_out_dir(config)
    check_resumable(out_dir, config)
    print(f"evaluation: {len(examples)} questions into {out_dir}", file=sys.stderr)
    samples_path = out_dir / SAMPLES
    done = read_records(samples_path)
    if any(e.id not in done for e in examples):
        await _run(config, world, sampler, examples, done, samples_path)
        write_in_order(samples_path, examples, done)
    records = [done[e.id] for e in examples]
    summary = write_summary(out_dir, records, run_meta(config, time.perf_counter() - started))
    print(f"evaluation: results in {out_dir} (summary.md, report.html)", file=sys.stderr)
    return summary


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
            if isinstance(sampler, SGLangSampler):  # a wrong server stops here, not per question
                stack.push_async_callback(sampler.aclose)
                await sampler.connect()
        context = config.max_context_tokens
        if config.sampler.kind == "jax" and not config.oracle:  # the KV cache bounds the context
            context = min(context, config.sampler.max_seq_len)
        agent_config = AgentConfig(
            max_turns=config.max_turns,
            max_context_tokens=context,
            max_observation_chars=config.max_observation_chars,
            sampling=sampling_params(config.sampler),
            today=config.today,
        )
        agent = Agent(sampler, tokenizer, tools, config=agent_config, template=template)
        stack.enter_context(settled_heap())
        progress = Progress(len(todo), "evaluation")
        stack.callback(progress.close)
        f1_sum = sum(done[e.id]["f1"] for e in examples if e.id in done)
        in_flight = asyncio.Semaphore(config.concurrency)
        position = {e.id: i for i, e in enumerate(examples)}

        async def evaluate_one(example: QAExample) -> SampleRecord:
            async with in_flight:
                seed = config.seed + position[example.id]
                [trajectory] = await agent.rollout([example.question], n_samples=1, seed=seed)
            return await score_trajectory(example, trajectory, tokenizer, judge)

        claim(samples_path.parent, config)  # started: the directory is this run's now
        for next_record in asyncio.as_completed([evaluate_one(e) for e in todo]):
            record = await next_record
            append_records(samples_path, [record])
            done[record.id] = asdict(record)
            f1_sum += record.f1
            progress.done(f1=f"{f1_sum / len(done):.3f}")


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
