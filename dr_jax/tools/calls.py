"""The one record every part of the agent passes around for a tool invocation."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A parsed `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
