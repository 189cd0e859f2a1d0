"""DeepResearcher's reward and answer metrics, with the original semantics (reference §9).

reward(response, gold) = −1 if the `think` / `tool_call` / `answer` tags are unbalanced
anywhere in the (lower-cased) multi-turn response or no `<answer>…</answer>` exists, else the
set-F1 of the first answer against the best gold alias:

    P = |p ∩ g| / |p|,  R = |p ∩ g| / |g|,  F1 = 2PR / (P + R)

over the *sets* of whitespace tokens after `normalize_answer` (lower-case, every ASCII
punctuation character to a space, whitespace collapsed; articles are kept).
"""

import re
import string
from collections.abc import Sequence
from typing import Literal

ANSWER_SPLIT = "<|answer_split|>"
FORMAT_ERROR = -1.0
CHECKED_TAGS = ("tool_call", "think", "answer")

_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))
_FIRST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FIRST_ANSWER_ANY_CASE = re.compile(_FIRST_ANSWER.pattern, re.DOTALL | re.IGNORECASE)
_ASSISTANT_TURN = re.compile(re.escape("<|im_start|>assistant"), re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Lower-case, ASCII punctuation to spaces, whitespace collapsed ("U.S.A." -> "u s a")."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def gold_aliases(answers: str | Sequence[str]) -> list[str]:
    """Aliases as a list: DeepResearcher joins them with `<|answer_split|>` in one string."""
    return answers.split(ANSWER_SPLIT) if isinstance(answers, str) else list(answers)


def _set_f1(prediction: str, gold: str) -> float:
    predicted = set(normalize_answer(prediction).split())
    expected = set(normalize_answer(gold).split())
    common = len(predicted & expected)
    if not predicted or not expected or common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: str | Sequence[str]) -> float:
    """Best word-set F1 over the gold aliases (0.0 when any side is empty)."""
    return max((_set_f1(prediction, gold) for gold in gold_aliases(answers)), default=0.0)


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised alias, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in gold_aliases(answers)))


def tags_balanced(text: str) -> bool:
    """Each of `<think>`, `<tool_call>`, `<answer>` is opened and closed equally often, and
    scanning left to right every opening tag (after the previous match) has a closing tag after
    it. "<think>a</think>" passes; "</think><think>" and "<think>a" fail."""
    for tag in CHECKED_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != text.count(closing):
            return False
        position = 0
        while (start := text.find(opening, position)) >= 0:
            end = text.find(closing, start)
            if end < 0:
                return False
            position = end + 1
    return True


def extract_answer(text: str) -> str | None:
    """Content of the first `<answer>…</answer>` (may span lines), or None."""
    match = _FIRST_ANSWER.search(text)
    return None if match is None else match.group(1)


def deepresearcher_score(
    solution_str: str,
    ground_truth: str | Sequence[str],
    metric: Literal["f1", "em"] = "f1",
) -> float:
    """The training reward: −1 on a format error, else F1 (or EM) of the first answer.

    `solution_str` is the whole decoded response after the prompt (all turns, observations
    included, special tokens kept); `ground_truth` is `"a<|answer_split|>b"` or `["a", "b"]`.
    """
    text = solution_str.lower()
    if not tags_balanced(text):
        return FORMAT_ERROR
    answer = extract_answer(text)
    if answer is None:
        return FORMAT_ERROR
    aliases = [alias.lower() for alias in gold_aliases(ground_truth)]
    return exact_match(answer, aliases) if metric == "em" else f1_score(answer, aliases)


def last_turn_answer(message_str: str) -> str | None:
    """The first answer of the last assistant turn, in its original case (stripped), or None
    when that turn has a format error or no answer. Tags and the turn marker match in any
    case, as they do in DeepResearcher's lower-cased scoring text."""
    turn = _ASSISTANT_TURN.split(message_str)[-1]
    if not tags_balanced(turn.lower()):
        return None
    match = _FIRST_ANSWER_ANY_CASE.search(turn)
    return None if match is None else match.group(1).strip()


def last_turn_scores(message_str: str, ground_truth: str | Sequence[str]) -> tuple[float, float]:
    """(F1, EM) as DeepResearcher's offline scorer computed them (reference §13.3).

    Only the text after the last `<|im_start|>assistant` is scored, and a format error (or no
    answer) scores 0 rather than −1; the first answer of that turn is taken.
    """
    answer = last_turn_answer(message_str)
    if answer is None:
        return 0.0, 0.0
    answer, aliases = answer.lower(), [alias.lower() for alias in gold_aliases(ground_truth)]
    return f1_score(answer, aliases), exact_match(answer, aliases)
