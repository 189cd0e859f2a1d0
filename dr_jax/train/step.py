"""The learner: a jitted, sharded GRPO/PPO update and the log-prob passes it needs.

Per step: loss = policy_loss + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi), each term
aggregated with `LossConfig.agg` (veRL subtracts the entropy, so it is a bonus). Gradients of
micro-batches are accumulated exactly: every micro-batch divides its numerator by the *whole
batch's* denominator (e.g. its number of trained tokens), so the sum of micro-batch gradients is
the full-batch gradient, whatever the split. Only trained tokens (`loss_mask`) go through the
LM head, `logprob_chunk` positions at a time (train/logprobs.py), so the [B, T, V] logits of a
large vocabulary never exist.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dr_jax import losses
from dr_jax.config import at_least
from dr_jax.sharding import (
    BATCH_AXES,
    DEFAULT_RULES,
    batch_divisor,
    batch_sharding,
    make_mesh,
    param_shardings,
    put_global,
    replicated,
    shard_tree,
)
from dr_jax.train.logprobs import num_scored_positions, sequence_logprobs
from dr_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
from dr_jax.train.state import TrainState


@dataclass(frozen=True)
class LossConfig:
    """The GRPO objective. DeepResearcher's values (veRL's actor settings) are the field defaults
    and --preset deepresearcher's; the embedded default turns the KL and entropy terms off."""

    clip_low: float = 0.2  # PPO clip: ratio floor 1 - clip_low (for A < 0)
    clip_high: float = 0.2  # PPO clip: ratio ceiling 1 + clip_high (for A > 0; DAPO uses 0.28)
    clip_c: float | None = None  # dual-clip constant (> 1) bounding the loss for A < 0; None: off
    kl_coef: float = 0.001  # weight of the KL-to-reference loss (0 disables; ref log-probs unused)
    kl_kind: losses.KLKind = "k3"  # KL estimator: k1 | k2 | k3 | abs
    kl_clamp: float | None = 10.0  # clamp of the per-token KL estimate
    entropy_coef: float = 0.001  # weight of the entropy bonus (subtracted from the loss)
    agg: losses.AggMode = "token-mean"  # how per-token terms become a scalar
    agg_norm: float | None = None  # sum-norm's constant (a run: None = max_row_tokens)
    temperature: float = 1.0  # sampling temperature the log-probs are computed at

    def __post_init__(self) -> None:
        if self.agg not in losses.AGG_MODES:
            raise ValueError(f"agg={self.agg!r}: use one of {', '.join(losses.AGG_MODES)}")
        if self.kl_kind not in losses.KL_KINDS:
            raise ValueError(f"kl_kind={self.kl_kind!r}: use one of {', '.join(losses.KL_KINDS)}")
        if self.clip_c is not None and self.clip_c <= 1.0:
            raise ValueError(f"clip_c={self.clip_c} must be > 1 (or None to disable dual clip)")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (the sampler's temperature)")
        if self.agg_norm is not None and self.agg_norm <= 0:
            raise ValueError(f"agg_norm={self.agg_norm} must be > 0")
        at_least(self, "loss", kl_coef=0.0, entropy_coef=0.0, clip_low=0.0, clip_high=0.0)
        if self.clip_low >= 1:
            raise ValueError(f"--loss.clip-low must be < 1 (the ratio floor 1 - clip_low), got "
                             f"{self.clip_low}.")  # fmt: skip
        if self.kl_clamp is not None and self.kl_clamp <= 0:
            raise ValueError(f"--loss.kl-clamp must be > 0 (or None), got {self.kl_clamp}.")


class TrainBatch(NamedTuple):
    """One optimizer step's trajectories, [B, T] arrays aligned to tokens (contracts.md)."""

    tokens: Any  # i32[B, T], left padded
    attention_mask: Any  # {0,1}[B, T]
    loss_mask: Any  # {0,1}[B, T]: 1 on tokens the policy sampled
    advantages: Any  # f32[B] per row, or f32[B, T] per token
    old_logprobs: Any = None  # f32[B, T] of the sampling policy; None: on-policy (ratio = 1)
    ref_logprobs: Any = None  # f32[B, T] of the frozen reference; needed when kl_coef > 0


_METRIC_TERMS = ("clipfrac", "clipfrac_low", "clipfrac_high", "approx_kl")


def _pad_rows(x: Any, rows: int) -> Any:
    if x.shape[0] == rows:
        return x
    pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad) if isinstance(x, jax.Array) else np.pad(np.asarray(x), pad)


class Learner:
    """Owns the sharded, jitted computations of training; the loop owns data and state.

    policy: a dr_jax.models Policy (its params are the initial and the reference parameters).
    mesh: a ("data", "fsdp", "tp") mesh (default: every device on fsdp).
    micro_batch_size: rows per forward/backward (a multiple of data*fsdp); None: whole batch.
    logprob_chunk: positions unembedded at once; peak logits memory is [micro, chunk, V].
    remat: recompute each decoder layer in the backward pass (None: keep the policy's choice).
    """

    def __init__(
        self,
        policy: Any,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        mesh: Mesh | None = None,
        micro_batch_size: int | None = None,
        logprob_chunk: int = 512,
        remat: bool | None = None,
        rules: Mapping[str, str | None] = DEFAULT_RULES,
    ) -> None:
        self.policy = policy if remat is None else policy.replace(remat=remat)
        self.optim = optim or OptimConfig()
        self.loss = loss or LossConfig()
        self.mesh = mesh if mesh is not None else make_mesh()
        self.logprob_chunk = logprob_chunk
        self._divisor = batch_divisor(self.mesh)
        if micro_batch_size is not None and (
            micro_batch_size <= 0 or micro_batch_size % self._divisor
        ):
            raise ValueError(
                f"micro_batch_size={micro_batch_size} must be a positive multiple of "
                f"data*fsdp={self._divisor} (the mesh splits every micro-batch's rows)"
            )
        self.micro_batch_size = micro_batch_size
        if self.loss.agg == "seq-mean-token-sum-norm" and self.loss.agg_norm is None:
            raise ValueError(
                "seq-mean-token-sum-norm needs LossConfig.agg_norm, a constant length (the "
                "padded length would change the loss's scale with every batch)"
            )
        self.tx = make_optimizer(self.optim)
        self._schedule = lr_schedule(self.optim)

        self.param_shardings = param_shardings(
            policy.params, self.policy.logical_axes(), self.mesh, rules
        )
        rep = replicated(self.mesh)
        opt_shardings = optax.tree_map_params(
            self.tx,
            lambda _, sharding: sharding,
            jax.eval_shape(self.tx.init, policy.params),
            self.param_shardings,
            transform_non_params=lambda _: rep,
        )
        self.state_shardings = TrainState(self.param_shardings, opt_shardings, rep)
        self._rows = batch_sharding(self.mesh)
        self._reference: Any = None

        self._init = jax.jit(
            self._init_fn,
            in_shardings=(self.param_shardings,),
            out_shardings=self.state_shardings,
        )
        self._copy = jax.jit(
            lambda p: jax.tree.map(jnp.copy, p),
            in_shardings=(self.param_shardings,),
            out_shardings=self.param_shardings,
        )
        self._logprobs = jax.jit(
            self._in_mesh(self._logprobs_fn),
            static_argnums=(4, 5),
            in_shardings=(self.param_shardings, self._rows, self._rows, self._rows),
            out_shardings=self._rows,
        )
        self._step = jax.jit(
            self._in_mesh(self._step_fn),
            static_argnums=(2, 3, 4),
            in_shardings=(self.state_shardings, self._rows),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=(0,),
        )

    # ---- public API ---------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        """Step-0 state: a sharded copy of the policy's parameters, fresh AdamW moments."""
        return self._init(shard_tree(self.policy.params, self.param_shardings))

    def reference_params(self) -> Any:
        """The frozen reference: a sharded copy of the policy's initial parameters (cached)."""
        if self._reference is None:
            self._reference = self._copy(shard_tree(self.policy.params, self.param_shardings))
        return self._reference

    def logprobs(
        self, params: Any, tokens: Any, attention_mask: Any, loss_mask: Any = None
    ) -> jax.Array:
        """f32[B, T]: entry t = log p(tokens[t] | tokens[<t]) at the loss temperature; entry 0 = 0.

        With `loss_mask`, only trained tokens are scored (the rest are 0), which skips the LM
        head for prompt and tool-output positions. Micro-batched, chunked over the sequence;
        rows are split over data x fsdp.
        """
        rows, length = np.shape(tokens)
        padded, micro = self._layout(rows)
        k = None if loss_mask is None else self._scored_positions(loss_mask, length)
        mask = np.ones((rows, length), np.float32) if loss_mask is None else loss_mask
        arrays = [
            put_global(_pad_rows(x, padded), self._rows) for x in (tokens, attention_mask, mask)
        ]
        return self._logprobs(params, *arrays, padded // micro, k)[:rows]

    def train_step(self, state: TrainState, batch: TrainBatch) -> tuple[TrainState, dict]:
        """One optimizer update on `batch`; returns the new state (the old one is donated) and
        scalar metrics (loss terms, clip fractions, grad_norm before clipping, lr, tokens)."""
        return self._step(state, *self._step_inputs(batch))

    def lower_step(self, state: TrainState, batch: TrainBatch) -> jax.stages.Lowered:
        """The train step lowered for `batch`'s shapes: `.compile().memory_analysis()` gives
        its device memory, `.cost_analysis()` its FLOPs."""
        return self._step.lower(state, *self._step_inputs(batch))

    def lower_abstract(self, rows: int, length: int, on_policy: bool) -> dict[str, Any]:
        """The step and the log-prob pass lowered for `rows` x `length` batches without any
        data (every position trained: the largest K), for compile-only memory checks."""
        padded, micro = self._layout(rows)
        shape = jax.ShapeDtypeStruct((padded, length), jnp.float32, sharding=self._rows)
        tokens = jax.ShapeDtypeStruct((padded, length), jnp.int32, sharding=self._rows)
        names = ("advantages", "old_logprobs", "ref_logprobs")
        arrays = {"tokens": tokens, "attention_mask": tokens, "loss_mask": tokens}
        arrays |= dict.fromkeys(names, shape)
        state = jax.eval_shape(self._init_fn, self.policy.params)
        state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            state,
            self.state_shardings,
        )
        k = length - 1
        return {
            "learner step": self._step.lower(state, arrays, padded // micro, on_policy, k),
            "log-probs (old, ref)": self._logprobs.lower(
                state.params, tokens, tokens, tokens, padded // micro, k
            ),
        }

    def _step_inputs(self, batch: TrainBatch) -> tuple[dict, int, bool, int]:
        if self.loss.kl_coef and batch.ref_logprobs is None:
            raise ValueError(
                "kl_coef > 0 needs batch.ref_logprobs (learner.logprobs(learner.reference_params(),"
                " ...)); or set LossConfig(kl_coef=0)"
            )
        tokens = np.shape(batch.tokens)
        padded, micro = self._layout(tokens[0])
        advantages = batch.advantages
        if np.ndim(advantages) == 1:
            advantages = jnp.broadcast_to(jnp.asarray(advantages, jnp.float32)[:, None], tokens)
        zeros = np.zeros(tokens, np.float32)
        on_policy = batch.old_logprobs is None
        arrays = {
            "tokens": batch.tokens,
            "attention_mask": batch.attention_mask,
            "loss_mask": batch.loss_mask,
            "advantages": advantages,
            "old_logprobs": zeros if on_policy else batch.old_logprobs,
            "ref_logprobs": zeros if batch.ref_logprobs is None else batch.ref_logprobs,
        }
        scored = self._scored_positions(batch.loss_mask, tokens[1])
        arrays = {k: put_global(_pad_rows(v, padded), self._rows) for k, v in arrays.items()}
        return arrays, padded // micro, on_policy, scored

    # ---- jitted bodies ------------------------------------------------------------------------

    def _in_mesh(self, fn: Callable) -> Callable:
        """`fn` traced under this learner's mesh, so a kernel that must be shard_mapped (splash
        attention) finds the mesh it runs on."""

        @functools.wraps(fn)
        def traced(*args: Any) -> Any:
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                return fn(*args)

        return traced

    def _scored_positions(self, loss_mask: Any, length: int) -> int:
        """Static K for `num_scored_positions`; a mask not on this host scores every position."""
        if isinstance(loss_mask, jax.Array) and not loss_mask.is_fully_addressable:
            return length - 1
        return num_scored_positions(loss_mask, length, self.logprob_chunk)

    def _layout(self, rows: int) -> tuple[int, int]:
        """(padded rows, micro-batch rows): rows are padded with untrained rows to fit."""
        micro = self.micro_batch_size or -(-rows // self._divisor) * self._divisor
        return -(-rows // micro) * micro, micro

    def _init_fn(self, params: Any) -> TrainState:
        params = jax.tree.map(jnp.copy, params)  # never alias the policy's own buffers
        return TrainState(params, self.tx.init(params), jnp.zeros((), jnp.int32))

    def _split(self, x: jax.Array, n_micro: int) -> jax.Array:
        """[B, ...] -> [n_micro, B / n_micro, ...]; micro-batch k holds rows k, k + n_micro, ...

        The stride keeps every micro-batch spread over all row shards (rows are laid out in
        contiguous blocks per device), so no device idles while another computes.
        """
        x = x.reshape(x.shape[0] // n_micro, n_micro, *x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def _merge(self, x: jax.Array) -> jax.Array:
        return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    def _logprobs_fn(self, params, tokens, attention_mask, loss_mask, n_micro: int, k: int | None):
        def one(xs):
            logp, _ = sequence_logprobs(
                self.policy,
                params,
                xs[0],
                xs[1],
                chunk=self.logprob_chunk,
                temperature=self.loss.temperature,
                loss_mask=None if k is None else xs[2],
                num_positions=k,
            )
            return logp

        split = tuple(self._split(x, n_micro) for x in (tokens, attention_mask, loss_mask))
        return self._merge(jax.lax.map(one, split))

    def _micro_loss(self, params, mb: dict, denominator, tokens, on_policy: bool, scored: int):
        cfg = self.loss
        logp, entropy = sequence_logprobs(
            self.policy,
            params,
            mb["tokens"],
            mb["attention_mask"],
            chunk=self.logprob_chunk,
            temperature=cfg.temperature,
            with_entropy=True,  # reported even when it is not in the loss
            loss_mask=mb["loss_mask"],
            num_positions=scored,
        )
        mask = mb["loss_mask"]
        old = jax.lax.stop_gradient(logp) if on_policy else mb["old_logprobs"]
        per_token, terms = losses.ppo_clip_terms(
            logp,
            old,
            mb["advantages"],
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            clip_c=cfg.clip_c,
        )

        def numerator(values):
            return losses.aggregate_parts(values, mask, cfg.agg, norm=cfg.agg_norm)[0]

        pg = numerator(per_token) / denominator
        kl = jnp.zeros(())
        entropy_term = numerator(entropy) / denominator
        if cfg.kl_coef:
            kl_tokens = losses.kl_penalty(logp, mb["ref_logprobs"], cfg.kl_kind, cfg.kl_clamp)
            kl = numerator(kl_tokens) / denominator
        loss = pg + cfg.kl_coef * kl
        if cfg.entropy_coef:  # else no gradient flows through the entropy
            loss = loss - cfg.entropy_coef * entropy_term
        metrics = {"loss": loss, "pg_loss": pg, "kl_loss": kl, "entropy": entropy_term}
        mask = mask.astype(jnp.float32)
        for name in _METRIC_TERMS:
            metrics[name] = jnp.sum(terms[name] * mask) / tokens
        return loss, metrics

    def _step_fn(self, state: TrainState, batch: dict, n_micro: int, on_policy: bool, scored: int):
        cfg = self.loss
        mask = batch["loss_mask"]
        _, denominator = losses.aggregate_parts(mask, mask, cfg.agg, norm=cfg.agg_norm)
        denominator = jnp.where(denominator > 0, denominator, 1.0)
        tokens = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
        grad_fn = jax.value_and_grad(self._micro_loss, has_aux=True)

        def accumulate(carry, mb):
            grads, metrics = carry
            (_, mb_metrics), mb_grads = grad_fn(
                state.params, mb, denominator, tokens, on_policy, scored
            )
            grads = jax.tree.map(jnp.add, grads, mb_grads)
            return (grads, jax.tree.map(jnp.add, metrics, mb_metrics)), None

        zero_grads = jax.lax.with_sharding_constraint(
            jax.tree.map(jnp.zeros_like, state.params), self.param_shardings
        )
        names = ("loss", "pg_loss", "kl_loss", "entropy", *_METRIC_TERMS)
        zero_metrics = {name: jnp.zeros((), jnp.float32) for name in names}
        micro = {k: self._split(v, n_micro) for k, v in batch.items()}
        if n_micro == 1:  # no loop (cheaper to compile)
            (grads, metrics), _ = accumulate(
                (zero_grads, zero_metrics), {k: v[0] for k, v in micro.items()}
            )
        else:
            (grads, metrics), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), micro)

        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = jnp.asarray(self._schedule(state.step), jnp.float32)
        metrics["trained_tokens"] = jnp.sum(mask.astype(jnp.float32))
        new_state = TrainState(params, opt_state, state.step + 1)
        return new_state, metrics
