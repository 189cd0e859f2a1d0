"""Qwen2 / Qwen2.5 / Qwen3 / Llama dense policies in Flax NNX, with HF safetensors in and out
and GGUF files in.

policy = load_pretrained("Qwen2.5-7B-Instruct/", dtype=jnp.bfloat16, mesh=mesh)
policy = load_pretrained("smollm2-135m-instruct")          # also: a .gguf file, a Hub id
logits = policy.logits(tokens, attention_mask)            # f32[B, T, V], left padding ok
hidden = policy.apply(params, tokens, mask, return_hidden=True)   # then policy.unembed
logits, cache = policy.extend(params, cache, tokens, num_new)     # prefill / decode
save_pretrained(policy, "out/", dtype=jnp.bfloat16)       # transformers / SGLang load it
"""

from dr_jax.models.cache import KVCache
from dr_jax.models.config import ModelConfig
from dr_jax.models.hf_io import load_pretrained, save_pretrained
from dr_jax.models.policy import Policy, init_policy, named_shardings

__all__ = [
    "KVCache",
    "ModelConfig",
    "Policy",
    "init_policy",
    "load_pretrained",
    "named_shardings",
    "save_pretrained",
]
