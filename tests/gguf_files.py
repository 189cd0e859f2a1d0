"""Small GGUF files written in the tests with gguf's GGUFWriter, laid out as llama.cpp's
converter lays out a Llama or a Qwen2: llama.cpp tensor names, Q/K rows of each head
interleaved (Llama only), 2-D weights quantized, norms and biases float32, the tokenizer and
chat template as metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import transformers
from gguf import GGMLQuantizationType, TokenType
from gguf.quants import quantize
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou answer briefly.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRAINING_TEXT = [
    "Who founded Gobor Press? Elna Varsi founded it in 1987, in the city of Tallinn.",
    "The search returned three results; the second page names the founder of the press.",
    "<think>I should search first.</think> The answer is <answer>Elna Varsi</answer>.",
    "Numbers like 2024 and 365 are split into digits; emoji 🤖 and café stay bytes.",
] * 4


@dataclass
class TokenizerSpec:
    """The tokenizer metadata of a GGUF file (llama.cpp keys)."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    unk: int | None = None
    pad: int | None = None
    add_bos: bool = False
    chat_template: str | None = CHATML
    model: str = "gpt2"  # byte-level BPE; "llama": SentencePiece (scores, no merges)
    scores: list[float] | None = None


def small_bpe_tokenizer(vocab_size: int = 320) -> TokenizerSpec:
    """A byte-level BPE trained here the way SmolLM's was split (each digit alone, then GPT-2's
    regex), with ChatML control tokens first and two user-defined tokens last."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = [*sorted(model["vocab"], key=model["vocab"].get), "<think>", "</think>"]
    types = [TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens]
    types[-2:] = [TokenType.USER_DEFINED] * 2
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return TokenizerSpec(
        tokens, [int(t) for t in types], merges, "smollm", bos=1, eos=2, unk=0, pad=2
    )


def small_sentencepiece_tokenizer(vocab_size: int = 360) -> TokenizerSpec:
    """A SentencePiece-style BPE vocabulary as llama.cpp stores Llama 2's: <unk> <s> </s>, the
    256 <0xNN> byte tokens, then pieces ("▁" marks a word start) scored by merge order."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    model = json.loads(backend.to_str())["model"]
    merged = {"".join(m if isinstance(m, list) else m.split(" ")): r
              for r, m in enumerate(model["merges"])}  # fmt: skip
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    specials = ["<unk>", "<s>", "</s>"]
    tokens = [*specials, *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256 + [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (len(specials) + 256)
    scores += [-float(merged.get(p, len(merged) + i)) for i, p in enumerate(pieces)]
    template = (
        "{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '</s>' }}{% endfor %}"
    )
    return TokenizerSpec(
        tokens, [int(t) for t in types], [], "default", bos=1, eos=2, unk=0,
        add_bos=True, chat_template=template, model="llama", scores=scores,
    )  # fmt: skip


def tokenizer_spec_of(tokenizer: transformers.PreTrainedTokenizerFast, pre: str) -> TokenizerSpec:
    """The GGUF metadata llama.cpp's converter writes for an HF byte-level BPE tokenizer."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data["added_tokens"]}
    vocab.update({content: t["id"] for content, t in added.items()})
    tokens = sorted(vocab, key=vocab.get)
    types = [
        (TokenType.CONTROL if added[t]["special"] else TokenType.USER_DEFINED)
        if t in added
        else TokenType.NORMAL
        for t in tokens
    ]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    return TokenizerSpec(
        tokens,
        [int(t) for t in types],
        merges,
        pre,
        bos=None,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        chat_template=tokenizer.chat_template,
    )


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half row order of each Q/K head -> llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensors(model: transformers.PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's float32 tensors under llama.cpp's names and layout."""
    config = model.config
    permute = config.model_type == "llama"
    out = {}
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = array
        elif name == "model.norm.weight":
            out["output_norm.weight"] = array
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                out["output.weight"] = array
        else:
            _, _, layer, *module, kind = name.split(".")
            short = _LAYER_NAMES[".".join(module)]
            if permute and kind == "weight" and short == "attn_q":
                array = llama_cpp_permute(array, config.num_attention_heads)
            elif permute and kind == "weight" and short == "attn_k":
                array = llama_cpp_permute(array, config.num_key_value_heads)
            out[f"blk.{layer}.{short}.{kind}"] = array
    return out


def write_gguf(
    path: Path,
    model: transformers.PreTrainedModel,
    tokenizer: TokenizerSpec,
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    *,
    arch: str | None = None,
    tensors: dict[str, np.ndarray] | None = None,
    raw: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
) -> Path:
    """Writes `model` (its tensors, or `tensors`) as a GGUF file with 2-D weights stored as
    `qtype`; `raw` adds tensors already encoded (bytes, type)."""
    config = model.config
    writer = gguf.GGUFWriter(path, arch or config.model_type)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}  # transformers 5; 4.x: rope_theta
    writer.add_rope_freq_base(rope.get("rope_theta") or config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model(tokenizer.model)
    writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.types)
    if tokenizer.merges:
        writer.add_token_merges(tokenizer.merges)
    if tokenizer.scores is not None:
        writer.add_token_scores(tokenizer.scores)
    for key, value in (("bos", tokenizer.bos), ("eos", tokenizer.eos), ("unk", tokenizer.unk)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    if tokenizer.pad is not None:
        writer.add_pad_token_id(tokenizer.pad)
    writer.add_add_bos_token(tokenizer.add_bos)
    if tokenizer.chat_template is not None:
        writer.add_chat_template(tokenizer.chat_template)
    for name, array in (tensors if tensors is not None else gguf_tensors(model)).items():
        if array.ndim == 1 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    for name, (data, kind) in (raw or {}).items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
