"""Reward and metrics: DeepResearcher's scorer, case for case (reference §9 and §13.3)."""

import random

import pytest

from dr_jax.reward import (
    deepresearcher_score,
    exact_match,
    f1_score,
    last_turn_scores,
    normalize_answer,
    tags_balanced,
)

THINK = "<think> reasoning </think>\n"


@pytest.mark.parametrize(
    ("tail", "gold", "f1", "em"),
    [
        ("<answer>The Rialto Bridge</answer>", "Rialto Bridge", 0.8, 0.0),
        ("<answer>rialto rialto bridge</answer>", "Rialto Bridge", 1.0, 0.0),
        ("<answer>Turkey</answer>", "türkiye<|answer_split|>turkey", 1.0, 1.0),
        ("<answer>1,200,000 bbl/d</answer>", "1200000 oilbbl/d", 0.25, 0.0),
        ("<answer>U.S.A.</answer>", "USA", 0.0, 0.0),
        ("<answer>   </answer>", "a", 0.0, 0.0),
    ],
)
def test_reference_table(tail, gold, f1, em):
    assert deepresearcher_score(THINK + tail, gold) == pytest.approx(f1)
    assert deepresearcher_score(THINK + tail, gold, metric="em") == em


@pytest.mark.parametrize(
    "response",
    [
        "<think>x\n<answer>a</answer>",  # unclosed think
        "<think>x</think>\nthe answer is a",  # no <answer>
        "<think>x</think><answer>a",  # unclosed answer
        "<think>x</think><tool_call>{}</tool_call><tool_call>",  # dangling tool call
    ],
)
def test_format_errors_score_minus_one(response):
    assert deepresearcher_score(response, "a") == -1.0
    assert deepresearcher_score(response, "a", metric="em") == -1.0


def test_tags_in_observations_count_too():
    """The check spans the whole response: a stray tag in web text is a format error (§19.7)."""
    response = (
        "<think>x</think>\n<tool_call>{}</tool_call><|im_end|>\n<|im_start|>user\n"
        "<tool_response>\npage says <think> hmm\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>y</think>\n<answer>a</answer><|im_end|>"
    )
    assert deepresearcher_score(response, "a") == -1.0
    assert deepresearcher_score(response.replace(" <think> hmm", " hmm"), "a") == 1.0


def test_first_answer_is_scored_and_case_is_ignored():
    response = THINK + "<ANSWER>Paris</ANSWER> later <answer>London</answer>"
    assert deepresearcher_score(response, "paris") == 1.0


def test_answer_may_span_lines():
    assert deepresearcher_score(THINK + "<answer>\nGrand\nCanal\n</answer>", "grand canal") == 1.0


def test_list_and_joined_gold_agree():
    response = THINK + "<answer>Bloomsburg, PA</answer>"
    joined = "Bloomsburg<|answer_split|>Eyersburg"
    assert deepresearcher_score(response, joined) == deepresearcher_score(
        response, ["Bloomsburg", "Eyersburg"]
    )


def test_normalize_answer():
    assert normalize_answer("  The U.S.A.'s  best-known\tcity! ") == "the u s a s best known city"
    assert normalize_answer("Türkiye") == "türkiye"  # only ASCII punctuation is removed


def test_f1_is_over_word_sets_and_keeps_articles():
    assert f1_score("a cat a cat", "the cat") == pytest.approx(0.5)
    assert f1_score("cat", ["", "cat"]) == 1.0  # empty aliases are skipped
    assert f1_score("", "cat") == 0.0
    assert f1_score("cat", []) == 0.0


def test_exact_match_normalises_both_sides():
    assert exact_match("Rialto-Bridge.", "rialto bridge") == 1.0
    assert exact_match("the rialto bridge", "rialto bridge") == 0.0


def test_tag_balance_is_the_original_scan():
    assert tags_balanced("<think>a</think><tool_call>b</tool_call><answer>c</answer>")
    assert tags_balanced("<think><think>nested</think></think>")
    assert not tags_balanced("</think><think>")
    assert not tags_balanced("<think>a</think><think>")
    # The original only asks each opening tag for a later closing tag, so a leading stray
    # closing tag passes when the counts agree.
    assert tags_balanced("</think><think><think></think>")


def test_last_turn_scores_like_the_offline_scorer():
    message = (
        "<|im_start|>assistant\n<think>a</think>\n<answer>London</answer><|im_end|>\n"
        "<|im_start|>user\nno<|im_end|>\n"
        "<|im_start|>assistant\n<think>b</think>\n<answer>Paris</answer><|im_end|>"
    )
    assert last_turn_scores(message, "paris") == (1.0, 1.0)
    unclosed_think = message.replace("b</think>", "b")
    assert last_turn_scores(unclosed_think, "paris") == (0.0, 0.0)  # format error: 0, not -1
    assert deepresearcher_score(message, "paris") == 0.0  # the reward takes the first answer


TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>",
              "<THINK>", "</Answer>", "text", " ", "\n", "paris", "<", ">", "/"]  # fmt: skip


def reference_balanced(text: str) -> bool:
    """The original scan restated: equal counts, and no opening after the last closing."""
    for tag in ("think", "tool_call", "answer"):
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != text.count(closing):
            return False
        if text.rfind(opening) > text.rfind(closing):
            return False
    return True


def well_formed(rng: random.Random, turns: int) -> str:
    parts = []
    for _ in range(turns):
        parts.append(f"<think>{rng.choice(['', 'x', 'a b'])}</think>\n")
        parts.append(rng.choice(["<tool_call>{}</tool_call>", "<answer>Paris</answer>", ""]))
    return "".join(parts)


def test_fuzzed_tag_soups_score_minus_one_or_within_unit_interval():
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(TAG_TOKENS) for _ in range(rng.randint(0, 30)))
        lowered = text.lower()
        assert tags_balanced(lowered) == reference_balanced(lowered), text
        score = deepresearcher_score(text, "Paris")
        valid = reference_balanced(lowered) and "<answer>" in lowered and "</answer>" in lowered
        if score == -1.0:
            assert not valid or lowered.find("</answer>", lowered.find("<answer>")) < 0
        else:
            assert 0.0 <= score <= 1.0 and valid


def test_fuzzed_well_formed_turns_balance_and_losing_any_tag_breaks_them():
    rng = random.Random(1)
    for _ in range(2000):
        text = well_formed(rng, rng.randint(1, 5))
        assert tags_balanced(text)
        tags = [t for t in TAG_TOKENS[:6] if t in text]
        dropped = rng.choice(tags)
        at = text.find(dropped)
        assert not tags_balanced(text[:at] + text[at + len(dropped) :])
