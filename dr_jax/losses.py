"""RL maths for policy-gradient training of language models, as pure JAX functions.

Shapes: B rows, T tokens, V vocabulary, N trajectories. A `mask` is 1 where a token is trained
(sampled by the policy) and 0 elsewhere (prompt, tool observations, padding). Every function is
jit-able and computes in float32 whatever the input dtype.

The semantics follow DeepResearcher's veRL fork (GRPO with Bessel std, PPO-clip, k3 KL clamped
to +-10, token-mean aggregation), so runs are comparable with the original.
"""

from typing import Literal

import jax
import jax.numpy as jnp

KLKind = Literal["k1", "k2", "k3", "abs"]
AggMode = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
AdvantageKind = Literal["grpo", "drgrpo", "rloo"]
AGG_MODES: tuple[str, ...] = AggMode.__args__
ADVANTAGE_KINDS: tuple[str, ...] = AdvantageKind.__args__
KL_KINDS: tuple[str, ...] = KLKind.__args__

_LOG_RATIO_LIMIT = 20.0  # exp(20) ~ 5e8: ratios beyond this carry no signal, only overflow risk


def _scaled_f32(logits: jax.Array, temperature: float) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return logits if temperature == 1.0 else logits / temperature


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / temperature) at `tokens`: [..., V], [...] -> f32[...].

    `logits[..., t, :]` must be the distribution that `tokens[..., t]` was drawn from (callers
    shift). The temperature must equal the sampler's, or trainer and sampler log-probs differ.
    """
    z = _scaled_f32(logits, temperature)
    picked = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of softmax(z), z = logits / temperature: H = logsumexp(z) - sum_v p_v z_v.

    [..., V] -> f32[...].
    """
    z = _scaled_f32(logits, temperature)
    p = jax.nn.softmax(z, axis=-1)
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(p * z, axis=-1)


def _group_stats(
    rewards: jax.Array, group_ids: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-trajectory (group size, group sum, group sum of squared deviations), each f32[N]."""
    n = rewards.shape[0]
    _, seg = jnp.unique(group_ids, return_inverse=True, size=n)
    seg = seg.reshape(n)
    count = jax.ops.segment_sum(jnp.ones_like(rewards), seg, num_segments=n)
    total = jax.ops.segment_sum(rewards, seg, num_segments=n)
    mean = total / jnp.maximum(count, 1.0)
    sq_dev = jax.ops.segment_sum((rewards - mean[seg]) ** 2, seg, num_segments=n)
    return count[seg], total[seg], sq_dev[seg]


def grpo_advantages(
    rewards: jax.Array, group_ids: jax.Array, *, eps: float = 1e-6, norm_by_std: bool = True
) -> jax.Array:
    """GRPO outcome advantages: A_i = (r_i - mean_g) / (std_g + eps), f32[N], int[N] -> f32[N].

    std_g is the unbiased (Bessel, ddof=1) standard deviation of trajectory i's group g. A group
    of one has mean 0 and std 1, as in veRL. `norm_by_std=False` gives Dr. GRPO's r_i - mean_g.
    Group ids are arbitrary integers (not necessarily contiguous).
    """
    rewards = rewards.astype(jnp.float32)
    count, total, sq_dev = _group_stats(rewards, group_ids)
    single = count < 2
    mean = jnp.where(single, 0.0, total / count)
    std = jnp.where(single, 1.0, jnp.sqrt(sq_dev / jnp.maximum(count - 1.0, 1.0)))
    centred = rewards - mean
    return centred / (std + eps) if norm_by_std else centred


def rloo_advantages(rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
    """REINFORCE leave-one-out: A_i = r_i - (sum_g r - r_i) / (|g| - 1), f32[N] -> f32[N].

    The baseline is the mean reward of the other members of the group; a group of one has
    baseline 0.
    """
    rewards = rewards.astype(jnp.float32)
    count, total, _ = _group_stats(rewards, group_ids)
    baseline = jnp.where(count < 2, 0.0, (total - rewards) / jnp.maximum(count - 1.0, 1.0))
    return rewards - baseline


def advantages(kind: AdvantageKind, rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
    """Outcome advantages f32[N] by name: "grpo" (group mean and std), "drgrpo" (group mean
    only, Dr. GRPO) or "rloo" (leave-one-out mean)."""
    if kind == "grpo":
        return grpo_advantages(rewards, group_ids)
    if kind == "drgrpo":
        return grpo_advantages(rewards, group_ids, norm_by_std=False)
    if kind == "rloo":
        return rloo_advantages(rewards, group_ids)
    raise ValueError(f"unknown advantage {kind!r}: use one of {', '.join(ADVANTAGE_KINDS)}")


def kl_penalty(
    logp: jax.Array, ref_logp: jax.Array, kind: KLKind = "k3", clamp: float | None = 10.0
) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, f32[B,T].

    With d = ref_logp - logp:  k1 = -d;  abs = |d|;  k2 = d^2 / 2;  k3 = exp(d) - d - 1
    (Schulman's unbiased, always >= 0 "low_var_kl"). The result is clamped to [-clamp, clamp]
    (veRL clamps k3 to +-10; `clamp=None` disables). For k3, d is first limited to +-20 so exp
    never overflows; this does not change any value, because k3(20) is far beyond the clamp.
    """
    d = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    if kind == "k1":
        kl = -d
    elif kind == "abs":
        kl = jnp.abs(d)
    elif kind == "k2":
        kl = 0.5 * d**2
    elif kind == "k3":
        d = jnp.clip(d, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        kl = jnp.exp(d) - d - 1.0
    else:
        raise ValueError(f"unknown KL estimator {kind!r}: use one of {', '.join(KL_KINDS)}")
    return kl if clamp is None else jnp.clip(kl, -clamp, clamp)


def aggregate_parts(
    values: jax.Array, mask: jax.Array, mode: AggMode = "token-mean", *, norm: float | None = None
) -> tuple[jax.Array, jax.Array]:
    """Split an aggregation of per-token `values` f32[B,T] into (numerator, denominator) scalars.

    Both parts are sums over rows, so a batch split into micro-batches aggregates exactly as
    sum(numerators) / sum(denominators) -- never as a mean of micro-batch means. With M the
    mask and R the number of rows that have at least one trained token:
      token-mean:               sum(v M) / sum(M)
      seq-mean-token-mean:      sum_i [sum_t v M / sum_t M] / R
      seq-mean-token-sum:       sum_i [sum_t v M] / R
      seq-mean-token-sum-norm:  sum_i [sum_t v M] / (R * norm)    (Dr. GRPO; norm defaults to T)
    """
    mask = mask.astype(jnp.float32)
    masked = values.astype(jnp.float32) * mask
    row_tokens = jnp.sum(mask, axis=-1)
    rows = jnp.sum((row_tokens > 0).astype(jnp.float32))
    if mode == "token-mean":
        return jnp.sum(masked), jnp.sum(mask)
    if mode == "seq-mean-token-mean":
        return jnp.sum(jnp.sum(masked, axis=-1) / jnp.maximum(row_tokens, 1.0)), rows
    if mode == "seq-mean-token-sum":
        return jnp.sum(masked), rows
    if mode == "seq-mean-token-sum-norm":
        return jnp.sum(masked), rows * float(mask.shape[-1] if norm is None else norm)
    raise ValueError(f"unknown aggregation mode {mode!r}: use one of {', '.join(AGG_MODES)}")


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 when nothing was aggregated (denominator 0)."""
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def aggregate(
    values: jax.Array, mask: jax.Array, mode: AggMode = "token-mean", *, norm: float | None = None
) -> jax.Array:
    """Reduce per-token `values` f32[B,T] over the masked tokens; see `aggregate_parts`."""
    return safe_divide(*aggregate_parts(values, mask, mode, norm=norm))


def ppo_clip_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token PPO-clip loss f32[B,T] and per-token indicator arrays for the metrics.

    rho = exp(logp - old_logp);  l = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high)).
    Dual clip (clip_c > 1): where A < 0, l = min(l, -A clip_c), bounding the loss of a very
    unlikely-under-old token. `advantages` is per row f32[B] or per token f32[B,T].
    """
    logp = logp.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)
    if adv.ndim == logp.ndim - 1:
        adv = adv[..., None]
    log_ratio = jnp.clip(logp - old_logp.astype(jnp.float32), -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    terms = {
        "clipfrac": (clipped > unclipped).astype(jnp.float32),
        "clipfrac_low": ((ratio < 1.0 - clip_low) & (adv < 0)).astype(jnp.float32),
        "clipfrac_high": ((ratio > 1.0 + clip_high) & (adv > 0)).astype(jnp.float32),
        "approx_kl": -log_ratio,
        "ratio": ratio,
    }
    if clip_c is not None:
        if clip_c <= 1.0:
            raise ValueError(f"clip_c={clip_c} must be > 1 (dual clip bounds -A*rho by -A*clip_c)")
        bound = -adv * clip_c
        terms["dual_clipfrac"] = ((adv < 0) & (loss > bound)).astype(jnp.float32)
        loss = jnp.where(adv < 0, jnp.minimum(loss, bound), loss)
    return loss, terms


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    agg: AggMode = "token-mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO-clip policy loss aggregated by `agg`, with token-mean metrics.

    Returns (loss, metrics) where metrics holds clipfrac (share of tokens where the clipped
    term is active), clipfrac_low / clipfrac_high (ratio past the lower / upper bound),
    approx_kl (mean of old_logp - logp), ratio_mean and, with dual clip, dual_clipfrac.
    See `ppo_clip_terms` for the formula.
    """
    per_token, terms = ppo_clip_terms(
        logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c
    )
    metrics = {
        (k if k != "ratio" else "ratio_mean"): aggregate(v, mask, "token-mean")
        for k, v in terms.items()
    }
    return aggregate(per_token, mask, agg), metrics
