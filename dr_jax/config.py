"""Config pieces shared by the launchers (`launch/train.py`, `launch/eval.py`).

Each is a small dataclass with defaults that work on a laptop: the embedded tiny policy and the
in-process JAX sampler. tyro turns the field comments into `--help` text.
"""

from dataclasses import dataclass
from typing import Literal

TINY = "tiny"
"""`PolicyConfig.path` for a random tiny Qwen2-architecture model with the real tokenizer."""


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy to load, and in which compute dtype."""

    path: str = TINY
    """HF checkpoint dir (config.json, *.safetensors, tokenizer), a .gguf file, a catalog name
    (smollm2-135m-instruct), a Hugging Face Hub id, or "tiny" (random tiny model)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype; parameters stay float32 and logits are always float32."""
    seed: int = 0
    """Initialisation seed of the tiny random model (ignored for checkpoints)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError('PolicyConfig.path is empty: pass a model path or name, or "tiny".')

    @property
    def is_tiny(self) -> bool:
        return self.path == TINY


@dataclass(frozen=True)
class SamplerConfig:
    """Where tokens come from: the in-process JAX sampler or an SGLang server, and how to sample."""

    kind: Literal["jax", "sglang"] = "jax"
    """"jax": sample in this process from the policy; "sglang": an SGLang server at `url`."""
    url: str = "http://127.0.0.1:30000"
    """SGLang server base URL (kind="sglang" only)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy (argmax). DeepResearcher trained and evaluated at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 keeps all."""
    max_new_tokens: int = 2000
    """Cap on tokens generated per assistant turn (DeepResearcher: 2000)."""
    max_batch_size: int = 16
    """JAX sampler: rows decoded together (KV-cache batch)."""
    max_seq_len: int = 8192
    """JAX sampler: KV-cache length per row; it bounds the context (prompt, turns, observations)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--sampler.temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--sampler.top-p must be in (0, 1], got {self.top_p}.")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"--sampler.top-k must be -1 (off) or >= 1, got {self.top_k}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"--sampler.max-new-tokens must be >= 1, got {self.max_new_tokens}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
