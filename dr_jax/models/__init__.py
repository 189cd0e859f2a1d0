"""Qwen2 / Qwen2.5 / Qwen3 dense policies in Flax NNX, with HF safetensors in and out."""

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
