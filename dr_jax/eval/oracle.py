"""The world oracle's turns replayed as a sampler: a pipeline check that must score F1 = 1."""

import asyncio
from typing import Any

from dr_jax.eval.markers import ASSISTANT_TURN, END_OF_TURN, USER_TURN
from dr_jax.rollout import SampleResult, SamplingParams
from dr_jax.rollout.prompts import PromptTemplate
from dr_jax.tools import ToolExecutor
from dr_jax.world import World
from dr_jax.world.oracle import Demonstration
from dr_jax.world.oracle import solve as oracle_solve

WORLD = "world"


class OracleSampler:
    """A `Sampler` that answers each prompt with the world oracle's next assistant turn.

    The oracle (`dr_jax.world.oracle`) solves a world question with the real tools, so its
    turns are correct by construction. Replayed through the agent, tools and scorer, they must
    score F1 ≈ 1: a check that the pipeline scores what it should. The oracle solves a question
    the first time it is asked, with the same tools the agent uses (same world server, so the
    same URLs and observations) and the same turn budget; turn k of a conversation gets the
    oracle's turn k.
    """

    def __init__(
        self,
        world: World,
        tokenizer: Any,
        tools: ToolExecutor,
        template: PromptTemplate,
        max_turns: int = 10,
    ) -> None:
        if tools.config.search_backend != WORLD or not tools.config.search_url:
            raise ValueError("the oracle replays the world: use --tools.search-backend world")
        self._questions = {q.question: q for q in world.questions}
        self._tokenizer = tokenizer
        self._tools = tools
        self._prefix = template.generation_prefix
        self._max_turns = max_turns
        self._solved: dict[str, asyncio.Task[Demonstration]] = {}

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> list[SampleResult]:
        return list(await asyncio.gather(*(self._next_turn(p) for p in prompts)))

    async def _next_turn(self, prompt_ids: list[int]) -> SampleResult:
        text = self._tokenizer.decode(prompt_ids, skip_special_tokens=False)
        user = text.index(USER_TURN) + len(USER_TURN)
        question = text[user : text.index(END_OF_TURN, user)]
        if question not in self._questions:
            raise ValueError(f"the oracle knows only world questions, not {question!r}")
        if question not in self._solved:
            url = self._tools.config.search_url
            solving = oracle_solve(self._questions[question], self._tools, url, self._max_turns)
            self._solved[question] = asyncio.ensure_future(solving)
        turns = (await self._solved[question]).turns
        turn = turns[min(text.count(ASSISTANT_TURN) - 1, len(turns) - 1)][0]
        reply = turn.removeprefix(self._prefix) + END_OF_TURN
        ids = self._tokenizer.encode(reply, add_special_tokens=False)
        return SampleResult(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop")
