"""Supervised warm start on the world oracle's demonstrations (loss on assistant tokens only).

A random tiny policy never emits a well-formed tool call, so every rollout scores -1 and GRPO
has no signal. Fine-tuning first on the oracle's solved trajectories gives a policy that
already searches, browses and answers; RL then improves from there.

Each demonstration is laid out exactly as the agent would have produced it: the prompt (ending
with the generation prefix), then per turn the assistant text after that prefix + <|im_end|>
(loss mask 1) and the rendered observation (mask 0).

The loss is the token-mean negative log-likelihood of the assistant tokens,
    L = -sum_{t in A} log p(x_t | x_<t) / |A|,
and only the hidden states at the positions in A are unembedded: with a 151,665-token vocabulary
the LM head is nearly all of a small model's cost, and the assistant turns are ~15% of a
demonstration (the rest is the prompt and the tool observations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dr_jax.train.batching import PaddedSequences, pad_sequences
from dr_jax.train.config import SFTConfig
from dr_jax.train.logprobs import num_scored_positions, sequence_logprobs
from dr_jax.train.optim import make_optimizer

Demonstration = Any  # dr_jax.world.oracle.Demonstration: .question, .turns, .f1


def demonstration_ids(
    demo: Demonstration, template: Any, tokenizer: Any, *, today: str | None, end_of_turn: str
) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, response_ids, loss_mask) of one demonstration, laid out like a rollout."""
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
    questions: Sequence[Any],
    tools: Any,
    base_url: str,
    max_turns: int,
    *,
    trust_snippets: bool = False,
    concurrency: int = 8,
) -> list[Demonstration]:
    """The oracle's demonstrations for `questions`, with the run's own tools (so observations
    look exactly like the ones GRPO rollouts will see); unsolved questions are dropped."""
    from dr_jax.world.oracle import solve

    limit = asyncio.Semaphore(concurrency)

    async def one(q: Any) -> Demonstration:
        async with limit:
            return await solve(q, tools, base_url, max_turns, trust_snippets=trust_snippets)

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
    """`config.steps` padded batches, cycling through the rows in seeded shuffled epochs."""
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


class SupervisedTrainer:
    """The warm start's optimizer (`SFTConfig.optimizer`) on the masked NLL computed by the
    learner's own log-prob pass, one jitted step per batch (parameters donated)."""

    CHUNK = 128  # trained positions unembedded at once

    def __init__(self, policy: Any, config: SFTConfig) -> None:
        self.policy = policy
        self.tx = make_optimizer(config.optimizer())
        self._step = jax.jit(self._step_fn, donate_argnums=(0, 1), static_argnums=5)

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def nll(self, params, tokens, attention_mask, loss_mask, num_positions: int) -> jax.Array:
        """Token-mean NLL of the trained tokens (position 0 is never trained: nothing predicts
        it)."""
        logp, _ = sequence_logprobs(self.policy, params, tokens, attention_mask, chunk=self.CHUNK,
                                    loss_mask=loss_mask, num_positions=num_positions)  # fmt: skip
        trained = (loss_mask > 0).at[:, 0].set(False)
        return -jnp.sum(logp * trained) / jnp.maximum(jnp.sum(trained), 1)

    def _step_fn(self, params, opt_state, tokens, attention_mask, loss_mask, num_positions):
        loss, grads = jax.value_and_grad(self.nll)(
            params, tokens, attention_mask, loss_mask, num_positions
        )
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(self, params: Any, opt_state: Any, seqs: PaddedSequences) -> tuple[Any, Any, float]:
        """One update; returns the new (params, opt_state) and the batch NLL before it."""
        k = num_scored_positions(seqs.loss_mask, seqs.tokens.shape[1], self.CHUNK)
        params, opt_state, loss = self._step(
            params, opt_state, seqs.tokens, seqs.attention_mask, seqs.loss_mask, k
        )
        return params, opt_state, float(loss)


def supervised_finetune(
    policy: Any,
    config: SFTConfig,
    batches: Iterator[PaddedSequences],
    *,
    log: Callable[[int, dict[str, float]], None],
    advance: Callable[[], None] = lambda: None,
    log_every: int = 10,
) -> Any:
    """Fine-tunes `policy.params` on the batches; returns the new parameters. Logs the NLL of
    each batch before its update (a held-out estimate until the data repeats)."""
    trainer = SupervisedTrainer(policy, config)
    params = jax.tree.map(jnp.copy, policy.params)
    opt_state = trainer.init(params)
    window: list[float] = []
    for i, seqs in enumerate(batches, start=1):
        params, opt_state, loss = trainer.step(params, opt_state, seqs)
        window.append(loss)
        advance()
        if i == 1 or i % log_every == 0 or i == config.steps:
            log(i, {"sft/nll": float(np.mean(window))})
            window = []
    return params
