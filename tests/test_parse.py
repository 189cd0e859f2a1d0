"""parse_turn: DeepResearcher's turn rules (reference §5), without its quirk, never raising."""

import json
import random

import pytest

from dr_jax.rollout.parse import Turn, parse_turn
from dr_jax.tools.calls import ToolCall


def call(name: str, **arguments) -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<think> plan </think>\n<tool_call>\n{body}\n</tool_call>"


def test_answer_turn():
    turn = parse_turn("<think> it is Paris </think>\n<answer> Paris </answer><|im_end|>")
    assert turn == Turn(kind="answer", answer=" Paris ", think=" it is Paris ")


def test_first_answer_wins_and_beats_a_tool_call():
    text = call("web_search", query=["q"]) + "<answer>A</answer><answer>B</answer>"
    assert parse_turn(text).answer == "A"


def test_web_search_call():
    turn = parse_turn(call("web_search", query=["a", "b"]))
    assert turn.kind == "tool_call"
    assert turn.tool_call == ToolCall("web_search", {"query": ["a", "b"]})
    assert turn.think == " plan "


def test_browse_call_keeps_extra_argument_keys():
    turn = parse_turn(call("browse_webpage", url_list=["https://a.org"], query="why"))
    assert turn.tool_call == ToolCall(
        "browse_webpage", {"url_list": ["https://a.org"], "query": "why"}
    )


def test_only_the_first_tool_call_runs():
    text = call("web_search", query=["first"]) + "<tool_call>\n{bad}\n</tool_call>"
    assert parse_turn(text).tool_call.arguments == {"query": ["first"]}


def test_complete_tool_call_before_a_cut_off_still_counts():
    text = call("web_search", query=["q"]) + "\nI will also <think> and then"
    assert parse_turn(text).kind == "tool_call"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think> x\n<answer>a</answer>", "</think>"),
        ("<think> x</think><answer>a", "</answer>"),
        ("<think> x\n<tool_call>{}</tool_call>", "</think>"),
        ('<think> x</think><tool_call>{"name": "web_search"', "</tool_call>"),
        ("<think> x</think><tool_call>{not json}</tool_call>", "JSON"),
        ("<think> x</think><tool_call>[1, 2]</tool_call>", '"name" and "arguments"'),
        ('<think>x</think><tool_call>{"name": "web_search"}</tool_call>', '"arguments"'),
        ('<think>x</think><tool_call>{"name": "web_search", "arguments": [1]}</tool_call>',
         "JSON object"),
        (call("web_search", query="a single string"), "query"),
        (call("web_search"), "query"),
        (call("browse_webpage", url_list=[]), "url_list"),
        (call("browse_webpage", url_list="https://a.org"), "url_list"),
        (call("python", code="1+1"), "unknown tool 'python'"),
        ("<think> just thinking </think> and never acting", "neither"),
        ("no tags at all", "<think>"),
        ("", "<think>"),
    ],
)  # fmt: skip
def test_format_errors(text, reason):
    turn = parse_turn(text)
    assert turn.kind == "format_error"
    assert reason in turn.error
    assert turn.answer is None and turn.tool_call is None


def test_empty_think_does_not_affect_the_next_turn():
    """The original let an empty think text switch later samples to format errors (§19.13)."""
    turns = [
        parse_turn("<think></think><answer>a</answer>"),
        parse_turn(call("web_search", query=["q"])),
    ]
    assert [t.kind for t in turns] == ["answer", "tool_call"]


def test_deeply_nested_json_is_a_format_error():
    text = "<think>x</think><tool_call>" + "[" * 100_000 + "</tool_call>"
    assert parse_turn(text).kind == "format_error"


def test_non_string_input_is_a_format_error():
    assert parse_turn(None).kind == "format_error"  # type: ignore[arg-type]


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "\n",
          " ", "x", "{", "}", '"name"', '"web_search"', '"browse_webpage"', '"arguments"', ":",
          ",", '"query"', '"url_list"', "[", "]", '"q"', "null", "1e999", "\x00", "\ud800", "é",
          "<|im_end|>"]  # fmt: skip


def random_turn(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 40)))
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))


def test_fuzzed_turns_never_raise_and_classify_consistently():
    rng = random.Random(0)
    for _ in range(20_000):
        text = random_turn(rng)
        turn = parse_turn(text)
        assert turn.kind in ("answer", "tool_call", "format_error")
        if turn.kind == "answer":
            assert "<answer>" in text and turn.answer in text
        elif turn.kind == "tool_call":
            assert "<answer>" not in text
            assert turn.tool_call.name in ("web_search", "browse_webpage")
            assert isinstance(turn.tool_call.arguments, dict)
        else:
            assert turn.error
