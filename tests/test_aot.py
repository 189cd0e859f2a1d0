"""--compile-only: a tiny run's every program compiled for a v5p topology by libtpu's
compile-only client (the `tpu` extra), with the compiler's memory figures."""

import json

import jax
import jax.numpy as jnp
import pytest

from dr_jax import aot
from dr_jax.config import PolicyConfig, SamplerConfig
from dr_jax.train.config import GRPOConfig, TrainConfig

TOPOLOGY = "v5p:2x2x1"  # 4 chips


@pytest.fixture(scope="module")
def device():
    return aot.topology_devices(TOPOLOGY)[0]


def test_tiny_run_compiles_for_v5p_and_fits(capsys):
    config = TrainConfig(
        mesh="2x2",
        policy=PolicyConfig(dtype="bfloat16", remat="full"),  # attention auto: splash on TPU
        sampler=SamplerConfig(temperature=0.5, max_batch_size=4, max_seq_len=256),
        grpo=GRPOConfig(questions_per_step=2, group_size=4, micro_batch_size=4, max_row_tokens=256),
    )
    assert aot.compile_train(config, TOPOLOGY) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["topology"] == TOPOLOGY and record["devices"] == 4 and record["fits"]
    assert record["device_kind"] == "TPU v5"
    assert 90 * 2**30 < record["hbm_bytes"] < 100 * 2**30  # v5p: 95.74 GiB usable
    names = [p["name"] for p in record["programs"]]
    assert names == ["learner step", "log-probs (old, ref)", "sampler prefill", "sampler decode"]
    for program in record["programs"]:
        parts = program["argument_bytes"] + program["output_bytes"] + program["temp_bytes"]
        assert 0 < program["peak_bytes"] <= parts and program["fits"]
        assert program["model_flops"] > 0
    step = record["programs"][0]
    assert step["model_flops"] == pytest.approx(3 * record["programs"][1]["model_flops"])
    assert any(line.startswith("learner step") for line in lines)  # the readable table


def test_a_program_over_budget_does_not_fit(device):
    sharding = jax.sharding.SingleDeviceSharding(device)
    small = jax.jit(lambda x: jnp.sin(x) @ x.T, in_shardings=sharding)
    lower = lambda: small.lower(jax.ShapeDtypeStruct((512, 512), jnp.float32))
    fits = aot.measure("small", lower, hbm=2**40, flops=1.0)
    assert fits.fits and fits.peak_bytes >= 2 * 512 * 512 * 4  # argument + output at least
    tight = aot.measure("small", lower, hbm=fits.peak_bytes, flops=1.0)  # no 10% headroom
    assert not tight.fits and not tight.refused


def test_a_compiler_refusal_is_reported_as_not_fitting(device):
    sharding = jax.sharding.SingleDeviceSharding(device)
    outer = jax.jit(lambda x: jnp.outer(x, x) + 1, in_shardings=sharding)
    lower = lambda: outer.lower(jax.ShapeDtypeStruct((2**18,), jnp.float32))  # 256 GiB
    result = aot.measure("outer", lower, hbm=aot.hbm_bytes(device), flops=1.0)
    assert not result.fits and "exceed" in result.refused
    assert result.peak_bytes == 256 * 2**30  # the compiler's figure


def test_the_config_comes_from_what_policy_path_accepts(tmp_path):
    """A directory needs only its config.json, a .gguf file only its metadata; a directory
    without config.json and a path that names nothing are refused, naming what is accepted."""
    from gguf_files import small_bpe_tokenizer, write_gguf
    from models_reference import random_hf_model

    llama = random_hf_model("llama-gqa2-untied", vocab_size=300)
    llama.config.to_json_file(tmp_path / "config.json")
    from_dir = aot.model_config(PolicyConfig(path=str(tmp_path)))
    spec = small_bpe_tokenizer()
    gguf = write_gguf(tmp_path / "m.gguf", random_hf_model("llama-gqa2-untied",
                      vocab_size=len(spec.tokens)), spec)  # fmt: skip
    from_gguf = aot.model_config(PolicyConfig(path=str(gguf)))
    assert (from_dir.num_layers, from_dir.num_kv_heads) == (from_gguf.num_layers, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        aot.model_config(PolicyConfig(path=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="catalog name or Hub id"):
        aot.model_config(PolicyConfig(path=str(tmp_path / "no" / "such")))
