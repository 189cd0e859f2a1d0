"""Decoding reads only the cache slots the rows can see: same tokens and log-probs as reading
every slot, at the cost of the rows' length rather than the cache's."""

import asyncio

import numpy as np

from dr_jax.models import ModelConfig, init_policy
from dr_jax.rollout import JaxSampler, SamplingParams
from dr_jax.rollout.jax_sampler import MIN_SPAN


def test_extend_over_a_prefix_of_the_cache_equals_the_whole_cache():
    policy = init_policy(ModelConfig.tiny(vocab_size=512), seed=1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 512, (2, 12)).astype(np.int32)
    num_new = np.array([12, 7], np.int32)
    whole, _ = policy.extend(policy.params, policy.init_cache(2, 64), tokens, num_new)
    prefix, cache = policy.extend(policy.params, policy.init_cache(2, 64), tokens, num_new, 16)
    np.testing.assert_allclose(prefix, whole, rtol=1e-5, atol=1e-5)
    assert cache.max_len == 64 and list(cache.lengths) == [12, 7]


def test_split_layers_over_a_split_cache_extend_like_the_stacked_ones():
    """The decode loop's form (per-layer params and cache blocks) computes the same logits and
    writes the same slots as the scan over stacked layers."""
    policy = init_policy(ModelConfig.tiny(vocab_size=512), seed=4)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, 512, (2, 9)).astype(np.int32)
    _, cache = policy.extend(policy.params, policy.init_cache(2, 32), prompt, np.array([9, 5]))
    step = rng.integers(0, 512, (2, 1)).astype(np.int32)
    active = np.array([1, 0], np.int32)
    stacked, after = policy.extend(policy.params, cache, step, active, 16)
    layers = policy.split_layers(policy.params)
    split, window = policy.extend(policy.params, cache.split(16), step, active, layers=layers)
    np.testing.assert_allclose(split, stacked, rtol=1e-5, atol=1e-5)
    joined = cache.join(window)
    assert joined.max_len == 32 and list(joined.lengths) == [10, 5]
    np.testing.assert_allclose(joined.k, after.k, atol=1e-6)
    np.testing.assert_allclose(joined.v, after.v, atol=1e-6)


def test_a_long_cache_decodes_short_rows_over_a_short_span_with_the_same_results():
    policy = init_policy(ModelConfig.tiny(vocab_size=512), seed=2)
    prompts = [[5, 6, 7], list(range(20, 60))]
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=3)
    results = {}
    for slots in (2 * MIN_SPAN, 96):
        sampler = JaxSampler(policy, max_batch_size=2, max_seq_len=slots, decode_chunk=4)
        results[slots] = asyncio.run(sampler.generate(prompts, params))
        assert sampler._span() == min(slots, MIN_SPAN), "idle rows: the smallest span"
    for long, short in zip(results[2 * MIN_SPAN], results[96], strict=True):
        assert long.token_ids == short.token_ids
        np.testing.assert_allclose(long.logprobs, short.logprobs, atol=1e-5)
