"""The multi-turn research agent: sample a turn, parse it, run its tool, append, repeat.

Token-in/token-out: the context of every turn is `prompt_ids + response_ids`, where
`response_ids` is the concatenation of the ids the sampler returned and the ids of observation
turns rendered by the chat template (`PromptTemplate.observation_ids`). Nothing sampled is ever
decoded and re-encoded, so training sees exactly what the policy conditioned on and produced.
Every trajectory is its own asyncio task with its own `ToolSession`; a failing sampler call ends
only that trajectory (finish reason "sampler_error"), a failing tool becomes an observation.
"""

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from dr_jax.rollout.parse import parse_turn
from dr_jax.rollout.prompts import PromptTemplate, default_prompt
from dr_jax.rollout.sampler import ContextFull, Sampler, SamplingParams
from dr_jax.rollout.trajectory import Trajectory
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.session import ToolSession


class Tools(Protocol):
    """What the agent needs of `dr_jax.tools.ToolExecutor`."""

    async def execute(self, call: ToolCall, session: ToolSession) -> str: ...


@dataclass(frozen=True)
class AgentConfig:
    """Limits and sampling of one rollout."""

    max_turns: int = 10
    """Model turns per trajectory (DeepResearcher: 10)."""
    max_context_tokens: int = 32_768
    """Prompt + response tokens; no turn or observation may go past it."""
    max_observation_chars: int | None = None
    """Characters of an observation tokenized, the rest cut (said in the text); None:
    CHARS_PER_TOKEN x max_context_tokens, which fills the context even at that rate."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Per-turn sampling; the end-of-turn id is always added to its stop ids."""
    max_concurrent: int = 1024
    """Trajectories in flight at once (the sampler and tools have their own limits)."""
    today: str | None = None
    """Date written in the system prompt (YYYY-MM-DD); None = today (UTC)."""
    end_of_turn: str = "<|im_end|>"
    """Token that closes an assistant turn in the chat template."""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_context_tokens < 2:
            raise ValueError(f"max_context_tokens must be >= 2, got {self.max_context_tokens}")
        if self.max_observation_chars is not None and self.max_observation_chars < 1:
            raise ValueError(
                f"max_observation_chars must be >= 1, got {self.max_observation_chars}"
            )
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")


CHARS_PER_TOKEN = 8
"""Twice English text's characters per token: an observation this long, for the whole
context, would not fit it, so the tokenizer never needs to see more."""


def cut_observation(observation: str, max_chars: int) -> str:
    """`observation` with what follows its first `max_chars` characters replaced by a note."""
    if len(observation) <= max_chars:
        return observation
    return observation[:max_chars] + f"\n[cut: {len(observation) - max_chars:,} more characters]"


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a bijective scramble of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def turn_seed(seed: int, group_id: int, sample_index: int, turn: int) -> int:
    """A well-mixed 31-bit seed per (rollout seed, question, sample, turn): same seed, same
    trajectories, whatever order the sampler happens to serve the requests in."""
    x = 0
    for value in (seed, group_id, sample_index, turn):
        x = _mix64(x ^ (value & _MASK64))
    return x & 0x7FFFFFFF


class Agent:
    """`await Agent(sampler, tokenizer, tools).rollout(questions, n_samples, seed)`."""

    def __init__(
        self,
        sampler: Sampler,
        tokenizer: PreTrainedTokenizerBase,
        tools: Tools,
        config: AgentConfig | None = None,
        template: PromptTemplate | None = None,
    ) -> None:
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.tools = tools
        self.config = config or AgentConfig()
        self.template = template or default_prompt()
        end_id = tokenizer.convert_tokens_to_ids(self.config.end_of_turn)
        if end_id is None or end_id == tokenizer.unk_token_id:
            raise ValueError(
                f"end_of_turn {self.config.end_of_turn!r} is not a token of this tokenizer: set "
                "AgentConfig.end_of_turn to the chat template's end-of-turn token"
            )
        self._end_id: int = end_id
        self._max_observation_chars = self.config.max_observation_chars or (
            CHARS_PER_TOKEN * self.config.max_context_tokens
        )
        stops = (end_id, *self.config.sampling.stop_token_ids)
        self._sampling = dataclasses.replace(
            self.config.sampling, stop_token_ids=tuple(dict.fromkeys(stops))
        )

    async def rollout(
        self,
        questions: Sequence[str],
        n_samples: int = 1,
        seed: int = 0,
        *,
        only: Sequence[int] | None = None,
        on_done: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """`n_samples` trajectories per question, all concurrently; ordered by (question,
        sample), with group_id = question index. `only`: just the trajectories of these indices
        k = question * n_samples + sample (a host's share); `on_done` sees each as it ends."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        limit = asyncio.Semaphore(self.config.max_concurrent)
        prompts = [self.prompt_ids(q) for q in questions]

        async def one(k: int) -> Trajectory:
            group, sample = divmod(k, n_samples)
            async with limit:
                trajectory = await self.run(questions[group], prompts[group], group, sample, seed)
            if on_done is not None:
                on_done(trajectory)
            return trajectory

        indices = range(len(questions) * n_samples) if only is None else only
        return list(await asyncio.gather(*(one(k) for k in indices)))

    def prompt_ids(self, question: str) -> list[int]:
        return self.template.prompt_ids(self.tokenizer, question, today=self.config.today)

    async def run(
        self, question: str, prompt_ids: list[int], group_id: int, sample_index: int, seed: int
    ) -> Trajectory:
        """One trajectory: up to max_turns sampled turns with tool observations between them."""
        cfg = self.config
        traj = Trajectory(question, group_id, sample_index, list(prompt_ids))
        session = ToolSession(question=question)
        sampling_s = tools_s = 0.0
        started = time.perf_counter()
        for turn in range(cfg.max_turns):
            room = cfg.max_context_tokens - traj.num_tokens
            if room < 1:
                traj.finish_reason = "context_budget"
                break
            params = dataclasses.replace(
                self._sampling,
                max_new_tokens=min(self._sampling.max_new_tokens, room),
                seed=turn_seed(seed, group_id, sample_index, turn),
            )
            t0 = time.perf_counter()
            try:
                context = traj.prompt_ids + traj.response_ids
                [result] = await self.sampler.generate([context], params)
            except ContextFull:  # the sampler's context is shorter than max_context_tokens
                traj.finish_reason = "context_budget"
                break
            except Exception as err:
                traj.finish_reason, traj.error = "sampler_error", f"{type(err).__name__}: {err}"
                break
            finally:
                sampling_s += time.perf_counter() - t0
            traj.append(result.token_ids, result.logprobs)
            traj.num_turns += 1
            if result.finish_reason == "abort":
                traj.finish_reason = "abort"
                break
            turn_text = self.template.generation_prefix + self.tokenizer.decode(
                result.token_ids, skip_special_tokens=False
            )
            parsed = parse_turn(turn_text)
            traj.messages.append({"role": "assistant", "content": turn_text})
            if parsed.kind == "answer":
                traj.finish_reason, traj.answer = "answer", parsed.answer
                break
            if parsed.kind == "format_error":
                truncated = result.finish_reason == "length"
                traj.finish_reason = "length" if truncated else "format_error"
                traj.error = parsed.error
                break
            if turn == cfg.max_turns - 1:
                traj.finish_reason = "max_turns"
                break
            traj.num_tool_calls += 1
            t0 = time.perf_counter()
            observation = await self._execute(parsed.tool_call, session)
            tools_s += time.perf_counter() - t0
            # A turn cut by a stop string or max_new_tokens lacks the end-of-turn token the
            # template puts before the tool turn: it is added, unsampled (mask 0).
            closing = [] if result.token_ids[-1:] == [self._end_id] else [self._end_id]
            observation = cut_observation(observation, self._max_observation_chars)
            # Tokenizing a long page takes milliseconds: not on the loop every trajectory shares.
            obs_ids = closing + await asyncio.to_thread(
                self.template.observation_ids, self.tokenizer, observation
            )
            if traj.num_tokens + len(obs_ids) >= cfg.max_context_tokens:
                traj.finish_reason = "context_budget"
                break
            traj.append(obs_ids, None)
            traj.messages.append(
                {"role": "tool", "name": parsed.tool_call.name, "content": observation}
            )
        traj.text = self.template.generation_prefix + self.tokenizer.decode(
            traj.response_ids, skip_special_tokens=False
        )
        traj.timings = {
            "sampling": sampling_s,
            "tools": tools_s,
            "total": time.perf_counter() - started,
        }
        return traj

    async def _execute(self, call: ToolCall, session: ToolSession) -> str:
        """The tool's observation; a tool that raises (ToolExecutor never does) is reported to
        the model as an observation instead of ending the rollout."""
        try:
            return await self.tools.execute(call, session)
        except Exception as err:
            return f"{call.name} failed: {type(err).__name__}: {err}"
