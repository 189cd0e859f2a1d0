"""Trajectories ended by the infrastructure (sampler errors, aborts) are not the policy's
failures: they are left out of the loss and of their group's statistics, counted per step, and a
step that loses too many of them stops the run with a clear error."""

import numpy as np
import pytest
from test_train_e2e import ScriptedSampler, scripted_step

from dr_jax import losses
from dr_jax.models import ModelConfig, init_policy
from dr_jax.rollout import SampleResult
from dr_jax.train.grpo import InfraFailure
from dr_jax.train.optim import OptimConfig
from dr_jax.train.step import Learner, LossConfig


class SecondTurnOutage(ScriptedSampler):
    """ScriptedSampler (search, then answer "unknown") whose first `failures` second-turn
    requests raise, as a server outage would, after each trajectory sampled its first turn;
    every other second turn breaks the format (reward -1), so groups have mixed rewards."""

    def __init__(self, tokenizer, failures: int) -> None:
        super().__init__(tokenizer)
        self.failures, self.second_turns = failures, 0

    async def generate(self, prompts, params):
        [prompt] = prompts
        if "<tool_response>" not in self.tokenizer.decode(prompt):
            return await super().generate(prompts, params)
        self.second_turns += 1
        if self.second_turns <= self.failures:
            raise ConnectionError("sampler unreachable")
        if self.second_turns % 2:
            ids = self.tokenizer.encode("no tags at all<|im_end|>", add_special_tokens=False)
            return [SampleResult(ids, [-1.0] * len(ids), "stop")]
        return await super().generate(prompts, params)


class Recorded(Learner):
    """The learner, keeping the batches it was given."""

    batches: list

    def train_step(self, state, batch):
        self.batches.append(batch)
        return super().train_step(state, batch)


def one_step(tmp_path, tokenizer, failures: int, max_share: float = 0.25):
    learner = Recorded(init_policy(ModelConfig.tiny(), seed=0), OptimConfig(lr=1e-3),
                       LossConfig(kl_coef=0.0), logprob_chunk=128)  # fmt: skip
    learner.batches = []
    record, samples = scripted_step(tmp_path, SecondTurnOutage(tokenizer, failures), learner,
                                    group_size=4, max_infra_failures=max_share)  # fmt: skip
    return record, samples, learner.batches


def test_lost_trajectories_leave_the_loss_and_the_group_statistics(tmp_path, qwen_tokenizer):
    record, samples, [batch] = one_step(tmp_path, qwen_tokenizer, failures=2)
    lost = np.array([s["finish_reason"] == "sampler_error" for s in samples])
    assert lost.sum() == 2 and record["train/infra_failures"] == 2
    assert record["train/finish/sampler_error"] == pytest.approx(2 / 8)
    assert all(s["tokens"] > 0 for s in samples), "the lost ones sampled their first turn"
    mask = np.asarray(batch.loss_mask)
    assert mask[lost].sum() == 0 and (mask[~lost].sum(axis=1) > 0).all()
    # the advantages are those of the six trajectories the policy finished, grouped as sampled
    rewards = np.array([s["reward"] for s in samples], np.float32)
    assert set(rewards[~lost]) == {-1.0, 0.0}
    groups = np.array([0] * 4 + [1] * 4)
    expected = losses.grpo_advantages(rewards[~lost], groups[~lost])
    np.testing.assert_allclose(np.asarray(batch.advantages)[~lost, -1], expected, atol=1e-6)
    assert np.all(np.asarray(batch.advantages)[lost] == 0)
    assert record["train/reward"] == pytest.approx(rewards[~lost].mean()), "the policy's own"
    # the tool executor's step: every trajectory searched once, over real HTTP
    assert record["tools/calls/web_search"] == 8 and record["tools/requests"] >= 1
    assert record["tools/latency_s/web_search/p50"] > 0


def test_a_step_that_loses_too_many_stops_the_run_naming_the_flag(tmp_path, qwen_tokenizer):
    with pytest.raises(InfraFailure, match=r"3 of 8 .*--grpo.max-infra-failures 0.25.*unreachable"):
        one_step(tmp_path, qwen_tokenizer, failures=3)
