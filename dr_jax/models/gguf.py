"""GGUF files in: a Llama or Qwen2 model's config, weights and tokenizer from llama.cpp's format.

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
from gguf import GGMLQuantizationType, GGUFReader, Keys, TokenType
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from dr_jax.models.config import ModelConfig
from dr_jax.models.safetensors_io import write_safetensors
from dr_jax.models.tokenizer import QWEN2_SPLIT_REGEX

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

# Pre-tokenizers of byte-level vocabularies, by `tokenizer.ggml.pre` (llama.cpp's names).
_LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    # SmolLM: every digit alone, then GPT-2's split.
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT_REGEX),
    "qwen2": lambda: _split_then_bytes(QWEN2_SPLIT_REGEX),
}
_IGNORE_MERGES = {"llama-bpe"}  # Llama 3 takes a whole word found in the vocabulary as is


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


def gguf_tokenizer(model: GGUFModel | str | Path) -> PreTrainedTokenizerFast:
    """The file's tokenizer as an HF fast tokenizer: its byte-level BPE vocabulary and merges,
    the pre-tokenizer its `tokenizer.ggml.pre` names, control tokens as special tokens,
    user-defined ones as added tokens, BOS/EOS as the file asks, and its chat template."""
    model = model if isinstance(model, GGUFModel) else GGUFModel(model)
    kind = model.field(Keys.Tokenizer.MODEL)
    if kind != "gpt2":
        raise ValueError(
            f"{model.path}: tokenizer model {kind!r} is not supported (byte-level BPE, 'gpt2', "
            "only): load the model's HF checkpoint instead"
        )
    pre = model.field(Keys.Tokenizer.PRE, "gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"{model.path}: pre-tokenizer {pre!r} is not supported (known: "
            f"{sorted(_PRE_TOKENIZERS)})"
        )
    tokens = list(model.required(Keys.Tokenizer.LIST))
    kinds = list(model.field(Keys.Tokenizer.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in model.required(Keys.Tokenizer.MERGES)]
    backend = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(tokens)},
            merges=merges,
            fuse_unk=False,
            ignore_merges=pre in _IGNORE_MERGES,
        )
    )
    backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    added = [
        AddedToken(token, special=kind == TokenType.CONTROL, normalized=False)
        for token, kind in zip(tokens, kinds, strict=True)
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)
    ]
    backend.add_tokens(added)

    def token(key: str) -> str | None:
        index = model.field(key)
        return None if index is None else tokens[index]

    bos, eos = token(Keys.Tokenizer.BOS_ID), token(Keys.Tokenizer.EOS_ID)
    add_bos = bool(model.field(Keys.Tokenizer.ADD_BOS, False)) and bos is not None
    add_eos = bool(model.field(Keys.Tokenizer.ADD_EOS, False)) and eos is not None
    if add_bos or add_eos:
        ends = [t for t, add in ((bos, add_bos), (eos, add_eos)) if add]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([bos] * add_bos + ["$A"] + [eos] * add_eos),
            pair=" ".join([bos] * add_bos + ["$A", "$B"] + [eos] * add_eos),
            special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(ends)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    named = {bos, eos, token(Keys.Tokenizer.UNK_ID), token(Keys.Tokenizer.PAD_ID)}
    extra = [t.content for t in added if t.special and t.content not in named]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=token(Keys.Tokenizer.UNK_ID),
        pad_token=token(Keys.Tokenizer.PAD_ID),
        additional_special_tokens=extra,
        chat_template=model.field(Keys.Tokenizer.CHAT_TEMPLATE),
        clean_up_tokenization_spaces=False,
        model_max_length=model.config.max_position_embeddings,
    )


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
