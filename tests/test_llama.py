"""Llama checkpoints (Llama 2, Llama 3.x with llama3 RoPE scaling, SmolLM2) are the transformers
LlamaForCausalLM model, read and written as HF directories; options we lack are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from models_reference import (
    LLAMA3_SCALING,
    hf_config,
    hf_logits,
    left_padded_batch,
    random_hf_model,
    save_hf,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from dr_jax.models import ModelConfig, load_pretrained, save_pretrained
from dr_jax.models.config import Llama3RopeScaling
from dr_jax.models.rope import rope_frequencies

LLAMAS = ["llama-gqa2-untied", "llama3-scaled-gqa4-tied"]
LENGTHS = [150, 97, 20]  # long enough that every RoPE band turns far


@pytest.fixture(scope="module", params=LLAMAS)
def llama(request, tmp_path_factory):
    model = random_hf_model(request.param)
    directory = save_hf(model, tmp_path_factory.mktemp(request.param))
    return model, directory, load_pretrained(directory)


def test_logits_match_transformers_over_long_left_padded_rows(llama):
    model, _, policy = llama
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS, seed=3)
    ours = np.asarray(policy.logits(tokens, mask))
    ref = hf_logits(model, tokens, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


def test_checkpoint_config_is_read_as_llama(llama):
    _, _, policy = llama
    config = policy.config
    assert config.model_type == "llama" and not config.qkv_bias and not config.qk_norm
    if config.tie_word_embeddings:
        assert config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 64)
        assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 1, 24)
    else:
        assert config.rope_scaling is None


def test_llama3_frequencies_equal_transformers_and_differ_from_plain_rope():
    hf = hf_config("llama3-scaled-gqa4-tied")
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    ours = rope_frequencies(ModelConfig.from_hf(hf.to_dict()))
    assert attention_factor == 1.0
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    plain = rope_frequencies(ModelConfig.from_hf(hf.to_dict()).replace(rope_scaling=None))
    assert (ours < plain * 0.99).sum() >= 3 and (ours == plain).sum() >= 2  # slowed and kept


def test_save_round_trip_through_transformers_keeps_logits(llama, tmp_path):
    model, _, policy = llama
    saved = save_pretrained(policy, tmp_path)
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["mlp_bias"] is False
    again = transformers.AutoModelForCausalLM.from_pretrained(
        saved, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS, seed=4)
    np.testing.assert_array_equal(hf_logits(again, tokens, mask), hf_logits(model, tokens, mask))
    assert ModelConfig.from_hf(config) == policy.config


LLAMA_3_2_1B_INSTRUCT = {  # config.json as released (transformers 4.x field names)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 128256,
}  # fmt: skip
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
    "vocab_size": 32000,
}  # fmt: skip


def test_released_llama_configs_are_read():
    llama32 = ModelConfig.from_hf(LLAMA_3_2_1B_INSTRUCT)
    assert (llama32.head_dim, llama32.num_kv_heads, llama32.rope_theta) == (64, 8, 5e5)
    assert llama32.rope_scaling == Llama3RopeScaling(32.0, 1.0, 4.0, 8192)
    assert llama32.tie_word_embeddings and llama32.eos_token_id == [128001, 128008, 128009]
    llama2 = ModelConfig.from_hf(LLAMA_2_7B)
    assert (llama2.head_dim, llama2.num_kv_heads, llama2.rope_theta) == (128, 32, 10_000.0)
    assert llama2.rope_scaling is None and not llama2.tie_word_embeddings
    for config in (llama32, llama2):
        assert ModelConfig.from_hf(config.to_hf()) == config


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "'linear'"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_llama_options_are_refused_by_name(change, named):
    hf = dict(LLAMA_3_2_1B_INSTRUCT, **change)
    with pytest.raises(ValueError, match=named):
        ModelConfig.from_hf(hf)


def test_scaling_survives_the_config_round_trip():
    config = ModelConfig.from_hf({**LLAMA_2_7B, "rope_scaling": LLAMA3_SCALING})
    hf = config.to_hf()
    assert hf["rope_parameters"]["rope_type"] == "llama3" == hf["rope_scaling"]["rope_type"]
    assert ModelConfig.from_hf(hf) == config
