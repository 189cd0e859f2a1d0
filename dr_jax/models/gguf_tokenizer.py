"""A GGUF file's tokenizer as an HF fast tokenizer, rebuilt from its metadata.

llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`), each token's type (normal, control,
user-defined, byte...), and either the BPE merges of a byte-level vocabulary (model "gpt2",
split by the pre-tokenizer `tokenizer.ggml.pre` names) or the scores of a SentencePiece
vocabulary (model "llama": words marked with "▁", unknown bytes spelled <0xNN>). Control tokens
become special tokens, user-defined ones plain added tokens; BOS/EOS are added as the file asks,
and its chat template comes along.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gguf import Keys, TokenType
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from dr_jax.models.tokenizer import QWEN2_SPLIT_REGEX

if TYPE_CHECKING:
    from dr_jax.models.gguf import GGUFModel

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


# Pre-tokenizers of byte-level vocabularies, by `tokenizer.ggml.pre` (llama.cpp's names).
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


def _byte_level(model: GGUFModel, tokens: list[str]) -> Tokenizer:
    pre = model.field(Keys.Tokenizer.PRE, "gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"{model.path}: pre-tokenizer {pre!r} is not supported (known: "
            f"{sorted(_PRE_TOKENIZERS)})"
        )
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
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _sentencepiece(model: GGUFModel, tokens: list[str]) -> Tokenizer:
    """SentencePiece BPE as a `tokenizers` BPE: merges ordered by the merged piece's score,
    bytes outside the vocabulary through their <0xNN> tokens, "▁" for spaces."""
    scores = model.required(Keys.Tokenizer.SCORES)
    unk = model.field(Keys.Tokenizer.UNK_ID)
    backend = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(tokens)},
            merges=_merges_by_score(tokens, scores),
            unk_token=None if unk is None else tokens[unk],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = bool(model.field(Keys.Tokenizer.ADD_PREFIX, True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix)
    return backend


def _merges_by_score(tokens: list[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary, best merged score first (ties:
    longer left, then longer right piece, then vocabulary order), as transformers orders them."""
    index = {token: i for i, token in enumerate(tokens)}
    candidates = []
    for token, score in zip(tokens, scores, strict=True):
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if {token[:i], token[i:]} <= index.keys()
        ]
        for left, right in sorted(splits, key=lambda pair: (index[pair[0]], index[pair[1]])):
            candidates.append((-score, -len(left), -len(right), len(candidates), left, right))
    return [(left, right) for *_, left, right in sorted(candidates)]


_BACKENDS = {"gpt2": _byte_level, "llama": _sentencepiece}
_ADD_BOS_DEFAULT = {"gpt2": False, "llama": True}  # llama.cpp's default when the file is silent


def gguf_tokenizer(model: GGUFModel) -> PreTrainedTokenizerFast:
    """The tokenizer the file describes (see the module doc)."""
    kind = model.field(Keys.Tokenizer.MODEL)
    if kind not in _BACKENDS:
        raise ValueError(
            f"{model.path}: tokenizer model {kind!r} is not supported (known: "
            f"{sorted(_BACKENDS)}): load the model's HF checkpoint instead"
        )
    tokens = list(model.required(Keys.Tokenizer.LIST))
    backend = _BACKENDS[kind](model, tokens)
    kinds = list(model.field(Keys.Tokenizer.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens))
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
    add_bos = bool(model.field(Keys.Tokenizer.ADD_BOS, _ADD_BOS_DEFAULT[kind])) and bos is not None
    add_eos = bool(model.field(Keys.Tokenizer.ADD_EOS, False)) and eos is not None
    if add_bos or add_eos:
        ends = [t for t, add in ((bos, add_bos), (eos, add_eos)) if add]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([bos] * add_bos + ["$A"] + [eos] * add_eos),
            pair=" ".join([bos] * add_bos + ["$A", "$B"] + [eos] * add_eos),
            special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(ends)],
        )
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
