"""launch/train.py: the presets a user picks by name, and flags over them."""

import importlib.util
from pathlib import Path

import pytest

from dr_jax.config import TINY
from dr_jax.train.config import SMOLLM2

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
