"""Tiny random transformers (torch CPU) Qwen and Llama models: the numerical reference for
dr_jax.models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

# Shapes covering: GQA ratio 1 and > 1, head_dim != hidden / heads, tied and untied
# embeddings, q/k/v biases (Qwen2), q/k RMSNorm (Qwen3), neither (Llama), and Llama 3.1's RoPE
# scaling (an original context of 64 puts the 12 frequencies of head_dim 24 in all three bands).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
CONFIGS = {
    "qwen2-mha-tied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=4,
                           tie_word_embeddings=True),
    "qwen2-gqa2-untied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=False),
    "qwen3-headdim24-gqa2": dict(model_type="qwen3", num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=24, tie_word_embeddings=False),
    "qwen3-gqa4-tied": dict(model_type="qwen3", num_attention_heads=8, num_key_value_heads=2,
                            head_dim=8, tie_word_embeddings=True),
    "llama-gqa2-untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=False),
    "llama3-scaled-gqa4-tied": dict(model_type="llama", num_attention_heads=4,
                                    num_key_value_heads=1, head_dim=24, tie_word_embeddings=True,
                                    rope_scaling=LLAMA3_SCALING),
}  # fmt: skip


def hf_config(name: str, vocab_size: int = 256, **overrides) -> transformers.PretrainedConfig:
    fields = {**CONFIGS[name], **overrides}
    model_type = fields.pop("model_type")
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        rope_theta=500.0,  # not the default, so a dropped theta fails the parity tests
        max_position_embeddings=512,
    )
    return transformers.AutoConfig.for_model(model_type, **{**shape, **fields})


def random_hf_model(name: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A model whose every weight, bias and norm scale is random (so no mapping hides behind
    zeros or ones); `overrides` change fields of the named config (vocab_size too)."""
    torch.manual_seed(seed)
    config = hf_config(name, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def save_hf(model: transformers.PreTrainedModel, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_logits(model: transformers.PreTrainedModel, tokens, attention_mask) -> np.ndarray:
    """Reference logits for a left-padded batch: positions = cumsum(mask) - 1, as in generation."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions)
    return out.logits.float().numpy()


def left_padded_batch(vocab_size: int, lengths: list[int], seed: int = 0):
    """tokens i32[B, T], mask i32[B, T] with row b's lengths[b] real tokens at the right end."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    tokens = rng.integers(0, vocab_size, (len(lengths), width)).astype(np.int32)
    mask = (np.arange(width)[None] >= width - np.array(lengths)[:, None]).astype(np.int32)
    return tokens, mask
