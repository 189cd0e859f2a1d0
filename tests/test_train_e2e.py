"""GRPO end to end on CPU: the world on loopback, the real tokenizer, a tiny policy.

- two steps (after a short warm start), a checkpoint, then the same run resumed for one more;
- a checkpoint directory of another configuration is refused, naming what differs;
- a search outage mid-run becomes an observation in the trajectory, and the step completes;
- one step on 8 simulated devices (mesh 2x4) equals the 1-device step.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax.config import SamplerConfig
from dr_jax.data import DataIterator
from dr_jax.rollout import Agent, AgentConfig, SampleResult, SamplingParams
from dr_jax.tools import ToolExecutor, ToolsConfig
from dr_jax.train.checkpoint import Checkpointer
from dr_jax.train.config import DataConfig, GRPOConfig, SFTConfig, TrainConfig
from dr_jax.train.grpo import GRPOLoop
from dr_jax.train.metrics import MetricsConfig, MetricsWriter, read_jsonl
from dr_jax.train.optim import OptimConfig
from dr_jax.train.run import load_questions, train
from dr_jax.train.state import TrainState
from dr_jax.train.step import Learner, LossConfig
from dr_jax.world import World, WorldServer

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(run_dir: Path, **changes) -> TrainConfig:
    """Seconds-scale settings: 2 questions x 2 rollouts, 8-token turns, KL on (ref pass runs)."""
    config = TrainConfig(
        run_dir=str(run_dir),
        sampler=SamplerConfig(max_new_tokens=8, max_batch_size=8, max_seq_len=1024),
        tools=ToolsConfig(top_k=2, max_queries=1, window_chars=1200, page_budget=1,
                          extract_workers=0),
        optim=OptimConfig(lr=1e-3),
        loss=LossConfig(kl_coef=0.001, entropy_coef=0.001),
        grpo=GRPOConfig(steps=2, questions_per_step=2, group_size=2, pad_multiple=128,
                        logprob_chunk=128, validate_every=0, validate_at_start=False,
                        val_questions=2),
        sft=SFTConfig(steps=2, batch_size=1, num_traces=2, warmup_steps=1),
        data=DataConfig(world_size="tiny", data_sources=("world_1hop",)),
        metrics=MetricsConfig(progress_bar=False, samples_per_step=1),
        max_turns=3,
    )  # fmt: skip
    return config.replace(**changes)


def test_two_steps_checkpoint_resume_one_more_step(tmp_path):
    config = tiny_config(tmp_path)
    asyncio.run(train(config))
    assert (tmp_path / "warm_start" / "config.json").is_file()
    assert "sft/nll" in read_jsonl(tmp_path / "sft" / "metrics.jsonl")[0]
    first = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in first] == [1, 2]

    longer = config.replace(grpo=config.grpo.__class__(**{**vars(config.grpo), "steps": 3}))
    last = asyncio.run(train(longer))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[:2] == first, "resuming leaves the earlier steps' records alone"
    assert "val/reward" in last, "the last step validates"
    assert 0.0 <= last["val/em"] <= last["val/f1"]
    assert len(list((tmp_path / "sft").glob("metrics.jsonl"))) == 1
    sft_runs = [r for r in read_jsonl(tmp_path / "sft" / "metrics.jsonl") if "time/sft" in r]
    assert len(sft_runs) == 1, "the resumed run reuses the warm start instead of redoing it"

    # the data position continued: steps 1-3 saw the iterator's first three batches, in order
    train_examples, _ = load_questions(config.data, World.generate(0, "tiny"))
    expected = DataIterator(train_examples, 2, seed=0)
    for record in records:
        assert record["data/question_ids"] == [e.id for e in expected.next_batch()]
    for key in ("loss/grad_norm", "loss/kl_loss", "loss/entropy", "train/logprob_gap",
                "time/rollout", "time/update", "perf/learner_tokens_per_s"):  # fmt: skip
        assert np.isfinite(records[-1][key]), key
    [sample, *val_samples] = read_jsonl(tmp_path / "samples" / "step_000003.jsonl")
    assert sample["step"] == 3 and sample["split"] == "train"
    assert sample["messages"][0]["role"] == "assistant" and sample["gold"]
    assert [s["split"] for s in val_samples] == ["dev"], "the last step's validation too"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    exported_and_reused(tmp_path, config)
    page = (tmp_path / "report.html").read_text()
    # written at the end: a training rollout per step, a validation one at steps 2 and 3
    assert page.count('class="traj"') == 3 + 2 and "<svg" in page


def exported_and_reused(run_dir: Path, config: TrainConfig) -> None:
    """The run's checkpoints export to HF directories (weights, tokenizer, chat template);
    --policy.path RUN_DIR loads the latest; the warm start is complete as it is."""
    from dr_jax.config import PolicyConfig
    from dr_jax.models import load_pretrained
    from dr_jax.models.tokenizer import load_tokenizer
    from dr_jax.runtime import build_policy, build_tokenizer
    from dr_jax.train.export import export_run

    out = export_run(run_dir, run_dir / "step2", step=2)
    with Checkpointer(run_dir / "checkpoints", fingerprint=config.fingerprint()) as ckpt:
        template = Learner(load_pretrained(out), OptimConfig(lr=1e-3)).init_state()
        saved, _ = ckpt.restore(template, step=2)
    exported = load_pretrained(out)
    for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(saved.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (
        load_tokenizer(out).chat_template and (run_dir / "warm_start" / "tokenizer.json").exists()
    )
    latest = build_policy(PolicyConfig(path=str(run_dir)))
    assert (run_dir / "export" / "step_3" / "config.json").is_file()
    assert len(build_tokenizer(PolicyConfig(path=str(run_dir)))) == len(load_tokenizer(out))
    assert not np.array_equal(np.asarray(jax.tree.leaves(latest.params)[0]),
                              np.asarray(jax.tree.leaves(exported.params)[0]))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"saved steps: \[1, 2, 3\]"):
        export_run(run_dir, run_dir / "nope", step=99)
    bare = run_dir / "bare"
    bare.mkdir()
    shutil.copy(out / "config.json", bare / "config.json")
    with pytest.raises(ValueError, match="tokenizer"):
        load_tokenizer(bare)


def test_a_checkpoint_directory_of_another_config_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    with Checkpointer(tmp_path / "checkpoints", fingerprint=config.fingerprint()) as ckpt:
        ckpt.save(TrainState(params={}, opt_state={}, step=jnp.int32(1)))
    other = config.replace(optim=OptimConfig(lr=5e-4))
    with pytest.raises(ValueError, match=r"another configuration.*optim"):
        asyncio.run(train(other))


def test_a_failed_start_leaves_the_directory_to_the_corrected_command(tmp_path):
    """A typo in --policy.path fails before any checkpoint: nothing ties the directory to it."""
    from dr_jax.config import PolicyConfig

    typo = tiny_config(tmp_path, policy=PolicyConfig(path=str(tmp_path / "no-such-model")))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        asyncio.run(train(typo))
    assert not (tmp_path / "checkpoints" / "fingerprint.json").exists()
    Checkpointer(tmp_path / "checkpoints", fingerprint=tiny_config(tmp_path).fingerprint()).close()


class ScriptedSampler:
    """A Sampler whose every conversation searches once and then answers "unknown"."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    async def generate(self, prompts, params: SamplingParams) -> list[SampleResult]:
        out = []
        for prompt in prompts:
            searched = "<tool_response>" in self.tokenizer.decode(prompt)
            text = (
                "ok</think>\n<answer>unknown</answer><|im_end|>"
                if searched
                else 'go</think>\n<tool_call>\n{"name": "web_search", "arguments": '
                '{"query": ["x"]}}\n</tool_call><|im_end|>'
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(SampleResult(ids, [-1.0] * len(ids), "stop"))
        return out


def scripted_step(tmp_path, sampler, learner, *, outage: bool = False, **grpo) -> tuple:
    """One GRPO step of 2 questions against the tiny world, sampled by `sampler`; `outage`:
    the search backend goes away after start-up. Returns (record, sample records)."""
    world = World.generate(0, "tiny")
    server = WorldServer(world).start()
    cfg = ToolsConfig(search_url=server.url, allow_hosts=(urlsplit(server.url).netloc,), retries=0,
                      extract_workers=0)  # fmt: skip
    train_examples, _ = load_questions(DataConfig(world_size="tiny"), world)
    config = GRPOConfig(steps=1, questions_per_step=2, validate_at_start=False, pad_multiple=128,
                        **grpo)  # fmt: skip
    rows = config.questions_per_step * config.group_size

    async def run():
        async with ToolExecutor(cfg) as tools:
            if outage:
                server.stop()
            agent = Agent(sampler, sampler.tokenizer, tools, AgentConfig())
            loop = GRPOLoop(
                config, learner=learner, agent=agent, val_agent=agent,
                train_data=DataIterator(train_examples, 2), dev_examples=[],
                checkpointer=Checkpointer(tmp_path / "ckpt"),
                metrics=MetricsWriter(tmp_path, MetricsConfig(progress_bar=False),
                                      total_steps=1),
                sync=_no_sync, ref_params=None, pad_id=0, samples_per_step=rows,
            )  # fmt: skip
            return await loop.step(learner.init_state(), 1)

    try:
        _, record, samples = asyncio.run(run())
    finally:
        server.stop()
    return record, samples


def test_a_search_outage_becomes_an_observation_and_the_step_completes(tmp_path, qwen_tokenizer):
    from dr_jax.models import ModelConfig, init_policy

    learner = Learner(init_policy(ModelConfig.tiny(), seed=0), OptimConfig(lr=1e-3),
                      LossConfig(kl_coef=0.0), logprob_chunk=128)  # fmt: skip
    record, samples = scripted_step(tmp_path, ScriptedSampler(qwen_tokenizer), learner,
                                    outage=True, group_size=2)  # fmt: skip
    assert record["train/tool_calls_mean"] == 1.0
    assert record["train/reward"] == 0.0, "well-formed answers score F1 0, not a crash"
    errors = {k: v for k, v in record.items() if k.startswith("tools/errors/")}
    assert sum(errors.values()) == 4, errors
    assert len(samples) == 4
    [_, observation, answer] = samples[0]["messages"]
    assert observation["role"] == "tool" and "error" in observation["content"].lower()
    assert answer == {"role": "assistant", "content": "<think>ok</think>\n<answer>unknown</answer>"
                      "<|im_end|>"}  # fmt: skip


async def _no_sync(params, step) -> None:
    return None


STEP_SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, {tests!r})
from test_train_e2e import tiny_config
from dr_jax.train.run import train
from pathlib import Path
config = tiny_config(Path(sys.argv[1]), mesh=sys.argv[2])
config = config.replace(sft=config.sft.__class__(steps=0),
                        grpo=config.grpo.__class__(**{{**vars(config.grpo), "steps": 1}}))
record = asyncio.run(train(config))
print("RECORD" + json.dumps({{k: v for k, v in record.items() if isinstance(v, float)}}))
"""


def _run_step(run_dir: Path, mesh: str, devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    script = STEP_SCRIPT.format(tests=str(ROOT / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", script, str(run_dir), mesh],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RECORD"))
    return json.loads(line.removeprefix("RECORD"))


@pytest.mark.slow  # two fresh processes, each compiling sampler and learner (~2-8 min on 2 cores)
def test_a_step_on_8_devices_mesh_2x4_equals_the_1_device_step(tmp_path):
    one = _run_step(tmp_path / "one", "auto", 1)
    eight = _run_step(tmp_path / "eight", "2x4", 8)
    assert one["train/response_tokens_mean"] == eight["train/response_tokens_mean"]
    for key in ("train/reward", "loss/loss", "loss/entropy", "loss/kl_loss", "loss/grad_norm"):
        assert eight[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
