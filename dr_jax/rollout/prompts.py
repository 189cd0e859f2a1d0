"""The agent's prompt: system text, tool schemas, and the token ids of each turn boundary.

Everything the policy reads that it did not sample is rendered here by the tokenizer's chat
template (never hand-assembled), so the rollout can concatenate
`prompt_ids + sampled ids + observation_ids + sampled ids + ...` and obtain exactly the
template's rendering of the conversation, without ever re-tokenizing sampled text.

Generation prefix. DeepResearcher appended the literal text `<think>` after every generation
prompt (reference §3) and then trained on it as if sampled (§19.9). dr_jax keeps the prefix,
so the released checkpoints see the same context, but makes it part of the prompt tokens:
`prompt_ids` and `observation_ids` end with it, its loss mask is 0, and the turn text given
to `parse_turn` is `generation_prefix + decode(sampled ids)`.
"""

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = """\
## Setting
* Date: {date}
* Role: a research assistant that answers hard questions by investigating the web

The questions you receive usually cannot be answered from memory: they need several searches \
and careful reading. Before answering, work out what is known, what is missing and how to \
find it.

Two tools are available:
* web_search: runs web searches and lists the results (title, link, snippet).
* browse_webpage: reads pages from your latest search results and reports what they add.

Each of your replies takes exactly one of these two shapes.

To use a tool:
<think>
your reasoning about the next step
</think>
<tool_call>
the tool call, in the format given below
</tool_call>

To answer, once the evidence is sufficient:
<think>
your reasoning
</think>
<answer>
the final answer
</answer>

Keep to these shapes exactly. Put only the answer itself inside <answer></answer>: a short \
phrase, name, number or date, with no explanation. Answer yes-or-no questions with yes or no."""

COMPACT_SYSTEM_PROMPT = """\
You answer questions by searching the web. Every reply has one of two forms.

To search:
<think>what you need to find</think>
<tool_call>{"name": "web_search", "arguments": {"query": ["a few search words"]}}</tool_call>

To answer, once the search results state it:
<think>what the results say</think>
<answer>the answer alone: a name, number or date</answer>"""
"""A short prompt for small chat models (SmolLM2-135M): it shows the call inline instead of a
tool schema, so a 130-token prompt carries the whole protocol (the full prompt is ~550 tokens,
and small models follow a worked shape better than a JSON schema)."""

WEB_SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": (
            "Search the web. Use it when what you have read so far cannot answer the "
            "question, or when the previous results were off-topic."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "query": {
                    "type": "array",
                    "items": {"type": "string", "description": "One search query."},
                    "description": "Queries to run; the first three are used.",
                }
            },
            "required": ["query"],
        },
    },
}

BROWSE_WEBPAGE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "browse_webpage",
        "description": (
            "Read web pages and return the information in them that is new to this "
            "conversation. Use it after a search whose results look relevant."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "url_list": {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "description": "A URL copied from the latest search results.",
                    },
                    "description": "Pages to read, taken from the latest search results.",
                }
            },
            "required": ["url_list"],
        },
    },
}

# A stand-in for one sampled assistant turn, used only to find where the template closes it.
_PLACEHOLDER_TURN = "\x00sampled turn\x00"


def utc_today() -> str:
    """Today's UTC date as YYYY-MM-DD (the date the system prompt states by default)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class PromptTemplate:
    """System prompt (with a `{date}` slot), tool schemas and the injected generation prefix."""

    system: str = SYSTEM_PROMPT
    tools: tuple[dict[str, Any], ...] = (WEB_SEARCH_TOOL, BROWSE_WEBPAGE_TOOL)
    generation_prefix: str = "<think>"
    # Extra keyword arguments for `apply_chat_template` (e.g. Qwen3's `enable_thinking`).
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Break special-token strings ("<|im_end|>"...) found in tool output with a zero-width
    # space, so a web page cannot forge turn boundaries (the original did not).
    escape_special_tokens: bool = True

    @classmethod
    def from_file(
        cls,
        system_path: str | Path,
        tools_path: str | Path | None = None,
        generation_prefix: str = "<think>",
    ) -> "PromptTemplate":
        """A template from a text file (system prompt, `{date}` slot) and a JSON tools list."""
        system_path = Path(system_path)
        if not system_path.is_file():
            raise FileNotFoundError(f"system prompt file {system_path} does not exist")
        tools = cls.tools
        if tools_path is not None:
            tools = tuple(load_tools(tools_path))
        return cls(system_path.read_text(), tools, generation_prefix)

    def system_text(self, today: str | None = None) -> str:
        """The system prompt with its `{date}` slot filled (default: today, UTC)."""
        return self.system.replace("{date}", today or utc_today())

    def messages(self, question: str, today: str | None = None) -> list[dict[str, Any]]:
        """The opening conversation: system prompt, then the question as the user turn."""
        return [
            {"role": "system", "content": self.system_text(today)},
            {"role": "user", "content": question},
        ]

    def render(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool,
    ) -> str:
        """The chat template's text for `messages` with this template's tool schemas.

        A template that does not render tools (SmolLM2's, for one) gets them appended to the
        system message instead, so the policy reads the schemas either way."""
        messages = list(messages)
        if self.tools and "tools" not in (tokenizer.chat_template or ""):
            messages = _with_tools_in_system(messages, self.tools)
        return tokenizer.apply_chat_template(
            messages,
            tools=list(self.tools),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def prompt_text(
        self, tokenizer: PreTrainedTokenizerBase, question: str, today: str | None = None
    ) -> str:
        """Text before the first sampled token: template + generation prompt + prefix."""
        rendered = self.render(tokenizer, self.messages(question, today), True)
        return rendered + self.generation_prefix

    def prompt_ids(
        self, tokenizer: PreTrainedTokenizerBase, question: str, today: str | None = None
    ) -> list[int]:
        """Token ids of `prompt_text` (ends right where the policy starts sampling)."""
        return _encode(tokenizer, self.prompt_text(tokenizer, question, today))

    def observation_text(self, tokenizer: PreTrainedTokenizerBase, observation: str) -> str:
        """Text between a sampled turn's end-of-turn token and the next sampled token.

        Rendered as the difference between the template's text of a conversation ending with
        an assistant turn and the same conversation plus the tool turn and a generation prompt,
        so it follows whatever the template does (for Qwen2.5:
        `\\n<|im_start|>user\\n<tool_response>\\n{observation}\\n</tool_response><|im_end|>
        \\n<|im_start|>assistant\\n` then the generation prefix).
        """
        history = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": _PLACEHOLDER_TURN},
        ]
        before = self.render(tokenizer, history, False)
        if self.escape_special_tokens:
            observation = escape_special_tokens(tokenizer, observation)
        after = self.render(tokenizer, [*history, {"role": "tool", "content": observation}], True)
        if not after.startswith(before):
            raise ValueError(
                "the chat template re-renders earlier turns when a tool turn is added, so "
                "observations cannot be appended token by token: use an incremental template"
            )
        eos = tokenizer.eos_token
        turn_end = before[before.rindex(_PLACEHOLDER_TURN) + len(_PLACEHOLDER_TURN) :]
        if not turn_end.startswith(eos):
            raise ValueError(
                f"the chat template does not close an assistant turn with eos {eos!r}: set the "
                "tokenizer's eos_token to the template's end-of-turn token"
            )
        return turn_end[len(eos) :] + after[len(before) :] + self.generation_prefix

    def observation_ids(self, tokenizer: PreTrainedTokenizerBase, observation: str) -> list[int]:
        """Token ids of `observation_text` (loss mask 0: the policy did not sample them)."""
        return _encode(tokenizer, self.observation_text(tokenizer, observation))


def _with_tools_in_system(
    messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`messages` with a "Tools" section (one JSON schema a line) closing the system message."""
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": ""}, *messages]
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    system = f"{messages[0]['content']}\n\n# Tools\n{schemas}".lstrip()
    return [{**messages[0], "content": system}, *messages[1:]]


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """Tool schemas from a JSON file holding a list of `{"type": "function", ...}` objects."""
    path = Path(path)
    try:
        tools = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read tool schemas from {path}: {err}") from err
    if not isinstance(tools, list) or not all(
        isinstance(tool, dict) and "function" in tool for tool in tools
    ):
        raise ValueError(f'{path} must hold a JSON list of {{"type": "function", ...}} objects')
    return tools


def escape_special_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """`text` with a zero-width space after the first character of every special token."""
    for token in tokenizer.all_special_tokens:
        if token in text:
            text = text.replace(token, f"{token[0]}\u200b{token[1:]}")
    return text


def default_prompt() -> PromptTemplate:
    """dr_jax's own DeepResearcher-format prompt: web_search + browse_webpage, `<think>`."""
    return PromptTemplate()


@dataclass(frozen=True)
class PromptConfig:
    """Which prompt the policy reads (training and evaluation must use the same one)."""

    style: Literal["full", "compact"] = "full"
    """"full": dr_jax's DeepResearcher-format prompt with both tool schemas; "compact": a
    130-token prompt showing the web_search call inline, for small models."""
    system_file: str | None = None
    """Text file replacing the system prompt ({date} is filled in), e.g. DeepResearcher's own."""
    tools_file: str | None = None
    """JSON list of tool schemas replacing the built-in ones (needs --prompt.system-file)."""

    def __post_init__(self) -> None:
        if self.tools_file and not self.system_file:
            raise ValueError("--prompt.tools-file goes with --prompt.system-file: pass both.")

    def template(self) -> PromptTemplate:
        if self.system_file is not None:
            return PromptTemplate.from_file(self.system_file, self.tools_file)
        if self.style == "compact":
            return PromptTemplate(system=COMPACT_SYSTEM_PROMPT, tools=())
        return default_prompt()


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)
