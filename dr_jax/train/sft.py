"""Supervised warm start on the world oracle's demonstrations (loss on assistant tokens only).

A random tiny policy never emits a well-formed tool call, so every rollout scores -1 and GRPO
has no signal. Fine-tuning first on the oracle's solved trajectories gives a policy that
already searches, browses and answers; RL then improves from there.

Each demonstration is laid out exactly as the agent would have produced it: the prompt (ending
with the generation prefix), then per turn the assistant text after that prefix + <|im_end|>
(loss mask 1) and the rendered observation (mask 0). The update is the learner's own step with
advantage 1 on-policy: ratio = exp(logp - stop_grad(logp)) = 1, so the gradient of
-token_mean(A * ratio) is the gradient of the token-mean negative log-likelihood.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from dr_jax.train.batching import PaddedSequences, pad_sequences
from dr_jax.train.config import SFTConfig
from dr_jax.train.step import TrainBatch

Demonstration = Any  # dr_jax.world.oracle.Demonstration: .question, .turns, .f1


def demonstration_ids(
    demo: Demonstration, template: Any, tokenizer: Any, *, today: str | None, end_of_turn: str
) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, response_ids, loss_mask) of one demonstration, token-exact with a rollout."""
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    prompt = template.prompt_ids(tokenizer, demo.question.question, today=today)
    response: list[int] = []
    mask: list[int] = []
    for text, observation in demo.turns:
        turn = text.removeprefix(template.generation_prefix)
        ids = [*tokenizer.encode(turn, add_special_tokens=False), end_id]
        response += ids
        mask += [1] * len(ids)
        if observation is not None:
            obs = template.observation_ids(tokenizer, observation)
            response += obs
            mask += [0] * len(obs)
    return prompt, response, mask


async def solve_questions(
    questions: Sequence[Any], tools: Any, base_url: str, max_turns: int, concurrency: int = 8
) -> list[Demonstration]:
    """The oracle's demonstrations for `questions`, with the run's own tools (so observations
    look exactly like the ones GRPO rollouts will see); unsolved questions are dropped."""
    from dr_jax.world.oracle import solve

    limit = asyncio.Semaphore(concurrency)

    async def one(q: Any) -> Demonstration:
        async with limit:
            return await solve(q, tools, base_url, max_turns)

    demos = await asyncio.gather(*(one(q) for q in questions))
    return [d for d in demos if d.f1 >= 1.0]


def sft_batches(
    rows: Sequence[tuple[list[int], list[int], list[int]]],
    config: SFTConfig,
    *,
    pad_id: int,
    multiple: int,
    max_len: int,
    seed: int,
) -> Iterator[PaddedSequences]:
    """Yields `config.steps` padded batches, cycling through the rows in seeded shuffled epochs."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(config.steps):
        take = []
        while len(take) < config.batch_size:
            if not order:
                order = rng.permutation(len(rows)).tolist()
            take.append(order.pop())
        yield pad_sequences(
            [rows[i][0] for i in take],
            [rows[i][1] for i in take],
            [rows[i][2] for i in take],
            pad_id=pad_id,
            multiple=multiple,
            max_len=max_len,
        )


def token_nll(learner: Any, params: Any, seqs: PaddedSequences) -> float:
    """Mean negative log-likelihood per assistant token of `seqs` under `params`."""
    logp = np.asarray(learner.logprobs(params, seqs.tokens, seqs.attention_mask))
    return float(-(logp * seqs.loss_mask).sum() / max(seqs.loss_mask.sum(), 1.0))


def supervised_finetune(
    learner: Any,
    state: Any,
    batches: Iterable[PaddedSequences],
    *,
    log: Callable[[int, dict[str, float]], None],
    log_every: int = 10,
) -> Any:
    """Runs one update per batch; logs the token NLL of the batch about to be trained on
    (before its update, so it is a held-out estimate) every `log_every` steps and at the end."""
    batches = list(batches)
    for i, seqs in enumerate(batches, start=1):
        if i == 1 or i % log_every == 0 or i == len(batches):
            log(i, {"sft/nll": token_nll(learner, state.params, seqs)})
        batch = TrainBatch(
            tokens=seqs.tokens,
            attention_mask=seqs.attention_mask,
            loss_mask=seqs.loss_mask,
            advantages=np.ones(seqs.num_rows, np.float32),
        )
        state, _ = learner.train_step(state, batch)
    return state
