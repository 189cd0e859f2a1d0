"""One finished rollout: the exact tokens the policy saw and which of them it sampled."""

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TrajectoryFinish = Literal[
    "answer", "format_error", "max_turns", "context_budget", "length", "abort", "sampler_error"
]
"""answer: an <answer> turn; format_error: a turn parse_turn rejected; max_turns: the turn limit
with a tool call pending; context_budget: no room left for another turn or observation (in the
agent's budget or the sampler's context: the policy's own doing); length: a turn hit
max_new_tokens; abort: the sampler dropped the request (a pause, a NaN); sampler_error: it
raised."""

INFRA_FAILURES = frozenset({"abort", "sampler_error"})
"""Finishes caused by the infrastructure (a server outage, a device OOM), not by the policy: such a
trajectory is never scored as the policy's failure (train/grpo.py drops it from the loss)."""


@dataclass
class Trajectory:
    """Token-in/token-out record of one (question, sample) rollout.

    `response_ids` = sampled turn ids and rendered observation ids, concatenated in order, so
    `prompt_ids + response_ids` is the conversation the policy conditioned on; `loss_mask` and
    `sampler_logprobs` are aligned with `response_ids` (mask 1 and the sampler's log-prob on
    sampled ids, 0 and 0.0 on observation ids).
    """

    question: str
    group_id: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    text: str = ""
    """The response as the policy saw it: generation prefix + decoded response_ids (what the
    reward scores; observations and special tokens kept)."""
    answer: str | None = None
    finish_reason: TrajectoryFinish = "max_turns"
    error: str = ""
    """Why a format_error or sampler_error ended the trajectory."""
    num_turns: int = 0
    num_tool_calls: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    """The conversation after the prompt, for people to read: {"role": "assistant", "content":
    the turn as parsed} and {"role": "tool", "name": ..., "content": the observation}."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: sampling (awaiting the sampler), tools (awaiting the executor), total."""

    def append(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Appends sampled ids (with their log-probs, mask 1) or observation ids (None, mask 0)."""
        self.response_ids.extend(ids)
        if logprobs is None:
            self.loss_mask.extend([0] * len(ids))
            self.sampler_logprobs.extend([0.0] * len(ids))
        else:
            if len(logprobs) != len(ids):
                raise ValueError(f"{len(ids)} sampled ids but {len(logprobs)} log-probs")
            self.loss_mask.extend([1] * len(ids))
            self.sampler_logprobs.extend(logprobs)

    @property
    def num_tokens(self) -> int:
        """Context length: prompt + response."""
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
