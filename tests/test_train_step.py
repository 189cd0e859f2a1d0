"""The learner step computes exactly the DeepResearcher objective, micro-batched or not."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dr_jax import losses
from dr_jax.models import ModelConfig, Policy, init_policy
from dr_jax.train import Learner, LossConfig, OptimConfig, TrainBatch, lr_schedule, make_optimizer
from dr_jax.train.logprobs import num_scored_positions

CONFIG = ModelConfig.tiny(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8
)
# eps = 1 makes AdamW's first step ~ lr * g, linear in the gradient, so comparing parameters
# compares gradients. (With a tiny eps the first step is ~ sign(g): f32 rounding in a near-zero
# gradient component would flip it, which says nothing about correctness.)
OPTIM = OptimConfig(lr=1.0, eps=1.0, weight_decay=0.01, max_grad_norm=0.5)


def assert_same_params(got, want):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


LOSS = LossConfig(kl_coef=0.1, entropy_coef=0.05)  # large enough to matter in the comparison


def make_batch(b=8, t=13, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, (b, t)).astype(np.int32)
    lengths = rng.integers(6, t + 1, b)
    attention = (np.arange(t) >= t - lengths[:, None]).astype(np.int32)  # left padding
    loss_mask = attention * (np.arange(t) >= t - lengths[:, None] + 3)  # 3 prompt tokens
    loss_mask[1] = 0  # a row with nothing to train
    return tokens, attention, loss_mask.astype(np.float32), rng


def reference_update(policy, params, batch: TrainBatch):
    """The objective written directly from full [B, T, V] logits, and one optax update."""
    tokens, attention, mask = (jnp.asarray(x) for x in batch[:3])

    def loss_fn(p):
        logits = policy.apply(p, tokens, attention)[:, :-1]
        logp = jnp.pad(losses.token_logprobs(logits, tokens[:, 1:]), ((0, 0), (1, 0)))
        ent = jnp.pad(losses.entropy_from_logits(logits), ((0, 0), (1, 0)))
        pg, _ = losses.policy_loss(logp, batch.old_logprobs, batch.advantages, mask)
        kl = losses.aggregate(losses.kl_penalty(logp, batch.ref_logprobs), mask)
        return pg + LOSS.kl_coef * kl - LOSS.entropy_coef * losses.aggregate(ent, mask)

    @jax.jit
    def update(p):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        tx = make_optimizer(OPTIM)
        updates, _ = tx.update(grads, tx.init(p), p)
        return loss, optax.tree.norm(grads), optax.apply_updates(p, updates)

    return update(params)


@functools.cache
def shared_learner() -> tuple[Policy, Learner]:
    """One policy and learner per process (also used by test_checkpoint.py): compiled once."""
    policy = init_policy(CONFIG, seed=0)
    return policy, Learner(policy, OPTIM, LOSS, logprob_chunk=5)


@pytest.fixture(scope="module")
def setup():
    policy, full = shared_learner()
    tokens, attention, loss_mask, rng = make_batch()
    logp = np.asarray(full.logprobs(full.reference_params(), tokens, attention))
    batch = TrainBatch(
        tokens,
        attention,
        loss_mask,
        rng.normal(size=8).astype(np.float32),
        (logp + rng.normal(0, 0.3, logp.shape) * loss_mask).astype(np.float32),  # ratio != 1
        (logp + rng.normal(0, 0.5, logp.shape) * loss_mask).astype(np.float32),
    )
    return policy, full, batch, logp


def test_chunked_logprobs_equal_full_logits(setup):
    policy, full, batch, logp = setup
    logits = policy.logits(jnp.asarray(batch.tokens), jnp.asarray(batch.attention_mask))
    want = np.asarray(losses.token_logprobs(logits[:, :-1], batch.tokens[:, 1:]))
    real = batch.attention_mask[:, 1:] == 1
    np.testing.assert_allclose(logp[:, 1:][real], want[real], rtol=1e-5, atol=1e-5)
    assert np.all(logp[:, 0] == 0)
    # with a loss mask only trained tokens are scored (the LM head skips the rest)
    trained_only = np.asarray(
        full.logprobs(full.reference_params(), batch.tokens, batch.attention_mask, batch.loss_mask)
    )
    trained = batch.loss_mask[:, 1:] == 1
    np.testing.assert_allclose(trained_only[:, 1:][trained], want[trained], rtol=1e-5, atol=1e-5)
    assert np.all(trained_only[batch.loss_mask == 0] == 0)


def test_scored_positions_come_in_few_static_sizes():
    mask = np.zeros((3, 200), np.float32)
    mask[0, 150:170] = 1  # 20 trained tokens
    assert num_scored_positions(mask, 200, chunk=16) == 32
    mask[1, 10:120] = 1  # 110 -> 128
    assert num_scored_positions(mask, 200, chunk=16) == 128
    mask[2, 1:] = 1  # 199 -> capped at T - 1
    assert num_scored_positions(mask, 200, chunk=16) == 199


def test_step_matches_the_objective_written_from_full_logits(setup):
    policy, full, batch, _ = setup
    loss, grad_norm, params = reference_update(policy, policy.params, batch)
    state, metrics = full.train_step(full.init_state(), batch)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(float(grad_norm), rel=1e-5)
    assert float(metrics["trained_tokens"]) == batch.loss_mask.sum()
    assert 0 < float(metrics["clipfrac"]) < 1
    assert_same_params(state.params, params)
    assert int(state.step) == 1


def test_four_micro_batches_give_the_full_batch_update(setup):
    policy, full, batch, _ = setup
    micro = Learner(policy, OPTIM, LOSS, micro_batch_size=2, logprob_chunk=5)
    state_full, m_full = full.train_step(full.init_state(), batch)
    state_micro, m_micro = micro.train_step(micro.init_state(), batch)
    for key in ("loss", "grad_norm", "entropy", "kl_loss", "clipfrac", "approx_kl"):
        assert float(m_micro[key]) == pytest.approx(float(m_full[key]), rel=1e-5), key
    assert_same_params(state_micro.params, state_full.params)


def test_step_donates_the_state_but_not_the_policy(setup):
    policy, full, batch, _ = setup
    state = full.init_state()
    full.train_step(state, batch)
    assert jax.tree.leaves(state.params)[0].is_deleted()
    assert not jax.tree.leaves(policy.params)[0].is_deleted()
    assert not jax.tree.leaves(full.reference_params())[0].is_deleted()


def test_kl_without_reference_logprobs_is_refused(setup):
    _, full, batch, _ = setup
    with pytest.raises(ValueError, match="ref_logprobs"):
        full.train_step(full.init_state(), batch._replace(ref_logprobs=None))


def test_loss_config_names_the_valid_choices():
    with pytest.raises(ValueError, match="token-mean"):
        LossConfig(agg="mean")
    with pytest.raises(ValueError, match="k3"):
        LossConfig(kl_kind="kl")


def test_dr_grpo_aggregation_needs_a_constant_length(setup):
    """A padded length would rescale the loss with every batch; a run uses --grpo.max-row-tokens."""
    from dr_jax.train.config import TrainConfig
    from dr_jax.train.run import make_learner

    policy = setup[0]
    drgrpo = dataclasses.replace(LOSS, agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="agg_norm, a constant length"):
        Learner(policy, OPTIM, drgrpo)
    config = TrainConfig(loss=dataclasses.replace(drgrpo, kl_coef=0.0, temperature=0.5))
    assert make_learner(config, policy, None).loss.agg_norm == config.grpo.max_row_tokens


def test_warmup_then_cosine_schedule():
    sched = lr_schedule(OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", total_steps=12))
    assert [float(sched(s)) for s in (0, 2, 4)] == pytest.approx([0.0, 0.5, 1.0])
    assert float(sched(8)) == pytest.approx(0.5)  # halfway through the 8 cosine steps
    assert float(sched(12)) == pytest.approx(0.0, abs=1e-7)
    assert float(lr_schedule(OptimConfig(lr=3e-6))(100)) == pytest.approx(3e-6)


def test_entropy_is_reported_without_an_entropy_bonus(setup):
    policy, full, batch, _ = setup
    plain = Learner(policy, OPTIM, dataclasses.replace(LOSS, entropy_coef=0.0), logprob_chunk=5)
    _, with_bonus = full.train_step(full.init_state(), batch)
    _, without = plain.train_step(plain.init_state(), batch)
    assert float(without["entropy"]) == pytest.approx(float(with_bonus["entropy"]), rel=1e-5)
    assert float(without["entropy"]) > 0
    bonus = LOSS.entropy_coef * float(with_bonus["entropy"])
    assert float(without["loss"]) == pytest.approx(float(with_bonus["loss"]) + bonus, rel=1e-5)
