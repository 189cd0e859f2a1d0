"""Where a GRPO step's rollout time goes: the sampler's busy seconds vs everything else."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from dr_jax.models import ModelConfig, init_policy
from dr_jax.rollout import JaxSampler, SamplingParams
from dr_jax.train.grpo import split_rollout, time_split


def test_jax_sampler_counts_its_device_seconds_within_the_wall_time():
    policy = init_policy(ModelConfig.tiny(vocab_size=512), seed=0)
    sampler = JaxSampler(policy, max_batch_size=2, max_seq_len=64, decode_chunk=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
    asyncio.run(sampler.generate([[1, 2, 3]], params))  # compile
    before = sampler.stats["busy_seconds"]

    async def with_a_tool_wait():
        await sampler.generate([[1, 2, 3]], params)
        await asyncio.sleep(0.3)  # a tool call: the sampler idles

    started = time.perf_counter()
    asyncio.run(with_a_tool_wait())
    wall = time.perf_counter() - started
    busy = sampler.stats["busy_seconds"] - before
    assert 0 < busy < wall - 0.3


def test_rollout_splits_into_sampler_seconds_and_the_rest():
    assert split_rollout(10.0, [], 7.5) == {"sampling": 7.5, "tools": 2.5}
    assert split_rollout(10.0, [], 12.0) == {"sampling": 10.0, "tools": 0.0}


def test_without_a_busy_count_the_trajectories_shares_split_the_wall():
    trajs = [
        SimpleNamespace(timings={"sampling": 3.0, "tools": 1.0}),
        SimpleNamespace(timings={"sampling": 1.0, "tools": 3.0}),
        SimpleNamespace(timings={"sampling": 2.0, "tools": 6.0}),
    ]
    split = split_rollout(8.0, trajs, None)
    assert split["sampling"] == pytest.approx(3.0) and split["tools"] == pytest.approx(5.0)


def test_the_printed_line_names_every_phase_present():
    record = {"time/step": 12.0, "time/sampling": 5.0, "time/tools": 2.0, "time/logprobs": 1.0,
              "time/update": 3.5, "time/sync": 0.5}  # fmt: skip
    line = time_split(4, record)
    assert (
        line == "step 4: 12.0 s = sampling 5.0 + tools 2.0 + log-probs 1.0 + update 3.5 + sync 0.5"
    )
