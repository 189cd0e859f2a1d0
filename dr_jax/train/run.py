"""A training run from one `TrainConfig`: assemble, warm-start or resume, run GRPO.

Everything a run writes lives in `run_dir`: `checkpoints/` (Orbax, tied to the config's
fingerprint), `warm_start/` (the supervised policy as an HF directory; it is also the KL
reference), `metrics.jsonl` + `tb/` + `samples/` for GRPO, and `sft/` for the warm start.
Running the same command again resumes from the latest checkpoint with the same data position
and RNG: no question is repeated or skipped.

Multi-host: every process runs `train` with the same config (`maybe_initialize_distributed`
joins them); rollouts are split between hosts and everything else is computed on all of them
(train/multihost.py). Process 0 writes the metrics and the warm start; `run_dir` must be on
storage every host sees (Orbax writes each host's shards of a checkpoint there).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from dr_jax.aot import preflight
from dr_jax.data import DataIterator, QAExample, examples_from_questions, load_dataset
from dr_jax.models import Policy, save_pretrained
from dr_jax.report import write_report
from dr_jax.rollout import Agent, AgentConfig, SGLangSampler
from dr_jax.runtime import (
    build_policy,
    build_sampler,
    build_tokenizer,
    sampling_params,
    settled_heap,
    start_world_tools,
)
from dr_jax.sharding import make_mesh, maybe_initialize_distributed
from dr_jax.train.checkpoint import Checkpointer
from dr_jax.train.config import DataConfig, TrainConfig
from dr_jax.train.grpo import GRPOLoop, say, validate, weight_sync
from dr_jax.train.metrics import MetricsWriter
from dr_jax.train.multihost import barrier, is_main_process
from dr_jax.train.sft import demonstration_ids, sft_batches, solve_questions, supervised_finetune
from dr_jax.train.step import Learner
from dr_jax.world import World

WORLD = "world"
TODAY = "2025-04-01"
"""The date the system prompt states in training and validation (fixed, so runs reproduce)."""


def load_questions(
    config: DataConfig, world: World | None, validate: bool = True
) -> tuple[list[QAExample], list]:
    """(train, dev) examples: the world's splits, or DeepResearcher-schema files. Dev questions
    are never training ones: a single training file needs --data.dev-source (unless
    `validate` is off), and --data.data-sources filters both."""
    sources = config.data_sources or None
    if config.source == WORLD:
        assert world is not None
        train = examples_from_questions(world_questions(world, "train", sources))
        dev = examples_from_questions(world_questions(world, "dev", sources))
        if config.dev_source:
            dev = load_dataset(Path(config.dev_source), data_sources=sources)
        return train, dev
    path = Path(config.source)
    train = load_dataset(path, split="train" if path.is_dir() else None, data_sources=sources)
    if not validate:
        return train, []
    if config.dev_source:
        return train, load_dataset(Path(config.dev_source), data_sources=sources)
    if not path.is_dir():
        raise ValueError(
            f"--data.source {path} is one file, and validation never runs on training questions: "
            "name the dev questions with --data.dev-source FILE, or turn validation off with "
            "--grpo.val-questions 0"
        )
    return train, load_dataset(path, split="dev", data_sources=sources)


def world_questions(world: World, split: str, sources: tuple[str, ...] | None) -> list:
    """The world's questions of one split, of the given data sources only (None: all)."""
    questions = world.split(split)
    if sources is None:
        return questions
    kept = [q for q in questions if q.data_source in sources]
    if not kept:
        present = sorted({q.data_source for q in questions})
        raise ValueError(f"--data.data-sources {list(sources)} matches none of {present}")
    return kept


def make_learner(config: TrainConfig, policy: Policy, mesh: Any) -> Learner:
    g, loss = config.grpo, config.loss
    if loss.agg == "seq-mean-token-sum-norm" and loss.agg_norm is None:
        loss = dataclasses.replace(loss, agg_norm=float(g.max_row_tokens))  # Dr. GRPO's constant
    return Learner(
        policy,
        optim=config.optim,
        loss=loss,
        mesh=mesh,
        micro_batch_size=g.micro_batch_size or None,
        logprob_chunk=g.logprob_chunk or 512,
    )


async def warm_start(
    config: TrainConfig,
    policy: Policy,
    tokenizer: Any,
    tools: Any,
    world: World,
    log: Any,
    advance: Any,
) -> Policy:
    """Supervised fine-tuning on oracle demonstrations of train questions; returns the tuned
    policy and leaves it in <run_dir>/warm_start (renamed into place when complete)."""
    cfg, run_dir = config.sft, Path(config.run_dir)
    questions = world_questions(world, "train", config.data.data_sources or None)
    demos = await solve_questions(
        questions[: cfg.num_traces],
        tools,
        tools.config.search_url,
        config.max_turns,
        trust_snippets=cfg.trust_snippets,
    )
    if not demos:
        raise RuntimeError("the oracle solved none of the warm-start questions: check the tools")
    template = config.prompt.template()
    rows = [
        demonstration_ids(d, template, tokenizer, today=TODAY, end_of_turn=tokenizer.eos_token)
        for d in demos
    ]
    if cfg.max_tokens:
        rows = [r for r in rows if len(r[0]) + len(r[1]) <= cfg.max_tokens]
    if not rows:
        raise ValueError(f"every demonstration is longer than --sft.max-tokens {cfg.max_tokens}")
    started = time.perf_counter()
    batches = sft_batches(
        rows,
        cfg,
        pad_id=pad_id(tokenizer),
        multiple=config.grpo.pad_multiple,
        max_len=config.grpo.max_row_tokens,
        seed=config.grpo.seed,
    )
    say(f"warm start: {cfg.steps} steps on {len(rows)} oracle demonstrations")
    tuned = policy.replace(
        params=supervised_finetune(policy, cfg, batches, log=log, advance=advance)
    )
    log(cfg.steps, {"sft/demonstrations": len(rows), "time/sft": time.perf_counter() - started})
    tmp = run_dir / "warm_start.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tuned, tmp)  # every process joins the gathers; process 0 writes
    if is_main_process():
        tokenizer.save_pretrained(str(tmp))  # complete: evaluate or serve it as it is
        tmp.rename(run_dir / "warm_start")
    barrier("warm start saved")
    return tuned


def check_room(config: TrainConfig, tokenizer: Any, examples: list[QAExample]) -> None:
    """Refuse lengths that leave the longest question's prompt no room to answer in (a run would
    otherwise sample and train nothing)."""
    longest = max(examples, key=lambda e: len(e.question), default=None)
    if longest is None:
        return
    prompt = len(config.prompt.template().prompt_ids(tokenizer, longest.question, today=TODAY))
    for flag, limit in (("--sampler.max-seq-len", config.sampler.max_seq_len),
                        ("--grpo.max-row-tokens", config.grpo.max_row_tokens)):  # fmt: skip
        if limit <= prompt:
            raise ValueError(
                f"{flag} {limit} leaves no room: the longest question's prompt is {prompt} "
                f"tokens; raise it above {prompt} (a few hundred more for the turns)"
            )


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def build_agents(config: TrainConfig, sampler: Any, tokenizer: Any, tools: Any) -> tuple:
    """(training agent, validation agent): same limits, validation at its own temperature."""
    sampling = sampling_params(config.sampler)
    agent_config = AgentConfig(
        max_turns=config.max_turns,
        max_context_tokens=config.sampler.max_seq_len,
        max_observation_chars=config.max_observation_chars,
        sampling=sampling,
        today=TODAY,
    )
    val_config = dataclasses.replace(
        agent_config,
        sampling=dataclasses.replace(sampling, temperature=config.grpo.val_temperature),
    )
    template = config.prompt.template()
    return (
        Agent(sampler, tokenizer, tools, agent_config, template),
        Agent(sampler, tokenizer, tools, val_config, template),
    )


async def train(config: TrainConfig) -> dict[str, Any]:
    """Runs (or resumes) the whole training; returns the last metrics record."""
    maybe_initialize_distributed()
    preflight(config)  # on TPU: every program compiled and checked against HBM first
    mesh = make_mesh(config.mesh)
    run_dir = Path(config.run_dir)
    g = config.grpo
    checkpointer = Checkpointer(
        run_dir / "checkpoints", keep=g.keep_checkpoints, fingerprint=config.fingerprint()
    )
    resuming = checkpointer.latest_step() is not None
    needs_world = config.data.source == WORLD or config.tools.search_backend == WORLD
    world = None
    if needs_world:
        world = World.generate(config.data.world_seed, _size(config.data.world_size))
    train_examples, dev_examples = load_questions(config.data, world, g.val_questions > 0)
    dev_examples = dev_examples[: g.val_questions]
    tokenizer = build_tokenizer(config.policy)
    check_room(config, tokenizer, train_examples + dev_examples)

    async with start_world_tools(config.tools, world=world) as tools:
        policy = build_policy(config.policy, mesh)
        sampler = build_sampler(config.sampler, policy, tokenizer, mesh=mesh)
        sync = weight_sync(
            sampler,
            policy,
            Path(config.weights_dir) if config.weights_dir else run_dir / "weights",
        )
        agent, val_agent = build_agents(config, sampler, tokenizer, tools)
        warm_dir = run_dir / "warm_start"
        if warm_dir.is_dir():
            policy = build_policy(dataclasses.replace(config.policy, path=str(warm_dir)), mesh)
        elif config.sft.steps and not resuming:
            if world is None:
                raise ValueError("--sft.steps > 0 needs the offline world (--data.source world)")
            untuned, untuned_samples = {}, []
            if g.validate_at_start:  # before the bar, so the bar counts warm-start steps only
                await sync(policy.params, 0)
                untuned, untuned_samples = await validate(
                    val_agent, dev_examples, g.seed, config.metrics.samples_per_step
                )
            sft_log = MetricsWriter(  # start_step -1: a warm start cut short is redone whole
                run_dir / "sft",
                dataclasses.replace(config.metrics, bar_keys=("sft/nll",)),
                total_steps=config.sft.steps,
                start_step=-1,
                enabled=is_main_process(),
                desc="warm start",
            )
            if untuned:
                sft_log.log(0, untuned)
                sft_log.dump_samples(0, untuned_samples)
            policy = await warm_start(
                config, policy, tokenizer, tools, world, sft_log.log, sft_log.advance
            )
            sft_log.close()

        learner = make_learner(config, policy, mesh)
        state = learner.init_state()
        data = DataIterator(train_examples, g.questions_per_step, g.seed, config.data.shuffle)
        start = 0
        if resuming:
            state, extra = checkpointer.restore(state)
            data.load_state_dict(extra["data"])
            start = int(extra["grpo_step"])
            say(f"resuming {run_dir} after step {start} of {g.steps}" if start < g.steps else
                f"{run_dir} is complete ({g.steps} steps): nothing to train; a larger "
                "--grpo.steps continues it")  # fmt: skip
        await sync(state.params, start)

        main = is_main_process()
        metrics = MetricsWriter(
            run_dir, config.metrics, total_steps=g.steps, start_step=start, enabled=main
        )
        loop = GRPOLoop(
            g,
            learner=learner,
            agent=agent,
            val_agent=val_agent,
            train_data=data,
            dev_examples=dev_examples,
            checkpointer=checkpointer,
            metrics=metrics,
            sync=sync,
            ref_params=learner.reference_params() if config.loss.kl_coef else None,
            pad_id=pad_id(tokenizer),
            samples_per_step=config.metrics.samples_per_step,
            before_rollout=_health_wait(sampler),
        )
        try:
            with settled_heap():
                await loop.run(state, start)
        finally:
            checkpointer.wait()
            checkpointer.close()
            metrics.close()
        if is_main_process():
            say(f"report: {write_report(run_dir)}")
    return loop.last_record


def _health_wait(sampler: Any) -> Any:
    """SGLang: wait for lost engines to come back (up to --sampler.sglang.sync-timeout) before
    each rollout (JAX: nothing)."""
    return sampler.wait_healthy if isinstance(sampler, SGLangSampler) else None


def _size(size: str) -> str | int:
    return int(size) if size.isdigit() else size
