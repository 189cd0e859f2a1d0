"""ModelConfig: the shape of a Qwen2 / Qwen2.5 / Qwen3 / Llama dense decoder, to and from
`config.json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
# What each family fixes: q/k/v biases (Qwen2 only) and per-head q/k RMSNorm (Qwen3 only).
_FAMILY = {"qwen2": (True, False), "qwen3": (False, True), "llama": (False, False)}


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's RoPE frequency scaling (HF rope_type "llama3"); see `dr_jax.models.rope`."""

    factor: float  # long wavelengths are slowed by this much
    low_freq_factor: float  # wavelengths above context / low_freq_factor are fully scaled
    high_freq_factor: float  # wavelengths below context / high_freq_factor are kept
    original_max_position_embeddings: int  # the context the base model was trained for

    def to_hf(self) -> dict[str, Any]:
        return {"rope_type": "llama3", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Qwen or Llama causal LM (defaults: a Qwen2.5-0.5B-shaped model)."""

    vocab_size: int = 151_936  # rows of the embedding table
    hidden_size: int = 896  # model width D
    intermediate_size: int = 4_864  # SwiGLU width F
    num_layers: int = 24  # decoder blocks L
    num_heads: int = 14  # query heads H
    num_kv_heads: int = 2  # key/value heads (GQA: H is a multiple of it)
    head_dim: int = 64  # per-head width Dh (Qwen3 sets it explicitly; Qwen2 uses D / H)
    rope_theta: float = 1_000_000.0  # RoPE base
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_word_embeddings: bool = True  # LM head shares the embedding table
    qkv_bias: bool = True  # q/k/v projections have biases (Qwen2) or not (Qwen3)
    qk_norm: bool = False  # RMSNorm on each query/key head before RoPE (Qwen3)
    max_position_embeddings: int = 32_768  # longest context the checkpoint was trained for
    model_type: str = "qwen2"  # "qwen2", "qwen3" or "llama"
    rope_scaling: Llama3RopeScaling | None = None  # None: plain RoPE
    bos_token_id: int | None = 151_643  # written back to config.json
    eos_token_id: int | list[int] | None = 151_645  # written back to config.json

    def __post_init__(self) -> None:
        if self.model_type not in _ARCHITECTURES:
            raise ValueError(
                f"model_type={self.model_type!r}: expected one of {list(_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def architecture(self) -> str:
        return _ARCHITECTURES[self.model_type]

    @classmethod
    def tiny(cls, vocab_size: int = 151_665, **overrides: Any) -> ModelConfig:
        """The embedded default and test model: Qwen2 architecture, 2 layers, width 64, GQA 2."""
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rope_theta=10_000.0,
            tie_word_embeddings=True,
            max_position_embeddings=32_768,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Reads an HF `config.json` dict; options not implemented here raise ValueError."""
        model_type = hf.get("model_type")
        if model_type not in _ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture model_type={model_type!r} "
                f"(architectures={hf.get('architectures')}): dr_jax implements "
                f"{sorted(_ARCHITECTURES.values())}"
            )
        _reject_unsupported(hf)
        heads = hf["num_attention_heads"]
        rope = hf.get("rope_parameters") or {}
        qkv_bias, qk_norm = _FAMILY[model_type]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            max_position_embeddings=hf.get("max_position_embeddings", 32_768),
            model_type=model_type,
            rope_scaling=_rope_scaling(hf),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )

    def to_hf(self, dtype: str = "float32") -> dict[str, Any]:
        """The `config.json` dict transformers reads back into the same model."""
        if (self.qkv_bias, self.qk_norm) != _FAMILY[self.model_type]:
            raise ValueError(
                f"{self.model_type} with qkv_bias={self.qkv_bias}, qk_norm={self.qk_norm} has no "
                "HF equivalent: Qwen2 has q/k/v biases and no q/k norm, Qwen3 the reverse, "
                "Llama neither"
            )
        scaling = None if self.rope_scaling is None else self.rope_scaling.to_hf()
        rope = {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta}
        hf = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "rope_scaling": scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.qkv_bias,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": True,
        }
        if self.model_type == "llama":
            hf["mlp_bias"] = False
        else:
            hf["use_sliding_window"] = False
        return hf

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _reject_unsupported(hf: dict[str, Any]) -> None:
    """Raises ValueError naming the first HF option that would change the maths we implement."""
    if hf.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=true is not supported (full attention)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act={act!r} is not supported (SwiGLU with silu)")
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key) or {}
        kind = rope.get("rope_type") or rope.get("type")
        if kind not in (None, "default", "llama3"):
            raise ValueError(
                f"config.json: {key} type {kind!r} is not supported (plain RoPE or 'llama3')"
            )
    for key in ("num_experts", "num_local_experts", "moe_intermediate_size"):
        if hf.get(key):
            raise ValueError(f"config.json: {key}={hf[key]} (mixture of experts) is not supported")
    if hf.get("model_type") in ("qwen3", "llama") and hf.get("attention_bias"):
        raise ValueError(
            f"config.json: attention_bias=true for {hf['model_type']} is not supported"
        )
    if hf.get("mlp_bias"):
        raise ValueError("config.json: mlp_bias=true is not supported (bias-free SwiGLU)")


def _rope_scaling(hf: dict[str, Any]) -> Llama3RopeScaling | None:
    """The llama3 scaling of `rope_parameters` (transformers 5) or `rope_scaling` (4.x), if any."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key) or {}
        if (rope.get("rope_type") or rope.get("type")) == "llama3":
            try:
                return Llama3RopeScaling(
                    factor=float(rope["factor"]),
                    low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise ValueError(f"config.json: {key} of type 'llama3' lacks {e}") from e
    return None
