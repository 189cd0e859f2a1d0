"""Real rollouts: the agent driving JaxSampler on a tiny random policy with the real Qwen2.5
tokenizer and vocabulary, tools on loopback. A random policy never closes its turn, so each
trajectory is one sampled turn cut at max_new_tokens; the multi-turn token bookkeeping is
specified in test_agent.py."""

import asyncio

import numpy as np
import pytest

from dr_jax.models import ModelConfig, init_policy
from dr_jax.rollout import Agent, AgentConfig, JaxSampler, SamplingParams
from dr_jax.rollout.prompts import default_prompt
from dr_jax.rollout.sampler import policy_logprobs
from dr_jax.runtime import start_world_tools
from dr_jax.tools import ToolsConfig
from dr_jax.world import World

TODAY = "2026-01-02"
QUESTIONS = ["Who built the Fazarn bridge?", "When was Rocev founded?"]
CONFIG = AgentConfig(
    today=TODAY,
    max_context_tokens=1024,
    sampling=SamplingParams(temperature=1.0, max_new_tokens=20),
)


@pytest.fixture(scope="module")
def policy():
    return init_policy(ModelConfig.tiny(), seed=0)


@pytest.fixture(scope="module")
def rollouts(policy, qwen_tokenizer):
    """Two rollouts with seed 0 and one with seed 1, by one sampler (4 slots, 6 trajectories)."""
    ends = qwen_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    sampler = JaxSampler(policy, eos_token_ids=ends, max_batch_size=4, max_seq_len=1024)
    tools_config = ToolsConfig(extract_workers=0, retries=0)

    async def main():
        async with start_world_tools(tools_config, world=World.generate(0, "tiny")) as tools:
            agent = Agent(sampler, qwen_tokenizer, tools, CONFIG)
            return [await agent.rollout(QUESTIONS, n_samples=3, seed=s) for s in (0, 0, 1)]

    return asyncio.run(main())


def test_prompt_plus_response_decodes_to_the_conversation(rollouts, qwen_tokenizer):
    template = default_prompt()
    for traj in rollouts[0]:
        sampled = qwen_tokenizer.decode(traj.response_ids)
        expected = template.prompt_text(qwen_tokenizer, traj.question, TODAY) + sampled
        assert qwen_tokenizer.decode(traj.prompt_ids + traj.response_ids) == expected
        assert traj.prompt_ids == template.prompt_ids(qwen_tokenizer, traj.question, TODAY)


def test_loss_mask_covers_exactly_the_sampled_tokens(rollouts):
    for traj in rollouts[0]:
        assert traj.finish_reason == "length" and traj.num_turns == 1
        assert len(traj.response_ids) == 20
        assert traj.loss_mask == [1] * 20 and len(traj.sampler_logprobs) == 20


def test_sampler_logprobs_equal_the_policys_token_logprobs(rollouts, policy):
    for traj in rollouts[0]:
        trainer = policy_logprobs(policy, traj.prompt_ids + traj.response_ids, temperature=1.0)
        mask = np.asarray(traj.loss_mask, bool)
        sampled = trainer[len(traj.prompt_ids) :][mask]
        assert np.max(np.abs(sampled - np.asarray(traj.sampler_logprobs)[mask])) <= 1e-4


def test_same_seed_same_trajectories_and_groups(rollouts):
    first, again, other = rollouts
    assert [t.response_ids for t in first] == [t.response_ids for t in again]
    for a, b in zip(first, again, strict=True):
        assert a.sampler_logprobs == pytest.approx(b.sampler_logprobs, abs=1e-5)
    assert all(a.response_ids != b.response_ids for a, b in zip(first, other, strict=True))
    assert [t.group_id for t in first] == [0, 0, 0, 1, 1, 1]
    assert len({tuple(t.response_ids) for t in first}) == 6  # samples of a group differ
