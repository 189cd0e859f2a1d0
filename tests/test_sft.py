"""The warm start's loss is the learner's log-prob pass: its NLL equals one written from full
logits, and its optimizer is an OptimConfig (warm-up, then a cosine to 0 at the last step)."""

import jax.numpy as jnp
import numpy as np

from dr_jax import losses
from dr_jax.models import ModelConfig, init_policy
from dr_jax.train.batching import PaddedSequences
from dr_jax.train.config import SFTConfig
from dr_jax.train.optim import lr_schedule
from dr_jax.train.sft import SupervisedTrainer


def test_the_nll_is_the_token_mean_over_trained_tokens_from_full_logits():
    policy = init_policy(ModelConfig.tiny(), seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 500, (3, 40)).astype(np.int32)
    attention = np.ones_like(tokens)
    attention[0, :7] = 0  # left padding
    mask = (rng.uniform(size=tokens.shape) < 0.3).astype(np.float32) * attention
    mask[:, 0] = 1.0  # position 0 is never trained, whatever the mask says
    trainer = SupervisedTrainer(policy, SFTConfig(steps=4))
    ours = trainer.nll(policy.params, *map(jnp.asarray, (tokens, attention, mask)), 39)

    logits = policy.apply(policy.params, jnp.asarray(tokens), jnp.asarray(attention))
    logp = losses.token_logprobs(logits[:, :-1], jnp.asarray(tokens[:, 1:]))
    trained = mask[:, 1:]
    reference = -float(jnp.sum(logp * trained) / trained.sum())
    np.testing.assert_allclose(float(ours), reference, rtol=1e-5)

    seqs = PaddedSequences(tokens, attention, mask, np.zeros_like(mask))
    params, opt_state = policy.params, trainer.init(policy.params)
    _, _, before = trainer.step(params, opt_state, seqs)
    np.testing.assert_allclose(before, reference, rtol=1e-5)


def test_the_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    schedule = lr_schedule(SFTConfig(steps=10, lr=1e-3, warmup_steps=3).optimizer())
    assert float(schedule(0)) == 0.0 and float(schedule(3)) == np.float32(1e-3)
    assert float(schedule(10)) == 0.0 and 0 < float(schedule(7)) < 1e-3
