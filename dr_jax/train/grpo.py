"""The GRPO loop: questions -> group rollouts -> rewards -> advantages -> updates -> sync.

One step (DeepResearcher §12):
  1. draw `questions_per_step` questions; the agent samples `group_size` trajectories each;
  2. reward r = deepresearcher_score(response text, gold aliases)  (-1 on a format error, else F1);
  3. A_i = (r_i - mean_g r) / (std_g r + 1e-6) within each question's group;
  4. old log-probs (of the policy about to be updated) and reference log-probs (of the frozen
     start policy, only when the loss has a KL term) on the exact sampled tokens;
  5. `epochs` x `mini_batches` optimizer updates (DeepResearcher: 1 x 1, i.e. on-policy);
  6. the new weights go to the sampler; a checkpoint and a validation follow on schedule.
Rollout log-probs from another engine can be corrected per token with truncated importance
sampling: A_t <- A * min(exp(old_t - sampler_t), cap).
On several processes every host runs the same loop on the same data; only the rollouts (and
their tool calls) are split between hosts and gathered (train/multihost.py).

Where a step's wall time goes (seconds, printed as one line per step): time/rollout =
time/sampling (the sampler's device calls) + time/tools (the sampler idle: tool calls and the
agent's own work), time/logprobs (old, reference and probe log-prob passes), time/update,
time/sync (weights to the sampler), time/validate when it validates; time/step is the whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from dr_jax import losses
from dr_jax.models.flops import learner_flops
from dr_jax.reward import deepresearcher_score, exact_match
from dr_jax.rollout import JaxSampler, rollout_metrics
from dr_jax.rollout.trajectory import INFRA_FAILURES
from dr_jax.tools.metrics import step_metrics
from dr_jax.train import multihost
from dr_jax.train.batching import PaddedSequences, minibatch_indices, pad_trajectories
from dr_jax.train.config import GRPOConfig
from dr_jax.train.metrics import MetricsWriter, peak_flops_per_device
from dr_jax.train.multihost import barrier, is_main_process, to_host
from dr_jax.train.step import TrainBatch

WeightSync = Callable[[Any, int], Awaitable[None]]
"""`await sync(params, step)`: the sampler samples from `params` afterwards."""


def score_trajectories(trajectories: Sequence, answers: Sequence[Sequence[str]]) -> np.ndarray:
    """f32[N] rewards of whole multi-turn responses (generation prefix + every turn and
    observation, special tokens kept: what DeepResearcher scored); trajectory i answers
    question `group_id`."""
    return np.array(
        [deepresearcher_score(t.text, list(answers[t.group_id])) for t in trajectories],
        np.float32,
    )


class InfraFailure(RuntimeError):
    """Too many of a step's trajectories were ended by the infrastructure."""


def ended_by_infrastructure(trajectories: Sequence) -> np.ndarray:
    """bool[N]: which trajectories a sampler error or abort ended (not the policy)."""
    return np.array([t.finish_reason in INFRA_FAILURES for t in trajectories], bool)


def infra_failures(trajectories: Sequence, max_share: float, step: int) -> np.ndarray:
    """bool[N]: which trajectories the infrastructure ended; raises when they are more than
    `max_share` of the step's (a broken server would otherwise train the policy on nothing)."""
    lost = ended_by_infrastructure(trajectories)
    if lost.mean() > max_share:
        errors = sorted({t.error or t.finish_reason for t in trajectories if t.finish_reason
                         in INFRA_FAILURES})  # fmt: skip
        raise InfraFailure(
            f"step {step}: {lost.sum()} of {len(lost)} trajectories ended by sampler errors or "
            f"aborts (more than --grpo.max-infra-failures {max_share:g}); first errors: "
            f"{'; '.join(errors[:3])}. Check the sampler, then run the same command to resume."
        )
    return lost


def reward_metrics(rewards: np.ndarray, prefix: str) -> dict[str, float]:
    """Mean reward, F1 (a format error counts 0) and the rate of format errors (reward -1), over
    the trajectories the policy finished (NaN when there are none)."""
    if not len(rewards):
        return {f"{prefix}/{k}": float("nan") for k in ("reward", "f1", "format_error_rate")}
    return {
        f"{prefix}/reward": float(rewards.mean()),
        f"{prefix}/f1": float(np.maximum(rewards, 0.0).mean()),
        f"{prefix}/format_error_rate": float((rewards <= -1.0).mean()),
    }


def truncated_is_weights(
    old_logprobs: np.ndarray, sampler_logprobs: np.ndarray, loss_mask: np.ndarray, cap: float
) -> np.ndarray:
    """w[B, T] = min(exp(old - sampler), cap) on sampled tokens, 1 elsewhere (a constant: no
    gradient flows through it)."""
    log_ratio = np.clip(old_logprobs - sampler_logprobs, -20.0, 20.0)
    return np.where(loss_mask > 0, np.minimum(np.exp(log_ratio), cap), 1.0).astype(np.float32)


def logprob_gap(old: np.ndarray, sampler: np.ndarray, loss_mask: np.ndarray) -> float:
    """Mean |learner - sampler| log-prob over sampled tokens (0 when both engines agree)."""
    return float(np.sum(np.abs(old - sampler) * loss_mask) / max(float(loss_mask.sum()), 1.0))


def sample_records(
    trajectories: Sequence, rewards: np.ndarray, examples: Sequence[Any], split: str, k: int
) -> list[dict[str, Any]]:
    """The first k trajectories as samples/*.jsonl records (eval's samples.jsonl field names,
    plus the reward and the conversation's messages); trajectory i answers examples[group_id]."""
    records = []
    for t, r in zip(trajectories[:k], rewards[:k], strict=False):
        example = examples[t.group_id]
        records.append({
            "id": example.id,
            "split": split,
            "data_source": example.data_source,
            "question": t.question,
            "gold": list(example.answers),
            "prediction": t.answer,
            "reward": round(float(r), 4),
            "f1": round(max(float(r), 0.0), 4),
            "finish_reason": t.finish_reason,
            "error": t.error,
            "turns": t.num_turns,
            "tool_calls": t.num_tool_calls,
            "tokens": t.num_sampled,
            "messages": t.messages,
        })  # fmt: skip
    return records


async def validate(
    agent: Any, examples: Sequence[Any], seed: int, samples: int = 0
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """val/* metrics of one trajectory per example, sampled with a fixed seed (so two
    validations differ by their weights, not by their sampling noise), and the first `samples`
    trajectories as records."""
    if not examples:
        return {}, []
    start = time.perf_counter()
    say(f"validating on {len(examples)} dev questions ...")
    trajectories = await multihost.rollout(
        agent, [e.question for e in examples], 1, rollout_seed(seed, -1), desc="validation"
    )
    rewards = score_trajectories(trajectories, [e.answers for e in examples])
    lost = ended_by_infrastructure(trajectories)
    record = rollout_metrics(trajectories, prefix="val/")
    record.update(reward_metrics(rewards[~lost], "val"))
    record["val/em"] = float(np.mean([
        exact_match(t.answer, e.answers) if r > -1 and t.answer is not None else 0.0
        for t, e, r, gone in zip(trajectories, examples, rewards, lost, strict=True) if not gone
    ] or [np.nan]))  # fmt: skip
    record["val/infra_failures"] = int(lost.sum())
    record["time/validate"] = time.perf_counter() - start
    say(
        f"validation: reward {record['val/reward']:.3f}, F1 {record['val/f1']:.3f}, "
        f"answered {record['val/answer_rate']:.0%} ({record['time/validate']:.0f} s)"
    )
    return record, sample_records(trajectories, rewards, examples, "dev", samples)


def say(line: str) -> None:
    """One progress line on process 0, written above any progress bar."""
    if is_main_process():
        tqdm.write(line)


def weight_sync(sampler: Any, policy: Any, weights_dir: Path) -> WeightSync:
    """How new parameters reach the sampler. The in-process JAX sampler samples from the
    learner's own arrays (no copy). SGLang: bf16 safetensors in `weights_dir`, then every
    engine loads them (`SGLangSampler.update_weights_from_disk`, which waits out an engine that
    went away). On several processes, process 0 writes and pushes (the engines are shared)
    while the others join the gathers, expect the new version and wait."""
    if isinstance(sampler, JaxSampler):

        async def share(params: Any, step: int) -> None:
            sampler.update_params(params)

        return share

    async def push(params: Any, step: int) -> None:
        # every process joins the parameter gathers; process 0 writes the files
        path = await sampler.write_weights(policy.replace(params=params), weights_dir)
        if is_main_process():
            await sampler.update_weights_from_disk(path, step)
        else:
            sampler.expect_version(step)
        await asyncio.to_thread(barrier, f"weights {step}")

    return push


def rollout_seed(base: int, step: int) -> int:
    """A distinct, reproducible rollout seed per step (validation uses step -1)."""
    return (base * 1_000_003 + step) % (2**31 - 1)


class GRPOLoop:
    """Runs GRPO steps over a live learner, agents and data stream; sets nothing up itself."""

    def __init__(
        self,
        config: GRPOConfig,
        *,
        learner: Any,
        agent: Any,
        val_agent: Any,
        train_data: Any,
        dev_examples: Sequence[Any],
        checkpointer: Any,
        metrics: MetricsWriter,
        sync: WeightSync,
        ref_params: Any | None,
        pad_id: int,
        samples_per_step: int = 2,
        before_rollout: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.learner = learner
        self.agent = agent
        self.val_agent = val_agent
        self.train_data = train_data
        self.dev_examples = list(dev_examples)[: config.val_questions]
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.sync = sync
        self.ref_params = ref_params
        self.pad_id = pad_id
        self.samples_per_step = samples_per_step
        self.before_rollout = before_rollout
        self.last_record: dict[str, Any] = {}
        self.on_policy = config.mini_batches == config.epochs == 1 and config.tis_cap == 0

    async def run(self, state: Any, start_step: int = 0) -> Any:
        """Steps start_step+1 .. config.steps, with validations and checkpoints on schedule."""
        cfg = self.config
        if start_step == 0 and cfg.validate_at_start:
            self.last_record, samples = await self.validate()
            self.metrics.log(0, self.last_record)
            self.metrics.dump_samples(0, samples)
        for step in range(start_step + 1, cfg.steps + 1):
            started = time.perf_counter()
            state, record, samples = await self.step(state, step)
            last = step == cfg.steps
            if last or (cfg.validate_every and step % cfg.validate_every == 0):
                val_record, val_samples = await self.validate()
                record.update(val_record)
                samples += val_samples
            record["time/step"] = time.perf_counter() - started
            say(time_split(step, record))
            # Log, then save: a kill between the two redoes this step after the resume (whose
            # metrics writer drops records newer than the checkpoint), never loses its record.
            self.metrics.log(step, record)
            self.metrics.dump_samples(step, samples)
            if last or step % cfg.save_every == 0:
                self.checkpointer.save(
                    state, extra={"grpo_step": step, "data": self.train_data.state_dict()}
                )
            self.metrics.advance()
            self.last_record = record
        return state

    async def validate(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        return await validate(
            self.val_agent, self.dev_examples, self.config.seed, self.samples_per_step
        )

    async def step(self, state: Any, step: int) -> tuple[Any, dict[str, Any], list[dict]]:
        """One GRPO step; returns the new state, the step's metrics record and the first
        `samples_per_step` trajectories as records."""
        cfg = self.config
        seconds: dict[str, float] = {}
        examples = self.train_data.next_batch()
        if self.before_rollout is not None:
            await self.before_rollout()
        busy = _sampler_busy(self.agent)
        tools_before = _tool_snapshot(self.agent)
        with _phase(seconds, "rollout"):  # this host's share, then all-gathered
            trajectories = await multihost.rollout(
                self.agent,
                [e.question for e in examples],
                cfg.group_size,
                rollout_seed(cfg.seed, step),
                desc=f"step {step} rollouts",
            )
        after = _sampler_busy(self.agent)
        sampler_s = None if busy is None or after is None else after - busy
        seconds.update(split_rollout(seconds["rollout"], trajectories, sampler_s))
        rewards = score_trajectories(trajectories, [e.answers for e in examples])
        lost = infra_failures(trajectories, cfg.max_infra_failures, step)
        group_ids = np.array([t.group_id for t in trajectories], np.int32)
        advantages = np.zeros(len(trajectories), np.float32)
        if not lost.all():  # the groups' statistics of the policy's own trajectories only
            advantages[~lost] = losses.advantages(cfg.advantage, rewards[~lost], group_ids[~lost])
        seqs = pad_trajectories(
            trajectories, pad_id=self.pad_id, multiple=cfg.pad_multiple, max_len=cfg.max_row_tokens
        )
        seqs.loss_mask[lost] = 0.0  # rows kept (shapes stay fixed), tokens never trained
        with _phase(seconds, "logprobs"):
            if self.on_policy:  # the update's own log-probs are "old": only probe the gap
                probe = seqs.take(np.arange(min(cfg.gap_probe_rows, seqs.num_rows)))
                gap = logprob_gap(self._logprobs(state.params, probe), probe.sampler_logprobs,
                                  probe.loss_mask)  # fmt: skip
                old = None
            else:
                old = self._logprobs(state.params, seqs)
                gap = logprob_gap(old, seqs.sampler_logprobs, seqs.loss_mask)
            ref = None if self.ref_params is None else self._logprobs(self.ref_params, seqs)
        token_adv = np.broadcast_to(advantages[:, None], seqs.tokens.shape).astype(np.float32)
        if cfg.tis_cap > 0:
            token_adv = token_adv * truncated_is_weights(
                old, seqs.sampler_logprobs, seqs.loss_mask, cfg.tis_cap
            )
        with _phase(seconds, "update"):
            state, update_metrics = self._update(state, step, seqs, token_adv, old, ref)
        with _phase(seconds, "sync"):
            await self.sync(state.params, step)

        record: dict[str, Any] = rollout_metrics(trajectories, prefix="train/")
        record.update(reward_metrics(rewards[~lost], "train"))
        record["train/infra_failures"] = int(lost.sum())
        if tools_before is not None:  # this host's executor
            record.update(step_metrics(tools_before, _tool_snapshot(self.agent)))
        record.update(update_metrics)
        record["train/logprob_gap"] = gap
        record["train/advantage_abs"] = float(np.abs(advantages).mean())
        record.update(self._throughput(seqs, seconds))
        record.update({f"time/{k}": v for k, v in seconds.items()})
        record["data/question_ids"] = [e.id for e in examples]
        samples = sample_records(trajectories, rewards, examples, "train", self.samples_per_step)
        return state, record, samples

    def _logprobs(self, params: Any, seqs: PaddedSequences) -> np.ndarray:
        """Log-probs of the sampled tokens only (0 elsewhere): every use (the ratio, the KL, the
        gap, TIS) reads them under the loss mask, and prompts and tool outputs skip the head."""
        return to_host(
            self.learner.logprobs(params, seqs.tokens, seqs.attention_mask, seqs.loss_mask)
        )

    def _update(
        self,
        state: Any,
        step: int,
        seqs: PaddedSequences,
        token_adv: np.ndarray,
        old: np.ndarray | None,
        ref: np.ndarray | None,
    ) -> tuple[Any, dict[str, float]]:
        """epochs x mini_batches optimizer updates (old=None: on-policy, ratio = 1); their
        metrics averaged."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, step]) if cfg.mini_batches > 1 else None
        collected: list[dict[str, float]] = []
        for _ in range(cfg.epochs):
            for rows in minibatch_indices(seqs.num_rows, cfg.mini_batches, rng):
                part = seqs.take(rows)
                batch = TrainBatch(
                    tokens=part.tokens,
                    attention_mask=part.attention_mask,
                    loss_mask=part.loss_mask,
                    advantages=token_adv[rows],
                    old_logprobs=None if old is None else old[rows],
                    ref_logprobs=None if ref is None else ref[rows],
                )
                state, m = self.learner.train_step(state, batch)
                collected.append({k: float(v) for k, v in jax.device_get(m).items()})
        return state, {f"loss/{k}": float(np.mean([m[k] for m in collected])) for k in collected[0]}

    def _throughput(self, seqs: PaddedSequences, seconds: dict[str, float]) -> dict[str, float]:
        """Tokens/s of rollout and learner, and the learner's model-FLOPs utilisation when the
        device peak is known (`learner_flops`: the FLOPs it computes, the LM head on trained
        tokens only)."""
        real_tokens = float(seqs.attention_mask.sum())
        sampled = float(seqs.loss_mask.sum())
        passes = (not self.on_policy) + (self.ref_params is not None)
        flops = learner_flops(
            self.learner.policy.config, seqs.tokens.shape[1], real_tokens, sampled,
            updates=self.config.epochs, forward_passes=passes,
        )  # fmt: skip
        learner_s = max(seconds["logprobs"] + seconds["update"], 1e-9)
        out = {
            "perf/sampled_tokens_per_s": sampled / max(seconds["rollout"], 1e-9),
            "perf/learner_tokens_per_s": real_tokens * (self.config.epochs + passes) / learner_s,
        }
        peak = peak_flops_per_device(jax.devices()[0])
        if peak:
            out["perf/mfu"] = flops / learner_s / (peak * jax.device_count())
        return out


def _tool_snapshot(agent: Any) -> dict | None:
    """The agent's tool executor's counters (None for tools that keep none)."""
    metrics = getattr(agent.tools, "metrics", None)
    return metrics() if callable(metrics) else None


def _sampler_busy(agent: Any) -> float | None:
    """Wall seconds the agent's sampler has spent in device calls so far (JaxSampler's
    stats), or None for a sampler that does not count them (SGLang)."""
    stats = getattr(getattr(agent, "sampler", None), "stats", None)
    return None if not isinstance(stats, dict) else stats.get("busy_seconds")


def split_rollout(
    wall: float, trajectories: Sequence[Any], sampler_seconds: float | None
) -> dict[str, float]:
    """The rollout's wall seconds as sampling + tools. With the sampler's own busy time,
    sampling is that and tools the rest (the sampler idle: tool calls, parsing, rendering);
    otherwise wall is split by the trajectories' summed sampling and tool waits."""
    if sampler_seconds is None:
        sampled = sum(t.timings.get("sampling", 0.0) for t in trajectories)
        tools = sum(t.timings.get("tools", 0.0) for t in trajectories)
        share = sampled / (sampled + tools) if sampled + tools > 0 else 1.0
        sampler_seconds = wall * share
    sampling = min(max(sampler_seconds, 0.0), wall)
    return {"sampling": sampling, "tools": wall - sampling}


def time_split(step: int, record: dict[str, Any]) -> str:
    """One line: where the step's wall time went (the time/* metrics)."""
    parts = [
        ("sampling", "sampling"), ("tools", "tools"), ("log-probs", "logprobs"),
        ("update", "update"), ("sync", "sync"), ("validation", "validate"),
    ]  # fmt: skip
    shown = [
        f"{name} {record[f'time/{key}']:.1f}" for name, key in parts if f"time/{key}" in record
    ]
    return f"step {step}: {record['time/step']:.1f} s = " + " + ".join(shown)


@contextmanager
def _phase(seconds: dict[str, Any], name: str) -> Iterator[None]:
    """Adds the block's wall-clock seconds to seconds[name]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
