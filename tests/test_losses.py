"""dr_jax.losses against an independent NumPy implementation and hand-checked small cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax import losses

RNG = np.random.default_rng(0)


# ---- independent NumPy reference (loops, written from the formulas, float64) ---------------


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_grpo(rewards, groups, eps=1e-6, norm_by_std=True):
    out = np.zeros(len(rewards))
    for i, g in enumerate(groups):
        members = np.array([r for r, h in zip(rewards, groups, strict=True) if h == g])
        mean, std = (0.0, 1.0) if len(members) == 1 else (members.mean(), members.std(ddof=1))
        out[i] = (rewards[i] - mean) / (std + eps) if norm_by_std else rewards[i] - mean
    return out


def np_rloo(rewards, groups):
    out = np.zeros(len(rewards))
    for i, g in enumerate(groups):
        others = [
            r for j, (r, h) in enumerate(zip(rewards, groups, strict=True)) if h == g and j != i
        ]
        out[i] = rewards[i] - (np.mean(others) if others else 0.0)
    return out


def np_aggregate(v, m, mode):
    rows = [(v[i][m[i] > 0]) for i in range(v.shape[0])]
    rows = [r for r in rows if r.size]
    if mode == "token-mean":
        return np.concatenate(rows).mean()
    if mode == "seq-mean-token-mean":
        return np.mean([r.mean() for r in rows])
    if mode == "seq-mean-token-sum":
        return np.mean([r.sum() for r in rows])
    return np.sum([r.sum() for r in rows]) / (len(rows) * v.shape[1])


def np_ppo(logp, old, adv, mask, cl, ch, c, agg):
    per = np.zeros_like(logp)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            a = adv[i] if adv.ndim == 1 else adv[i, t]
            rho = math.exp(logp[i, t] - old[i, t])
            loss = max(-a * rho, -a * min(max(rho, 1 - cl), 1 + ch))
            if c is not None and a < 0:
                loss = min(loss, -a * c)
            per[i, t] = loss
    return np_aggregate(per, mask, agg)


def random_batch(b=4, t=7):
    logp = -RNG.uniform(0.1, 3.0, (b, t))
    old = logp + RNG.normal(0, 0.4, (b, t))
    mask = (RNG.uniform(size=(b, t)) > 0.3).astype(np.float64)
    mask[0] = 0  # a row with nothing to train must not count
    return logp, old, mask


# ---- log-probs and entropy -------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_numpy(temperature):
    logits = RNG.normal(0, 3, (2, 5, 11))
    tokens = RNG.integers(0, 11, (2, 5))
    ref = np_log_softmax(logits / temperature)
    want_lp = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
    want_h = -(np.exp(ref) * ref).sum(-1)
    got_lp = losses.token_logprobs(
        jnp.asarray(logits, jnp.float32), jnp.asarray(tokens), temperature
    )
    got_h = losses.entropy_from_logits(jnp.asarray(logits, jnp.float32), temperature)
    np.testing.assert_allclose(got_lp, want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-5, atol=1e-5)


def test_bf16_logits_give_float32_results():
    logits = jnp.asarray(RNG.normal(0, 3, (2, 3, 17)), jnp.bfloat16)
    tokens = jnp.zeros((2, 3), jnp.int32)
    assert losses.token_logprobs(logits, tokens).dtype == jnp.float32
    assert losses.entropy_from_logits(logits).dtype == jnp.float32


def test_uniform_logits_have_entropy_log_v():
    h = losses.entropy_from_logits(jnp.zeros((1, 1, 8)))
    np.testing.assert_allclose(h, [[math.log(8)]], rtol=1e-6)


# ---- advantages --------------------------------------------------------------------------------


def test_equal_rewards_in_a_group_give_zero_advantage():
    adv = losses.grpo_advantages(jnp.array([0.5, 0.5, 0.5, 1.0, 0.0]), jnp.array([3, 3, 3, 8, 8]))
    np.testing.assert_array_equal(adv[:3], 0.0)


def test_grpo_hand_checked_pair():
    # group {1, 0}: mean 0.5, Bessel std sqrt(0.5) -> A = +-0.5 / 0.70711 = +-0.70711
    adv = losses.grpo_advantages(jnp.array([1.0, 0.0]), jnp.array([0, 0]))
    np.testing.assert_allclose(adv, [0.7071058, -0.7071058], rtol=1e-6)


def test_singleton_group_uses_mean_zero_std_one():
    adv = losses.grpo_advantages(jnp.array([0.8, 1.0, 0.0]), jnp.array([5, 1, 1]))
    np.testing.assert_allclose(adv[0], 0.8 / (1 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_numpy_on_shuffled_groups(norm_by_std):
    groups = RNG.permutation(np.repeat([40, 3, 17, 99, 5], [4, 4, 3, 1, 4]))
    rewards = RNG.uniform(-1, 1, groups.size)
    got = jax.jit(losses.grpo_advantages, static_argnames="norm_by_std")(
        jnp.asarray(rewards, jnp.float32), jnp.asarray(groups), norm_by_std=norm_by_std
    )
    np.testing.assert_allclose(
        got, np_grpo(rewards, groups, norm_by_std=norm_by_std), rtol=1e-5, atol=1e-5
    )


def test_rloo_matches_numpy_and_hand_case():
    # {1, 0, 0}: baselines 0, 0.5, 0.5 -> 1, -0.5, -0.5
    hand = losses.rloo_advantages(jnp.array([1.0, 0.0, 0.0]), jnp.array([2, 2, 2]))
    np.testing.assert_allclose(hand, [1.0, -0.5, -0.5], rtol=1e-6)
    groups = RNG.permutation(np.repeat([1, 2, 3], [5, 1, 3]))
    rewards = RNG.uniform(0, 1, groups.size)
    got = losses.rloo_advantages(jnp.asarray(rewards, jnp.float32), jnp.asarray(groups))
    np.testing.assert_allclose(got, np_rloo(rewards, groups), rtol=1e-5, atol=1e-6)


def test_advantages_by_name_are_the_three_estimators():
    """What --grpo.advantage selects."""
    groups = RNG.permutation(np.repeat([7, 8], [4, 3]))
    rewards = RNG.uniform(-1, 1, groups.size)
    r, g = jnp.asarray(rewards, jnp.float32), jnp.asarray(groups)
    expected = {
        "grpo": np_grpo(rewards, groups, norm_by_std=True),
        "drgrpo": np_grpo(rewards, groups, norm_by_std=False),
        "rloo": np_rloo(rewards, groups),
    }
    assert set(expected) == set(losses.ADVANTAGE_KINDS)
    for kind, want in expected.items():
        np.testing.assert_allclose(losses.advantages(kind, r, g), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo"):
        losses.advantages("ppo", r, g)


# ---- KL ----------------------------------------------------------------------------------------


def test_kl_estimators_hand_checked():
    logp, ref = jnp.array([-1.0]), jnp.array([-1.5])  # d = ref - logp = -0.5
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k1"), [0.5], rtol=1e-6)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "abs"), [0.5], rtol=1e-6)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k2"), [0.125], rtol=1e-6)
    np.testing.assert_allclose(
        losses.kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - 0.5], rtol=1e-6
    )


def test_k3_is_clamped_to_ten_with_finite_gradient():
    logp, ref = jnp.array([-30.0, -1.0]), jnp.array([-1.0, -1.0])  # d = 29 would give ~4e12
    np.testing.assert_allclose(losses.kl_penalty(logp, ref), [10.0, 0.0])
    grad = jax.grad(lambda lp: losses.kl_penalty(lp, ref).sum())(logp)
    assert np.all(np.isfinite(grad)) and grad[0] == 0.0
    assert float(losses.kl_penalty(logp, ref, clamp=None)[0]) > 1e8


def test_unknown_kl_kind_names_the_choices():
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        losses.kl_penalty(jnp.zeros(1), jnp.zeros(1), "k4")


# ---- aggregation --------------------------------------------------------------------------------

HAND_VALUES = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
HAND_MASK = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode, want",
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),  # 2.5
        ("seq-mean-token-mean", (2.0 + 4.0) / 2),  # row means 2 and 4; empty row ignored
        ("seq-mean-token-sum", (6.0 + 4.0) / 2),
        ("seq-mean-token-sum-norm", (6.0 + 4.0) / (2 * 4)),  # norm = T = 4
    ],
)
def test_each_aggregation_mode_hand_checked(mode, want):
    assert float(losses.aggregate(HAND_VALUES, HAND_MASK, mode)) == pytest.approx(want)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregation_splits_exactly_over_row_chunks(mode):
    v, _, m = random_batch(8, 6)
    full = losses.aggregate(jnp.asarray(v), jnp.asarray(m), mode)
    parts = [
        losses.aggregate_parts(jnp.asarray(v[i : i + 2]), jnp.asarray(m[i : i + 2]), mode)
        for i in range(0, 8, 2)
    ]
    num, den = (sum(p[k] for p in parts) for k in (0, 1))
    np.testing.assert_allclose(num / den, full, rtol=1e-6)
    np.testing.assert_allclose(full, np_aggregate(v, m, mode), rtol=1e-5)


def test_empty_mask_aggregates_to_zero():
    assert float(losses.aggregate(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == 0.0


# ---- PPO-clip policy loss ------------------------------------------------------------------------


def test_clipping_on_both_sides_hand_checked():
    # ratios e^0.5=1.65 (A=+1, capped at 1.2) and e^-0.5=0.61 (A=-1, capped at 0.8)
    logp = jnp.array([[0.5, -0.5, 0.1]])
    old = jnp.zeros((1, 3))
    adv = jnp.array([[1.0, -1.0, 1.0]])
    mask = jnp.ones((1, 3))
    loss, metrics = losses.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    want = (-1.2 + 0.8 - math.exp(0.1)) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(metrics["clipfrac"]) == pytest.approx(2 / 3)
    assert float(metrics["clipfrac_high"]) == pytest.approx(1 / 3)
    assert float(metrics["clipfrac_low"]) == pytest.approx(1 / 3)
    assert float(metrics["approx_kl"]) == pytest.approx(-0.1 / 3, rel=1e-5)


def test_clip_does_not_bound_the_pessimistic_side():
    # A=+1 with ratio 0.5 < 0.8: max(-0.5, -0.8) = -0.5, the unclipped (worse) term wins
    loss, metrics = losses.policy_loss(
        jnp.array([[math.log(0.5)]]), jnp.zeros((1, 1)), jnp.array([1.0]), jnp.ones((1, 1))
    )
    assert float(loss) == pytest.approx(-0.5, rel=1e-6)
    assert float(metrics["clipfrac"]) == 0.0


def test_asymmetric_and_dual_clip_hand_checked():
    # A=+1, ratio 1.25: clip_high 0.28 leaves it unclipped. A=-1, ratio 5: dual clip 3 bounds 5 -> 3
    logp = jnp.array([[math.log(1.25), math.log(5.0)]])
    adv = jnp.array([[1.0, -1.0]])
    loss, metrics = losses.policy_loss(
        logp, jnp.zeros((1, 2)), adv, jnp.ones((1, 2)), clip_low=0.2, clip_high=0.28, clip_c=3.0
    )
    assert float(loss) == pytest.approx((-1.25 + 3.0) / 2, rel=1e-6)
    assert float(metrics["dual_clipfrac"]) == pytest.approx(0.5)


def test_on_policy_gradient_is_minus_advantage():
    # rho = 1 at old = logp: d loss / d logp_t = -A / (number of trained tokens)
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    grad = jax.grad(
        lambda lp: losses.policy_loss(
            lp, jax.lax.stop_gradient(lp), jnp.array([2.0]), jnp.array([[1, 1, 0]])
        )[0]
    )(logp)
    np.testing.assert_allclose(grad, [[-1.0, -1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("agg", losses.AGG_MODES)
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_policy_loss_matches_numpy(agg, per_token_adv):
    logp, old, mask = random_batch()
    adv = RNG.normal(0, 1, logp.shape if per_token_adv else logp.shape[:1])
    got, _ = losses.policy_loss(
        *(jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)),
        clip_low=0.2,
        clip_high=0.3,
        clip_c=3.0,
        agg=agg,
    )
    np.testing.assert_allclose(got, np_ppo(logp, old, adv, mask, 0.2, 0.3, 3.0, agg), rtol=1e-5)


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="clip_c"):
        losses.policy_loss(
            jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones(1), jnp.ones((1, 1)), clip_c=0.5
        )
