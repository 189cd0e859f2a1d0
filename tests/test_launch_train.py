"""launch/train.py: the presets a user picks by name, and flags over them."""

import importlib.util
from pathlib import Path

import pytest

from dr_jax.config import TINY
from dr_jax.train.config import SMOLLM2
from dr_jax.train.run import build_agents

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def launcher():
    spec = importlib.util.spec_from_file_location("launch_train", ROOT / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_flags_train_smollm2_with_the_compact_prompt(launcher):
    config, topology = launcher.parse([])
    assert topology is None
    assert config.policy.path == SMOLLM2 and config.prompt.style == "compact"
    assert config.loss.temperature == config.sampler.temperature
    assert config.grpo.val_questions >= 48 and config.grpo.validate_at_start
    assert config.sft.steps > 0, "the untuned model breaks the turn format: warm start first"


def test_smoke_preset_is_the_tiny_random_policy_and_flags_override_it(launcher):
    config, _ = launcher.parse(["--preset", "smoke", "--grpo.steps", "2"])
    assert config.policy.path == TINY and config.prompt.style == "full"
    assert config.grpo.steps == 2
    assert config.fingerprint() != launcher.parse([])[0].fingerprint()


def test_an_unknown_preset_is_refused_with_the_choices(launcher, capsys):
    with pytest.raises(SystemExit):
        launcher.parse(["--preset", "huge"])
    assert "smoke" in capsys.readouterr().err


def test_every_sglang_setting_is_a_flag(launcher):
    from dr_jax.rollout import SGLangSampler
    from dr_jax.runtime import build_sampler

    config, _ = launcher.parse([
        "--preset", "smoke", "--sampler.kind", "sglang",
        "--sampler.sglang.engines", "http://e1:30000", "http://e2:30000",
        "--sampler.sglang.router", "http://router:30000", "--sampler.sglang.timeout", "30",
        "--sampler.sglang.retries", "1", "--sampler.sglang.backoff", "0.1",
        "--sampler.sglang.max-connections", "64", "--sampler.sglang.pause-mode", "retract",
        "--sampler.sglang.sync-timeout", "90",
    ])  # fmt: skip
    sampler = build_sampler(config.sampler, None, tokenizer=None)
    assert isinstance(sampler, SGLangSampler)
    assert sampler.engines == ["http://e1:30000", "http://e2:30000"]
    sglang = sampler.config
    assert (sglang.router, sglang.timeout, sglang.retries, sglang.backoff) == (
        "http://router:30000", 30.0, 1, 0.1)  # fmt: skip
    assert (sglang.max_connections, sglang.pause_mode, sglang.sync_timeout) == (64, "retract", 90)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--sampler.sglang.engines", "e1:30000"], "--sampler.sglang.engines"),
        (["--sampler.sglang.retries", "-1"], "--sampler.sglang.retries"),
        (["--sampler.sglang.pause-mode", "stop"], "pause-mode"),
    ],
)
def test_a_bad_sglang_flag_is_refused_naming_it(launcher, flags, says, capsys):
    with pytest.raises((ValueError, SystemExit)) as error:
        launcher.parse(["--preset", "smoke", *flags])
    assert says in str(error.value) + capsys.readouterr().err


def test_the_observation_cut_is_a_flag_that_reaches_both_agents(launcher, qwen_tokenizer, capsys):
    config, _ = launcher.parse(["--preset", "smoke", "--max-observation-chars", "500"])
    agents = build_agents(config, sampler=None, tokenizer=qwen_tokenizer, tools=None)
    assert [agent.config.max_observation_chars for agent in agents] == [500, 500]
    with pytest.raises((ValueError, SystemExit)) as error:
        launcher.parse(["--preset", "smoke", "--max-observation-chars", "0"])
    assert "--max-observation-chars must be >= 1" in str(error.value) + capsys.readouterr().err
