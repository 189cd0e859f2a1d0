"""GRPO with dr_jax.losses and the Learner teaches a tiny random policy a target token string.

The task: after a one-token prompt, emit TARGET. Each position's reward is 1 if it matches, and
each position gets its own GRPO advantage (per-token advantages, group-normalised): with one
advantage per sequence, a 2-layer model falls into "one position deterministically wrong" traps
that no sample escapes, which tests exploration luck rather than the learner. The mean reward of
a random policy over the 16-token vocabulary is ~1/16; the learned one's is > 0.9. Updates are
on-policy (old log-probs = current, as in DeepResearcher) with the default k3 KL and entropy
terms. Sampling is a plain jitted loop over the full forward pass (sequences are 5 tokens).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from dr_jax import losses
from dr_jax.models import ModelConfig, init_policy
from dr_jax.train import Learner, LossConfig, OptimConfig, TrainBatch

TARGET = np.array([3, 7, 1, 12], np.int32)
PROMPT = 5
GROUP, GROUPS = 16, 2  # 16 samples per prompt, 2 groups per step (as DeepResearcher's n=16)


def make_sampler(policy, length: int):
    @jax.jit
    def sample(params, key):
        rows = GROUP * GROUPS
        tokens = jnp.full((rows, 1 + length), PROMPT, jnp.int32)
        for t in range(length):  # unrolled: 4 tiny forward passes
            logits = policy.apply(params, tokens)[:, t]
            key, sub = jax.random.split(key)
            tokens = tokens.at[:, t + 1].set(jax.random.categorical(sub, logits))
        return tokens

    return sample


def test_grpo_learns_to_emit_the_target_string():
    config = ModelConfig.tiny(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        num_kv_heads=2,
        tie_word_embeddings=False,
    )
    policy = init_policy(config, seed=0)
    learner = Learner(policy, OptimConfig(lr=1e-2), LossConfig(), logprob_chunk=8)
    sample = make_sampler(learner.policy, len(TARGET))
    state = learner.init_state()
    reference = learner.reference_params()
    group_ids = np.repeat(np.arange(GROUPS), GROUP)
    loss_mask = np.zeros((GROUP * GROUPS, 1 + len(TARGET)), np.float32)
    loss_mask[:, 1:] = 1
    attention = np.ones_like(loss_mask, np.int32)
    key = jax.random.PRNGKey(0)
    curve = []
    start = time.perf_counter()
    for _ in range(80):
        key, sub = jax.random.split(key)
        tokens = sample(state.params, sub)
        hits = jnp.asarray(np.asarray(tokens[:, 1:]) == TARGET, jnp.float32)  # [B, 4]
        curve.append(float(hits.mean()))
        if curve[-1] > 0.95:
            break
        per_position = jax.vmap(losses.grpo_advantages, in_axes=(1, None), out_axes=1)
        advantages = jnp.pad(per_position(hits, jnp.asarray(group_ids)), ((0, 0), (1, 0)))
        batch = TrainBatch(
            tokens,
            attention,
            loss_mask,
            advantages,
            old_logprobs=None,
            ref_logprobs=learner.logprobs(reference, tokens, attention),
        )
        state, metrics = learner.train_step(state, batch)
    print(f"reward curve {np.round(curve, 2).tolist()} in {time.perf_counter() - start:.1f} s")
    assert curve[0] < 0.2
    assert curve[-1] > 0.9
    assert np.isfinite(float(metrics["kl_loss"])) and float(metrics["kl_loss"]) > 0
