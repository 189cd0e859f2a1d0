"""GGUF files in: a Llama or Qwen2 model's config and weights from llama.cpp's format (its
tokenizer: `gguf_tokenizer`).

A GGUF holds metadata (shape, RoPE, vocabulary, merges, chat template) and tensors under
llama.cpp's names, in its layout, often block-quantized. We read it with the `gguf` package,
dequantize each tensor with that package's own NumPy dequantizers, and hand out the tensors
under their Hugging Face names and layout, so the safetensors path (`hf_io`) loads them
unchanged. For Llama, llama.cpp's converter reorders the rows of each Q and K head from HF's
"rotate half" RoPE layout to interleaved pairs; `_unpermute` puts them back (Qwen2 files keep
HF's order, and their q/k/v biases).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, Keys
from gguf.quants import dequantize

from dr_jax.models.config import ModelConfig
from dr_jax.models.gguf_tokenizer import gguf_tokenizer
from dr_jax.models.safetensors_io import write_safetensors

_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # general.architecture -> model_type
_PERMUTED_QK = {"llama"}  # architectures whose Q/K rows llama.cpp interleaves
# Tensor types we accept: those the `gguf` package both writes and reads back, so the tests
# cover every one (K-quants it cannot write, so they stay refused until a test file has them).
SUPPORTED_TYPES = frozenset(
    GGMLQuantizationType[name]
    for name in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
)
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_BIASED = {"attn_q", "attn_k", "attn_v"}  # the only biases, and only where qkv_bias


class GGUFModel:
    """An open .gguf file: its ModelConfig, and its tensors by HF name (`get`, like `hf_io`'s
    safetensors checkpoint), dequantized to float32 one at a time on request."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self.reader = GGUFReader(self.path)
        except (ValueError, OSError) as e:
            raise ValueError(f"{self.path}: not a readable GGUF file ({e})") from e
        self.config = self._config()
        self.tensors = {}
        for tensor in self.reader.tensors:
            name = self._hf_name(tensor.name)
            if tensor.tensor_type not in SUPPORTED_TYPES:
                raise ValueError(
                    f"{self.path}: tensor {tensor.name} is {tensor.tensor_type.name}; supported "
                    f"types: {sorted(t.name for t in SUPPORTED_TYPES)}"
                )
            self.tensors[name] = tensor

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value (`{arch}` in the key is the file's architecture)."""
        field = self.reader.fields.get(key.format(arch=self.architecture))
        return default if field is None else field.contents()

    @property
    def architecture(self) -> str:
        return self.reader.fields[Keys.General.ARCHITECTURE].contents()

    def required(self, key: str) -> Any:
        value = self.field(key)
        if value is None:
            raise ValueError(f"{self.path}: metadata {key.format(arch=self.architecture)} missing")
        return value

    def _config(self) -> ModelConfig:
        arch = self.architecture
        if arch not in _ARCHITECTURES:
            raise ValueError(
                f"{self.path}: GGUF architecture {arch!r} is not supported "
                f"(dr_jax reads {sorted(_ARCHITECTURES)})"
            )
        scaling = self.field(Keys.Rope.SCALING_TYPE, "none")
        if scaling != "none":
            raise ValueError(f"{self.path}: RoPE scaling {scaling!r} is not supported")
        if any(t.name == "rope_freqs.weight" for t in self.reader.tensors):
            raise ValueError(
                f"{self.path}: rope_freqs.weight (Llama 3.1 RoPE scaling stored as a tensor) is "
                "not supported here: load the model's HF checkpoint instead"
            )
        heads = int(self.required(Keys.Attention.HEAD_COUNT))
        width = int(self.required(Keys.LLM.EMBEDDING_LENGTH))
        head_dim = int(self.field(Keys.Attention.KEY_LENGTH, width // heads))
        rotary = int(self.field(Keys.Rope.DIMENSION_COUNT, head_dim))
        if rotary != head_dim:
            raise ValueError(f"{self.path}: partial RoPE ({rotary} of {head_dim}) not supported")
        tokens = self.field(Keys.Tokenizer.LIST) or ()
        names = {t.name for t in self.reader.tensors}
        return ModelConfig(
            vocab_size=int(self.field(Keys.LLM.VOCAB_SIZE, len(tokens))),
            hidden_size=width,
            intermediate_size=int(self.required(Keys.LLM.FEED_FORWARD_LENGTH)),
            num_layers=int(self.required(Keys.LLM.BLOCK_COUNT)),
            num_heads=heads,
            num_kv_heads=int(self.field(Keys.Attention.HEAD_COUNT_KV, heads)),
            head_dim=head_dim,
            rope_theta=_decimal(self.field(Keys.Rope.FREQ_BASE, 10_000.0)),
            rms_norm_eps=_decimal(self.required(Keys.Attention.LAYERNORM_RMS_EPS)),
            tie_word_embeddings="output.weight" not in names,
            qkv_bias=arch == "qwen2",
            qk_norm=False,
            max_position_embeddings=int(self.field(Keys.LLM.CONTEXT_LENGTH, 4096)),
            model_type=_ARCHITECTURES[arch],
            bos_token_id=self.field(Keys.Tokenizer.BOS_ID),
            eos_token_id=self.field(Keys.Tokenizer.EOS_ID),
        )

    def _hf_name(self, name: str) -> str:
        if name in _TOP_LEVEL:
            return _TOP_LEVEL[name]
        match = _LAYER_TENSOR.fullmatch(name)
        bias_ok = match is not None and match[2] in _BIASED and self.config.qkv_bias
        if match is None or match[2] not in _PER_LAYER or (match[3] == "bias" and not bias_ok):
            raise ValueError(
                f"{self.path}: tensor {name} is not part of a {self.config.model_type} model"
            )
        return f"model.layers.{match[1]}.{_PER_LAYER[match[2]]}.{match[3]}"

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """The float32 tensor `name` in HF layout ([out, in] for a projection)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor {name} is missing from the GGUF file")
        tensor = self.tensors[name]
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        if self.architecture in _PERMUTED_QK and name.endswith("q_proj.weight"):
            array = _unpermute(array, self.config.num_heads)
        elif self.architecture in _PERMUTED_QK and name.endswith("k_proj.weight"):
            array = _unpermute(array, self.config.num_kv_heads)
        if tuple(array.shape) != tuple(expected_shape):
            raise ValueError(
                f"{self.path}: tensor {tensor.name} has shape {tuple(array.shape)}, its "
                f"metadata implies {tuple(expected_shape)}"
            )
        return array

    def hf_config(self) -> dict[str, Any]:
        """The `config.json` of the model, with the tokenizer's special ids."""
        hf = self.config.to_hf()
        pad = self.field(Keys.Tokenizer.PAD_ID)
        if pad is not None:
            hf["pad_token_id"] = pad
        return hf


def _decimal(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not
    9.999999747378752e-06), as the checkpoint's own config.json wrote it."""
    return float(str(np.float32(value)))


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: per head, rows (2j, 2j+1) go back to (j, j + Dh/2)."""
    rows = weight.shape[0]
    per_head = weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def convert_gguf(
    path: str | Path, out_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> Path:
    """Writes the GGUF model as an HF directory (float32 `model.safetensors`, `config.json`,
    tokenizer files and chat template) that transformers and `load_pretrained` read; config.json
    comes last, so its presence marks a complete directory. progress(done, total) is called per
    tensor. Returns the directory."""
    model = GGUFModel(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = gguf_tokenizer(model)
    names = model.names()

    def make(i: int, name: str) -> Callable[[], np.ndarray]:
        def dequantized() -> np.ndarray:
            array = model.get(name, _shape(model, name))
            if progress is not None:
                progress(i + 1, len(names))
            return array

        return dequantized

    specs = [
        (name, _shape(model, name), np.dtype(np.float32), make(i, name))
        for i, name in enumerate(names)
    ]
    write_safetensors(out / "model.safetensors", specs)
    tokenizer.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(model.hf_config(), indent=2) + "\n")
    return out


def _shape(model: GGUFModel, name: str) -> tuple[int, ...]:
    """HF shape of a tensor: ggml lists dimensions innermost first."""
    return tuple(int(d) for d in reversed(model.tensors[name].shape))
