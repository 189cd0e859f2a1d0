"""HF checkpoints in and out: transformers -> dr_jax -> transformers keeps the model exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from models_reference import hf_logits, left_padded_batch, random_hf_model, save_hf

from dr_jax.models import load_pretrained, save_pretrained
from dr_jax.models.safetensors_io import read_safetensors, write_safetensors

TOKENS, MASK = left_padded_batch(256, [5, 9, 2])


def _flat(params) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}


def _reference_logits(directory: Path) -> np.ndarray:
    """transformers' logits of the checkpoint in `directory` (same attention kernel as the
    reference model, so equal weights give bit-equal logits)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    return hf_logits(model.eval(), TOKENS, MASK)


@pytest.fixture(scope="module", params=["qwen2-mha-tied", "qwen3-headdim24-gqa2"])
def hf_dir(request, tmp_path_factory) -> tuple[transformers.PreTrainedModel, Path]:
    model = random_hf_model(request.param)
    return model, save_hf(model, tmp_path_factory.mktemp(request.param) / "hf")


def test_transformers_dr_jax_transformers_round_trip_keeps_logits(hf_dir, tmp_path):
    model, directory = hf_dir
    saved = save_pretrained(load_pretrained(directory), tmp_path / "ours")
    np.testing.assert_array_equal(_reference_logits(saved), hf_logits(model, TOKENS, MASK))
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]


def test_sharded_transformers_checkpoint_loads_like_a_single_file(hf_dir, tmp_path):
    model, directory = hf_dir
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    sharded = _flat(load_pretrained(tmp_path).params)
    single = _flat(load_pretrained(directory).params)
    assert sharded.keys() == single.keys()
    for key, value in single.items():
        np.testing.assert_array_equal(sharded[key], value, err_msg=str(key))


def test_sharded_save_is_read_back_by_transformers(hf_dir, tmp_path):
    model, directory = hf_dir
    save_pretrained(load_pretrained(directory), tmp_path, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    np.testing.assert_array_equal(_reference_logits(tmp_path), hf_logits(model, TOKENS, MASK))


def test_bf16_save_writes_bf16_tensors_that_load_back_as_f32_params(hf_dir, tmp_path):
    _, directory = hf_dir
    policy = load_pretrained(directory)
    save_pretrained(policy, tmp_path, dtype=jnp.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    tensors = read_safetensors(tmp_path / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {np.dtype(ml_dtypes.bfloat16)}
    reloaded = _flat(load_pretrained(tmp_path).params)
    for key, value in _flat(policy.params).items():
        assert reloaded[key].dtype == np.float32
        rounded = value.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(reloaded[key], rounded, err_msg=str(key))
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.dtype == torch.bfloat16


def test_missing_directory_names_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/config\.json"):
        load_pretrained(tmp_path / "nowhere")


def test_missing_weights_name_the_directory(hf_dir, tmp_path):
    _, directory = hf_dir
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_pretrained(tmp_path)


def test_unknown_architecture_names_config_json(hf_dir, tmp_path):
    _, directory = hf_dir
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*mistral"):
        load_pretrained(tmp_path)


def test_shape_mismatch_names_the_file_and_tensor(hf_dir, tmp_path):
    _, directory = hf_dir
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] += 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.0\.mlp"):
        load_pretrained(tmp_path)


def test_missing_tensor_is_named(hf_dir, tmp_path):
    _, directory = hf_dir
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    tensors = read_safetensors(directory / "model.safetensors")
    kept = [
        (name, t.shape, t.dtype, lambda t=t: t)
        for name, t in tensors.items()
        if name != "model.norm.weight"
    ]
    write_safetensors(tmp_path / "model.safetensors", kept)
    with pytest.raises(ValueError, match=r"model\.norm\.weight is missing"):
        load_pretrained(tmp_path)


def test_truncated_file_is_named(hf_dir, tmp_path):
    _, directory = hf_dir
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    data = (directory / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .*truncated"):
        load_pretrained(tmp_path)


_MESH_SCRIPT = """
import numpy as np
from flax import nnx
from dr_jax.models import ModelConfig, init_policy, load_pretrained
from dr_jax.sharding import make_mesh

mesh = make_mesh("2x2")
policy = load_pretrained({directory!r}, mesh=mesh)
q = policy.params["layers"]["attn"]["q_proj"]["kernel"].get_value()
assert tuple(q.sharding.spec) == (None, "fsdp", "tp", None), q.sharding.spec
assert len(q.addressable_shards) == 4 and q.addressable_shards[0].data.shape[1:3] == (32, 2)
single = load_pretrained({directory!r})
for (path, a), (_, b) in zip(nnx.to_flat_state(policy.params), nnx.to_flat_state(single.params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(path))
init = init_policy(ModelConfig.tiny(vocab_size=256), mesh=mesh)
emb = init.params["embed"].get_value()
assert tuple(emb.sharding.spec) == ("tp", "fsdp"), emb.sharding.spec
print("ok")
"""


def test_load_on_a_mesh_places_each_shard_and_keeps_values(tmp_path):
    """On 4 simulated devices (fsdp=2, tp=2) every parameter lands on its logical sharding,
    holding the same values as a single-device load."""
    directory = save_hf(random_hf_model("qwen3-headdim24-gqa2"), tmp_path)
    script = textwrap.dedent(_MESH_SCRIPT).format(directory=str(directory))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_saved_directory_carries_the_tokenizer(qwen_tokenizer, tmp_path):
    directory = save_hf(random_hf_model("qwen2-mha-tied"), tmp_path / "hf")
    save_pretrained(load_pretrained(directory), tmp_path / "ours", tokenizer=qwen_tokenizer)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    text = "<|im_start|>user\nWho wrote Dune?<|im_end|>"
    assert loaded.encode(text) == qwen_tokenizer.encode(text)
    assert loaded.chat_template == qwen_tokenizer.chat_template


def test_resaving_into_a_directory_leaves_no_stale_shards(hf_dir, tmp_path):
    model, directory = hf_dir
    policy = load_pretrained(directory)
    save_pretrained(policy, tmp_path, max_shard_bytes=50_000)
    save_pretrained(policy, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    np.testing.assert_array_equal(_reference_logits(tmp_path), hf_logits(model, TOKENS, MASK))


def test_config_without_a_required_field_names_it(hf_dir, tmp_path):
    _, directory = hf_dir
    config = json.loads((directory / "config.json").read_text())
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: required field 'hidden_size'"):
        load_pretrained(tmp_path)


def test_shard_listed_in_the_index_but_absent_is_named(hf_dir, tmp_path):
    model, _ = hf_dir
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    missing = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=missing.name):
        load_pretrained(tmp_path)
