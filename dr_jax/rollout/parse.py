"""Parse one model turn into an answer, a tool call or a format error (never raises).

The rules are DeepResearcher's (reference §5), applied to the turn's full text, i.e. the
injected generation prefix `<think>` followed by the decoded sampled tokens:

1. `<think>` and `<answer>` present: the turn answers (an answer wins over a tool call);
   `</think>` and an `</answer>` after the first `<answer>` are required.
2. Else `<think>` and `<tool_call>` present: `</think>` and `</tool_call>` are required; the
   text between the first `<tool_call>` and the next `</tool_call>` must be a JSON object with
   `name` in {web_search, browse_webpage} and object `arguments`: `web_search` needs a list
   `query`, `browse_webpage` a non-empty list `url_list` (extra argument keys are kept).
3. Anything else is a format error.

The original's bug (a batch-wide `think` flag overwritten by the previous sample's think text,
reference §5 and §19.13) cannot happen here: each turn is parsed on its own.
"""

import json
from dataclasses import dataclass
from typing import Literal

from dr_jax.tools.calls import ToolCall

TurnKind = Literal["answer", "tool_call", "format_error"]


@dataclass(frozen=True)
class Turn:
    """What the agent does next: stop with `answer`, run `tool_call`, or stop on `error`."""

    kind: TurnKind
    answer: str | None = None
    tool_call: ToolCall | None = None
    error: str = ""
    think: str = ""


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """Text between the first `open_tag` and the next `close_tag`; None if either is missing."""
    start = text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    return None if end < 0 else text[start:end]


def _format_error(error: str) -> Turn:
    return Turn(kind="format_error", error=error)


def _tool_call(payload: str) -> ToolCall | str:
    """The validated call in a `<tool_call>` body, or the reason it is not one."""
    try:
        call = json.loads(payload)
    except (ValueError, RecursionError) as err:
        return f"tool call is not valid JSON: {err}"
    if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
        return 'tool call must be a JSON object with "name" and "arguments"'
    name, arguments = call["name"], call["arguments"]
    if not isinstance(arguments, dict):
        return '"arguments" must be a JSON object'
    if name == "web_search":
        if not isinstance(arguments.get("query"), list):
            return 'web_search needs "query": a list of strings'
    elif name == "browse_webpage":
        if not isinstance(arguments.get("url_list"), list) or not arguments["url_list"]:
            return 'browse_webpage needs "url_list": a non-empty list of URLs'
    else:
        return f"unknown tool {name!r}: use web_search or browse_webpage"
    return ToolCall(name=name, arguments=arguments)


def parse_turn(text: str) -> Turn:
    """Classify a model turn (text starts with the injected `<think>`); never raises."""
    if not isinstance(text, str):
        return _format_error(f"turn text must be a string, got {type(text).__name__}")
    if "<think>" not in text:
        return _format_error("missing <think>")
    think = _between(text, "<think>", "</think>")
    if "<answer>" in text:
        answer = _between(text, "<answer>", "</answer>")
        if think is None:
            return _format_error("missing </think>")
        if answer is None:
            return _format_error("missing </answer> after <answer>")
        return Turn(kind="answer", answer=answer, think=think)
    if "<tool_call>" in text:
        if think is None:
            return _format_error("missing </think>")
        payload = _between(text, "<tool_call>", "</tool_call>")
        if payload is None:
            return _format_error("missing </tool_call> after <tool_call>")
        call = _tool_call(payload)
        if isinstance(call, str):
            return _format_error(call)
        return Turn(kind="tool_call", tool_call=call, think=think)
    return _format_error("neither <answer> nor <tool_call> in the turn")
