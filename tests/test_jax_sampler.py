"""JaxSampler: the in-process, continuously batched sampler over the policy's KV cache.

References are the policy's full forward pass (`policy.logits` over prompt + sample) and
`losses.token_logprobs`; a 512-token vocabulary keeps compile and run times small.
"""

import asyncio
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax.models import ModelConfig, init_policy
from dr_jax.rollout import JaxSampler, SamplingParams, sampler_logprob_gap
from dr_jax.rollout.jax_sampler import _decode, _prefill, truncate_logprobs

PROMPTS = [[5, 6, 7], list(range(20, 60)), [3] * 17]


@pytest.fixture(scope="module")
def policy():
    return init_policy(ModelConfig.tiny(vocab_size=512), seed=0)


@pytest.fixture(scope="module")
def sampler(policy):
    return make_sampler(policy)


def make_sampler(policy, **kwargs) -> JaxSampler:
    """Every test sampler has the same shapes, so they share compilations."""
    kwargs = {"min_prefill_bucket": 128, **kwargs}
    return JaxSampler(policy, max_batch_size=2, max_seq_len=128, decode_chunk=4, **kwargs)


def greedy_reference(policy, prompt: list[int], steps: int, width: int = 64) -> list[int]:
    """Greedy decoding by full forward passes without a cache (right-padded to `width`:
    causal attention makes the padding invisible)."""
    tokens = list(prompt)
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(tokens)] = tokens
        logits = policy.logits(jnp.asarray(padded))
        tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    return tokens[len(prompt) :]


def generate(sampler, prompts, **params):
    return asyncio.run(sampler.generate(prompts, SamplingParams(**params)))


def test_logprobs_equal_the_trainers_token_logprobs(sampler, policy):
    """A T=1 row beside a truncated T=0.7 row (one batch), then two greedy rows."""
    plain = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1)
    cut = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.8, top_k=40, seed=2)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)

    async def main():
        side_by_side = await asyncio.gather(
            sampler_logprob_gap(sampler, policy, PROMPTS[:1], plain),
            sampler_logprob_gap(sampler, policy, PROMPTS[1:2], cut),
        )
        return [*side_by_side, await sampler_logprob_gap(sampler, policy, PROMPTS[1:], greedy)]

    assert max(asyncio.run(main())) <= 1e-4


def test_greedy_decoding_matches_full_forward_argmax(sampler, policy):
    results = generate(sampler, PROMPTS, temperature=0.0, max_new_tokens=10)
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.token_ids == greedy_reference(policy, prompt, 10)
        assert result.finish_reason == "length"


def test_same_seed_same_tokens_whatever_the_batch_or_slot(sampler):
    first = generate(sampler, [PROMPTS[0], PROMPTS[1]], max_new_tokens=12, seed=5)

    async def crowded():  # the same request, now beside others and in another slot
        others = sampler.generate([PROMPTS[2]] * 3, SamplingParams(max_new_tokens=30, seed=9))
        again = sampler.generate([PROMPTS[0]], SamplingParams(max_new_tokens=12, seed=5))
        return (await asyncio.gather(others, again))[1]

    [again] = asyncio.run(crowded())
    assert again.token_ids == first[0].token_ids
    assert again.logprobs == pytest.approx(first[0].logprobs, abs=1e-5)
    [other_seed] = generate(sampler, [PROMPTS[0]], max_new_tokens=12, seed=6)
    assert other_seed.token_ids != first[0].token_ids


def test_finished_rows_are_refilled_so_short_requests_do_not_wait(policy):
    sampler = make_sampler(policy)
    order = []

    async def one(name: str, prompt: list[int], n: int):
        [result] = await sampler.generate([prompt], SamplingParams(max_new_tokens=n, seed=1))
        order.append(name)
        return result

    async def main():
        long = one("long", PROMPTS[1], 40)
        shorts = [one(f"short{i}", [i + 1] * (i + 2), 3) for i in range(5)]
        return await asyncio.gather(long, *shorts)

    results = asyncio.run(main())
    assert [len(r.token_ids) for r in results] == [40, 3, 3, 3, 3, 3]
    assert order[-1] == "long"  # five short requests went through the second slot meanwhile
    assert sampler.stats["prefill_calls"] >= 5


def test_stop_token_ends_a_row_and_is_kept(sampler, policy):
    reference = greedy_reference(policy, PROMPTS[1], 12)
    stop = reference[5]
    cut = reference.index(stop) + 1
    [result] = generate(sampler, [PROMPTS[1]], temperature=0.0, max_new_tokens=12,
                        stop_token_ids=(stop,))  # fmt: skip
    assert result.token_ids == reference[:cut] and len(result.logprobs) == cut
    assert result.finish_reason == "stop"


def test_eos_ids_of_the_sampler_always_stop(policy):
    reference = greedy_reference(policy, PROMPTS[0], 8)
    sampler = make_sampler(policy, eos_token_ids=(reference[3],))
    [result] = generate(sampler, [PROMPTS[0]], temperature=0.0, max_new_tokens=8)
    assert result.token_ids == reference[: reference.index(reference[3]) + 1]
    assert result.finish_reason == "stop"


def test_stop_strings_cut_after_the_completing_token(policy, qwen_tokenizer):
    sampler = make_sampler(policy, tokenizer=qwen_tokenizer)
    reference = greedy_reference(policy, PROMPTS[2], 16)
    text = qwen_tokenizer.decode(reference)
    stop = text[len(qwen_tokenizer.decode(reference[:6])) :][:2]
    cut = next(k for k in range(1, 17) if stop in qwen_tokenizer.decode(reference[:k]))
    [result] = generate(sampler, [PROMPTS[2]], temperature=0.0, max_new_tokens=16, stop=(stop,))
    assert result.token_ids == reference[:cut] and result.finish_reason == "stop"


def test_context_limit_caps_new_tokens(sampler):
    prompt = list(range(1, 121))  # max_seq_len 128
    [result] = generate(sampler, [prompt], max_new_tokens=50, seed=0)
    assert len(result.token_ids) == 8 and result.finish_reason == "length"
    [empty] = generate(sampler, [list(range(1, 129))], max_new_tokens=5)
    assert empty.token_ids == [] and empty.finish_reason == "length"


def test_prompts_in_one_length_bucket_share_one_prefill_compilation(policy):
    sampler = make_sampler(policy.replace(), min_prefill_bucket=64)  # a policy not compiled for
    before = _prefill._cache_size()
    for length in (3, 20, 64):
        [result] = generate(sampler, [list(range(1, length + 1))], max_new_tokens=1, seed=0)
        assert len(result.token_ids) == 1
    assert _prefill._cache_size() == before + 1


def test_update_params_samples_from_the_new_policy_without_recompiling(policy):
    other = init_policy(ModelConfig.tiny(vocab_size=512), seed=1)
    sampler = make_sampler(policy)
    generate(sampler, [PROMPTS[0]], temperature=0.0, max_new_tokens=6)
    compiled = _decode._cache_size()
    sampler.update_params(other.params)
    [result] = generate(sampler, [PROMPTS[0]], temperature=0.0, max_new_tokens=6)
    assert result.token_ids == greedy_reference(other, PROMPTS[0], 6)
    assert _decode._cache_size() == compiled


def test_top_k_and_top_p_keep_the_right_tokens():
    logp = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    kept = np.isfinite(np.asarray(truncate_logprobs(logp, jnp.asarray([1.0, 0.6]),
                                                    jnp.asarray([2, -1]))))  # fmt: skip
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]


def nucleus_reference(logp: np.ndarray, top_p: float, top_k: int) -> np.ndarray:
    """Which entries of one row survive top-k and top-p, by sorting (float64 mass)."""
    order = np.sort(logp)[::-1]
    kth = order[min(top_k, len(order)) - 1] if top_k > 0 else order[-1]
    mass = np.cumsum(np.exp(order.astype(np.float64)))
    pth = order[np.argmax(mass >= top_p)] if top_p < 1 else order[-1]
    return logp >= max(kth, pth)


def test_truncation_keeps_exactly_the_sorted_nucleus():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 4.0, (32, 1))
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(rng.normal(size=(32, 3000)) * scale), -1))
    top_p = rng.choice([1.0, 0.3, 0.5, 0.9, 0.95], 32).astype(np.float32)
    top_k = rng.choice([-1, 1, 5, 50, 1000], 32).astype(np.int32)
    kept = np.isfinite(np.asarray(truncate_logprobs(jnp.asarray(logp), top_p, top_k)))
    for row in range(32):
        assert (kept[row] == nucleus_reference(logp[row], top_p[row], top_k[row])).all()


def test_top_k_one_is_greedy(sampler, policy):
    [result] = generate(sampler, [PROMPTS[1]], temperature=1.0, top_k=1, max_new_tokens=8, seed=3)
    assert result.token_ids == greedy_reference(policy, PROMPTS[1], 8)


def test_an_abandoned_rollout_leaves_the_sampler_usable(sampler, policy):
    """asyncio.run ends (timeout) in the middle of a decode call; the next loop still works."""

    async def abandoned():
        request = sampler.generate([PROMPTS[1]], SamplingParams(max_new_tokens=80, seed=0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request, 0.2)

    asyncio.run(abandoned())
    [result] = generate(sampler, [PROMPTS[0]], temperature=0.0, max_new_tokens=6)
    assert result.token_ids == greedy_reference(policy, PROMPTS[0], 6)
