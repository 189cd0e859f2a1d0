"""GRPO loop pieces: rewards of trajectories, importance weights, SFT sequences, configs."""

import asyncio
import re
from urllib.parse import urlsplit

import numpy as np
import pytest

from dr_jax.config import SamplerConfig
from dr_jax.rollout import Trajectory
from dr_jax.rollout.prompts import default_prompt
from dr_jax.tools import ToolExecutor, ToolsConfig
from dr_jax.train.config import GRPOConfig, SFTConfig, TrainConfig, deepresearcher_preset
from dr_jax.train.grpo import (
    logprob_gap,
    reward_metrics,
    rollout_seed,
    score_trajectories,
    truncated_is_weights,
)
from dr_jax.train.sft import demonstration_ids, solve_questions
from dr_jax.train.step import LossConfig
from dr_jax.world import World, WorldServer


def _trajectory(group: int, text: str) -> Trajectory:
    return Trajectory(question="q", group_id=group, sample_index=0, prompt_ids=[1], text=text)


def test_rewards_score_the_whole_response_against_the_trajectorys_question():
    trajectories = [
        _trajectory(0, "<think>x</think>\n<answer>Rialto Bridge</answer>"),
        _trajectory(1, "<think>x</think>\n<answer>Rialto Bridge</answer>"),
        _trajectory(1, "<think>x\n<answer>Paris</answer>"),  # unclosed think: format error
    ]
    rewards = score_trajectories(trajectories, [["Rialto Bridge"], ["Paris"]])
    np.testing.assert_allclose(rewards, [1.0, 0.0, -1.0])
    metrics = reward_metrics(rewards, "train")
    assert metrics["train/format_error_rate"] == pytest.approx(1 / 3)
    assert metrics["train/f1"] == pytest.approx(1 / 3)


def test_truncated_importance_weights_are_capped_and_only_on_sampled_tokens():
    old = np.log(np.array([[0.5, 0.9, 0.2, 0.3]], np.float32))
    sampler = np.log(np.array([[0.5, 0.3, 0.4, 0.3]], np.float32))
    mask = np.array([[1, 1, 1, 0]], np.float32)
    w = truncated_is_weights(old, sampler, mask, cap=2.0)
    np.testing.assert_allclose(w, [[1.0, 2.0, 0.5, 1.0]], rtol=1e-6)
    assert logprob_gap(old, sampler, mask) == pytest.approx(
        (abs(np.log(0.9 / 0.3)) + abs(np.log(0.2 / 0.4))) / 3, rel=1e-5
    )


def test_rollout_seeds_differ_per_step_and_repeat_per_run():
    seeds = [rollout_seed(0, s) for s in range(1, 50)]
    assert len(set(seeds)) == len(seeds)
    assert rollout_seed(3, 7) == rollout_seed(3, 7) != rollout_seed(4, 7)


def test_configs_refuse_inconsistent_batches_with_the_flag_to_fix():
    with pytest.raises(ValueError, match=r"--grpo\.mini-batches"):
        GRPOConfig(questions_per_step=3, group_size=2, mini_batches=4)
    with pytest.raises(ValueError, match=r"--grpo\.micro-batch-size"):
        GRPOConfig(questions_per_step=4, group_size=2, mini_batches=2, micro_batch_size=3)


@pytest.mark.parametrize(
    "build, flag",
    [
        (lambda: GRPOConfig(save_every=0), "--grpo.save-every"),
        (lambda: GRPOConfig(pad_multiple=0), "--grpo.pad-multiple"),
        (lambda: GRPOConfig(val_temperature=-1), "--grpo.val-temperature"),
        (lambda: GRPOConfig(max_infra_failures=2), "--grpo.max-infra-failures"),
        (lambda: SFTConfig(batch_size=0), "--sft.batch-size"),
        (lambda: LossConfig(kl_coef=-1), "--loss.kl-coef"),
        (lambda: LossConfig(clip_low=5), "--loss.clip-low"),
        (lambda: SamplerConfig(max_batch_size=0), "--sampler.max-batch-size"),
    ],
)
def test_numeric_flags_are_checked_when_parsed_naming_the_flag(build, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        build()


def test_lengths_that_leave_the_prompt_no_room_are_refused_before_anything_runs(tmp_path):
    from test_train_e2e import tiny_config

    from dr_jax.train.run import train

    short = tiny_config(tmp_path, sampler=SamplerConfig(max_new_tokens=8, max_seq_len=50))
    with pytest.raises(ValueError, match=r"--sampler\.max-seq-len 50 leaves no room"):
        asyncio.run(train(short))
    assert not (tmp_path / "checkpoints" / "fingerprint.json").exists()


def test_deepresearcher_preset_has_the_papers_hyperparameters():
    cfg = deepresearcher_preset()
    assert (cfg.grpo.questions_per_step, cfg.grpo.group_size) == (256, 16)
    assert (cfg.grpo.mini_batches, cfg.grpo.epochs) == (1, 1)
    assert cfg.optim.lr == 1e-6 and cfg.optim.weight_decay == 0.01
    assert cfg.optim.max_grad_norm == 1.0
    assert (cfg.loss.kl_coef, cfg.loss.kl_kind, cfg.loss.entropy_coef) == (0.001, "k3", 0.001)
    assert cfg.loss.clip_low == cfg.loss.clip_high == 0.2
    assert cfg.sampler.temperature == 1.0 and cfg.sampler.max_new_tokens == 2000
    assert cfg.max_turns == 10 and cfg.tools.search_backend == "serper"
    assert TrainConfig().fingerprint() != cfg.fingerprint()


def test_sft_sequence_is_the_chat_templates_rendering_with_only_assistant_tokens_trained(
    qwen_tokenizer,
):
    """The oracle's trace starts with the agent's own prompt ids, reads as the chat template's
    rendering of the conversation, and trains exactly the assistant turns + their <|im_end|>.

    (Ids after the prompt come from encoding each turn on its own, as a policy samples them,
    so they need not equal a joint re-tokenization of the rendered text.)"""
    world = World.generate(seed=0, size="tiny")
    question = next(q for q in world.split("train") if q.data_source == "world_1hop")

    async def solve():
        with WorldServer(world) as server:
            cfg = ToolsConfig(
                search_url=server.url, allow_hosts=(urlsplit(server.url).netloc,), extract_workers=0
            )
            async with ToolExecutor(cfg) as tools:
                return await solve_questions([question], tools, server.url, max_turns=4)

    [demo] = asyncio.run(solve())
    template = default_prompt()
    prompt, response, mask = demonstration_ids(
        demo, template, qwen_tokenizer, today="2025-04-01", end_of_turn="<|im_end|>"
    )
    messages = template.messages(question.question, "2025-04-01")
    for text, observation in demo.turns:
        messages.append({"role": "assistant", "content": text})
        if observation is not None:
            messages.append({"role": "tool", "content": observation})
    rendered = template.render(qwen_tokenizer, messages, add_generation_prompt=False)
    assert prompt == template.prompt_ids(qwen_tokenizer, question.question, today="2025-04-01")
    # the template ends the last assistant turn with "<|im_end|>\n"; a rollout stops at <|im_end|>
    assert qwen_tokenizer.decode(prompt + response) == rendered.removesuffix("\n")

    trained = qwen_tokenizer.decode([t for t, m in zip(response, mask, strict=True) if m])
    assistant = [text.removeprefix("<think>") + "<|im_end|>" for text, _ in demo.turns]
    assert trained == "".join(assistant)
