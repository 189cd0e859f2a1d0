"""The sampler draws tokens with the frequencies its distribution states: a biased draw would pass
every exact-output test, and GRPO would then learn off-policy without a sign.

Each case draws N tokens (one row each, keys as the sampler derives them) from one set of logits
and compares the counts with N x the expected probabilities by Pearson's chi-square, at a
false-alarm rate of 1e-4. The expected probabilities are computed here in float64 from the logits:
softmax(z / T), truncated to the top-k / top-p set by sorting, renormalised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dr_jax.rollout.jax_sampler import Paths, draw, sample_tokens

DRAWS = 40_000
LOGITS = np.log([0.30, 0.20, 0.15, 0.12, 0.08, 0.06, 0.05, 0.04]) + 0.7  # any offset: softmax


def expected(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """The distribution the sampler must draw from (float64; zeros outside the kept set)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.shape, bool)
    keep[order[: top_k if top_k > 0 else len(p)]] = True
    if top_p < 1:
        mass = np.cumsum(p[order])
        keep[order[np.argmax(mass >= top_p) + 1 :]] = False
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def drawn_counts(temperature: float, top_p: float, top_k: int, seed: int = 0) -> np.ndarray:
    """Counts of DRAWS tokens sampled by `sample_tokens` from LOGITS."""
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (DRAWS, len(LOGITS)))
    keys = jax.random.key_data(jax.random.split(jax.random.key(seed), DRAWS))
    tokens, _ = jax.jit(sample_tokens, static_argnums=5)(
        logits,
        keys,
        jnp.full(DRAWS, temperature, jnp.float32),
        jnp.full(DRAWS, top_p, jnp.float32),
        jnp.full(DRAWS, top_k, jnp.int32),
        Paths(truncate=top_p < 1 or top_k > 0),
    )
    return np.bincount(np.asarray(tokens), minlength=len(LOGITS))


def chi_square_passes(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's test of counts against probs (tokens of probability 0 must never be drawn)."""
    if counts[probs == 0].any():
        return False
    kept = probs > 0
    expected_counts = counts.sum() * probs[kept]
    statistic = ((counts[kept] - expected_counts) ** 2 / expected_counts).sum()
    return statistic < stats.chi2.ppf(1 - 1e-4, df=kept.sum() - 1)


@pytest.mark.parametrize(
    "temperature, top_p, top_k",
    [(1.0, 1.0, -1), (0.5, 1.0, -1), (1.0, 0.7, -1), (1.0, 1.0, 3), (0.5, 0.8, 4)],
)
def test_token_frequencies_match_the_distribution(temperature, top_p, top_k):
    probs = expected(LOGITS, temperature, top_p, top_k)
    assert chi_square_passes(drawn_counts(temperature, top_p, top_k), probs)


def test_a_slightly_biased_draw_fails_the_same_test():
    """The test has the power to see a small bias: uniforms bent by u -> u^1.05 shift each
    token's probability by ~1% of the total, and the counts then fail it."""
    probs = expected(LOGITS, 1.0, 1.0, -1)
    weights = jnp.broadcast_to(jnp.asarray(probs, jnp.float32), (DRAWS, len(LOGITS)))
    u = jax.random.uniform(jax.random.key(0), (DRAWS,), minval=1e-12)
    fair = np.bincount(np.asarray(draw(weights, u)), minlength=len(LOGITS))
    biased = np.bincount(np.asarray(draw(weights, u**1.05)), minlength=len(LOGITS))
    assert chi_square_passes(fair, probs)
    assert not chi_square_passes(biased, probs)


def test_truncated_tokens_are_never_drawn_and_a_wrong_set_fails():
    counts = drawn_counts(1.0, 1.0, 3)
    assert counts[3:].sum() == 0
    assert not chi_square_passes(counts, expected(LOGITS, 1.0, 1.0, 4))
    assert not chi_square_passes(counts, expected(LOGITS, 1.0, 1.0, -1))


def test_draws_at_one_temperature_fail_against_a_nearby_one():
    counts = drawn_counts(1.0, 1.0, -1)
    assert chi_square_passes(counts, expected(LOGITS, 1.0, 1.0, -1))
    assert not chi_square_passes(counts, expected(LOGITS, 0.9, 1.0, -1))
