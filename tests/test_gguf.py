"""GGUF files load as transformers' own GGUF reader loads them: logits within 1e-3 for every
supported tensor type, identical chat-rendered token ids, and an HF directory transformers reads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType
from gguf_files import (
    small_bpe_tokenizer,
    small_sentencepiece_tokenizer,
    tokenizer_spec_of,
    write_gguf,
)
from models_reference import hf_logits, left_padded_batch, random_hf_model

from dr_jax.models import load_pretrained
from dr_jax.models.gguf import SUPPORTED_TYPES, GGUFModel, convert_gguf
from dr_jax.models.tokenizer import load_tokenizer

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
LENGTHS = [40, 25, 9]
MESSAGES = [
    {"role": "user", "content": "Who founded Gobor Press in 1987?  Café 🤖 <think>hm</think>"},
    {"role": "assistant", "content": "<think>Search.</think>\n<answer>Elna Varsi</answer>"},
    {"role": "user", "content": "And 2024?\n\n\tTabs, naïve “quotes”."},
]


@pytest.fixture(scope="module")
def spec():
    return small_bpe_tokenizer()


@pytest.fixture(scope="module")
def llama(spec):
    """A random Llama with the small tokenizer's vocabulary; head_dim 24 != width / heads."""
    return random_hf_model(
        "llama-gqa2-untied", vocab_size=len(spec.tokens), head_dim=24, max_position_embeddings=256
    )


def _ids(rendered) -> list[int]:
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def _transformers_gguf(path: Path) -> transformers.PreTrainedModel:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def test_every_type_we_accept_is_tested():
    assert {GGMLQuantizationType[name] for name in TYPES} == SUPPORTED_TYPES


@pytest.mark.parametrize("qtype", TYPES)
def test_logits_match_transformers_gguf_reader(llama, spec, tmp_path, qtype):
    path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", llama, spec, GGMLQuantizationType[qtype])
    tokens, mask = left_padded_batch(llama.config.vocab_size, LENGTHS)
    ref = hf_logits(_transformers_gguf(path), tokens, mask)
    ours = np.asarray(load_pretrained(path).logits(tokens, mask))
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() <= 1e-3
    if qtype == "F32":  # exact weights: the original model, so the Q/K row order is undone
        assert np.abs(ours - hf_logits(llama, tokens, mask))[real].max() <= 1e-4
    else:  # quantized: near, not equal, to the original
        assert np.abs(ours - hf_logits(llama, tokens, mask))[real].max() > 1e-4


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_qwen2_files_keep_their_biases_and_row_order(spec, tmp_path, qtype):
    model = random_hf_model("qwen2-gqa2-untied", vocab_size=len(spec.tokens))
    path = write_gguf(tmp_path / "qwen2.gguf", model, spec, GGMLQuantizationType[qtype])
    policy = load_pretrained(path)
    assert policy.config.model_type == "qwen2" and policy.config.qkv_bias
    tokens, mask = left_padded_batch(model.config.vocab_size, LENGTHS)
    ours, real = np.asarray(policy.logits(tokens, mask)), mask.astype(bool)
    assert np.abs(ours - hf_logits(_transformers_gguf(path), tokens, mask))[real].max() <= 1e-3
    if qtype == "F32":
        assert np.abs(ours - hf_logits(model, tokens, mask))[real].max() <= 1e-4


def test_tied_embeddings_read_from_a_file_without_output_weight(spec, tmp_path):
    model = random_hf_model(
        "llama-gqa2-untied", vocab_size=len(spec.tokens), tie_word_embeddings=True
    )
    path = write_gguf(tmp_path / "tied.gguf", model, spec, GGMLQuantizationType.Q8_0)
    policy = load_pretrained(path)
    assert policy.config.tie_word_embeddings
    tokens, mask = left_padded_batch(model.config.vocab_size, LENGTHS)
    ref = hf_logits(_transformers_gguf(path), tokens, mask)
    assert np.abs(np.asarray(policy.logits(tokens, mask)) - ref)[mask.astype(bool)].max() <= 1e-3


def test_config_comes_from_the_metadata(llama, spec, tmp_path):
    config = GGUFModel(write_gguf(tmp_path / "m.gguf", llama, spec)).config
    hf = llama.config
    assert config.model_type == "llama" and not config.tie_word_embeddings
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 24)
    assert (config.vocab_size, config.num_layers, config.max_position_embeddings) == (
        hf.vocab_size,
        hf.num_hidden_layers,
        256,
    )
    assert config.rope_theta == 500.0 and config.rms_norm_eps == pytest.approx(hf.rms_norm_eps)


@pytest.mark.parametrize("pre", ["smollm", "gpt2", "llama-bpe"])
def test_chat_ids_match_transformers_gguf_tokenizer(llama, spec, tmp_path, pre):
    spec = dataclasses.replace(spec, pre=pre)
    path = write_gguf(tmp_path / "m.gguf", llama, spec)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ours = load_tokenizer(path)
    for prompt in (True, False):
        a = _ids(theirs.apply_chat_template(MESSAGES, add_generation_prompt=prompt))
        b = _ids(ours.apply_chat_template(MESSAGES, add_generation_prompt=prompt))
        assert a == b and len(b) > 40
    text = ours.apply_chat_template(MESSAGES, tokenize=False)
    assert ours.decode(ours.encode(text)) == text
    assert ours.convert_ids_to_tokens(ours.encode("<|im_start|><think>")) == [
        "<|im_start|>",
        "<think>",
    ]
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert ours.decode(ours.encode("<|im_end|>hi"), skip_special_tokens=True) == "hi"


def test_sentencepiece_vocabulary_matches_transformers_gguf_tokenizer(tmp_path):
    """Llama 2-style files: "▁" word marks, merges from scores, <0xNN> byte fallback, BOS."""
    spec = small_sentencepiece_tokenizer()
    model = random_hf_model("llama-gqa2-untied", vocab_size=len(spec.tokens), num_hidden_layers=1)
    path = write_gguf(tmp_path / "spm.gguf", model, spec, GGMLQuantizationType.Q8_0)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ours = load_tokenizer(path)
    texts = [
        "Who founded Gobor Press?",
        " a leading space",
        "Café 🤖 naïve\n\ttabs  two, 5 €",
        "<s>x</s>",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs.encode(text) and ids[0] == 1
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
            ids, skip_special_tokens=True
        )
    assert "<0xE2>" in ours.convert_ids_to_tokens(ours.encode("€"))  # not in the vocabulary
    assert _ids(ours.apply_chat_template(MESSAGES)) == _ids(theirs.apply_chat_template(MESSAGES))


def test_smollm_pre_tokenizer_splits_every_digit(llama, spec, tmp_path):
    """llama.cpp's "smollm" split: a merge of two digits never applies."""
    merged = [*spec.merges, "1 9", "19 8"]
    tokens = [*spec.tokens, "19", "198"]
    types = [*spec.types, 1, 1]
    wide = dataclasses.replace(spec, tokens=tokens, types=types, merges=merged)
    model = random_hf_model("llama-gqa2-untied", vocab_size=len(tokens))
    tokenizer = load_tokenizer(write_gguf(tmp_path / "d.gguf", model, wide))
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("1987")) == ["1", "9", "8", "7"]


@pytest.mark.slow  # gguf's reader parses 151k tokens + 151k merges in ~30 s
def test_qwen_vocabulary_in_a_gguf_tokenizes_as_qwen(qwen_tokenizer, tmp_path):
    """The real Qwen2.5 tokenizer written as llama.cpp would ("qwen2" split, <tool_call> as a
    user-defined token) comes back token for token, chat template included."""
    spec = tokenizer_spec_of(qwen_tokenizer, "qwen2")
    model = random_hf_model("llama-gqa2-untied", vocab_size=len(spec.tokens), num_hidden_layers=1)
    path = write_gguf(tmp_path / "q.gguf", model, spec, GGMLQuantizationType.Q8_0)
    ours = load_tokenizer(path)
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    messages[2] = {"role": "assistant", "content": '<tool_call>{"q": 12345}</tool_call>'}
    a = _ids(qwen_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    assert _ids(ours.apply_chat_template(messages, add_generation_prompt=True)) == a
    assert ours.convert_tokens_to_ids("<tool_call>") == 151657
    assert ours.eos_token == "<|im_end|>"


def test_converted_directory_is_read_by_transformers_and_by_us(llama, spec, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", llama, spec, GGMLQuantizationType.Q4_1)
    calls = []
    out = convert_gguf(path, tmp_path / "hf", progress=lambda done, total: calls.append(done))
    assert calls == list(range(1, len(calls) + 1)) and len(calls) == 2 + 9 * 2 + 1
    tokens, mask = left_padded_batch(llama.config.vocab_size, LENGTHS)
    real = mask.astype(bool)
    from_gguf = hf_logits(_transformers_gguf(path), tokens, mask)
    from_dir = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert np.abs(hf_logits(from_dir.eval(), tokens, mask) - from_gguf)[real].max() <= 1e-5
    ours = np.asarray(load_pretrained(out).logits(tokens, mask))
    np.testing.assert_array_equal(ours, np.asarray(load_pretrained(path).logits(tokens, mask)))
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert _ids(theirs.apply_chat_template(MESSAGES)) == _ids(
        reference.apply_chat_template(MESSAGES)
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["pad_token_id"] == 2


_MESH_SCRIPT = """
import numpy as np
from flax import nnx
from dr_jax.models import load_pretrained
from dr_jax.sharding import make_mesh

policy = load_pretrained({path!r}, mesh=make_mesh("2x2"))
q = policy.params["layers"]["attn"]["q_proj"]["kernel"].get_value()
assert tuple(q.sharding.spec) == (None, "fsdp", "tp", None), q.sharding.spec
single = load_pretrained({path!r})
for (key, a), (_, b) in zip(nnx.to_flat_state(policy.params), nnx.to_flat_state(single.params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(key))
print("ok")
"""


def test_a_gguf_loads_onto_a_mesh_with_the_same_values(llama, spec, tmp_path):
    """On 4 simulated devices (fsdp=2, tp=2) each shard of a Q4_1 file holds what a
    single-device load holds."""
    path = write_gguf(tmp_path / "m.gguf", llama, spec, GGMLQuantizationType.Q4_1)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    script = _MESH_SCRIPT.format(path=str(path))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_unsupported_tensor_type_is_named(llama, spec, tmp_path):
    tensors = {"token_embd.weight": np.zeros((len(spec.tokens), 64), np.float32)}
    q4k = np.zeros((8, 144), np.uint8)  # 8 rows of one 256-wide Q4_K block
    raw = {"blk.0.attn_q.weight": (q4k, GGMLQuantizationType.Q4_K)}
    path = write_gguf(tmp_path / "k.gguf", llama, spec, tensors=tensors, raw=raw)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight is Q4_K; supported"):
        load_pretrained(path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"arch": "gpt2"}, "architecture 'gpt2'"),
        ({"tensors": {"rope_freqs.weight": np.ones(12, np.float32)}}, "rope_freqs"),
        ({"tensors": {"blk.0.attn_q.bias": np.ones(96, np.float32)}}, r"attn_q\.bias"),
    ],
)
def test_unsupported_files_are_refused_by_name(llama, spec, tmp_path, change, named):
    path = write_gguf(tmp_path / "x.gguf", llama, spec, **change)
    with pytest.raises(ValueError, match=named):
        load_pretrained(path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"pre": "made-up"}, "pre-tokenizer 'made-up'"),
        ({"model": "bert"}, "tokenizer model 'bert'"),
    ],
)
def test_unsupported_tokenizer_is_named(llama, spec, tmp_path, change, named):
    path = write_gguf(tmp_path / "t.gguf", llama, dataclasses.replace(spec, **change))
    with pytest.raises(ValueError, match=f"{named} is not supported"):
        load_tokenizer(path)


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"broken\.gguf: not a readable GGUF file"):
        load_pretrained(path)
