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
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dr_jax import losses
from dr_jax.train.batching import PaddedSequences, pad_sequences, round_up
from dr_jax.train.config import SFTConfig

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


def trained_positions(loss_mask: np.ndarray, multiple: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Where each row's trained tokens are: (index i32[B, K], weight f32[B, K]).

    K = round_up(max trained tokens per row, multiple); a row's unused slots point at position 1
    with weight 0. Position 0 is never trained (no token predicts it).
    """
    counts = (loss_mask[:, 1:] > 0).sum(axis=1)
    k = round_up(max(int(counts.max()), 1), multiple)
    index = np.ones((loss_mask.shape[0], k), np.int32)
    weight = np.zeros((loss_mask.shape[0], k), np.float32)
    for b, row in enumerate(loss_mask):
        where = np.flatnonzero(row[1:] > 0) + 1
        index[b, : len(where)] = where
        weight[b, : len(where)] = 1.0
    return index, weight


def masked_nll(
    policy: Any, params: Any, tokens: jax.Array, attention_mask: jax.Array, index: jax.Array,
    weight: jax.Array,
) -> jax.Array:  # fmt: skip
    """Token-mean NLL at `index` [B, K]: hidden[t - 1] is unembedded to predict tokens[t]."""
    hidden = policy.apply(params, tokens, attention_mask, return_hidden=True)  # [B, T, D]
    before = jnp.take_along_axis(hidden, (index - 1)[..., None], axis=1)  # [B, K, D]
    logits = policy.unembed(params, before)  # [B, K, V]
    targets = jnp.take_along_axis(tokens, index, axis=1)
    logp = losses.token_logprobs(logits, targets)
    return -jnp.sum(logp * weight) / jnp.maximum(jnp.sum(weight), 1.0)


class SupervisedTrainer:
    """AdamW on the masked NLL, one jitted step per batch (parameters donated). The learning
    rate warms up linearly, then decays to 0 on a cosine: the last steps at a small rate settle
    the noise of the large one, which is what keeps a tiny policy's samples on format."""

    def __init__(self, policy: Any, config: SFTConfig) -> None:
        self.policy = policy
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, min(max(config.warmup_steps, 1), config.steps - 1), config.steps
        )
        self.tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99))
        self._step = jax.jit(self._step_fn, donate_argnums=(0, 1))

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def _step_fn(self, params, opt_state, tokens, attention_mask, index, weight):
        loss, grads = jax.value_and_grad(partial(masked_nll, self.policy))(
            params, tokens, attention_mask, index, weight
        )
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(self, params: Any, opt_state: Any, seqs: PaddedSequences) -> tuple[Any, Any, float]:
        """One update; returns the new (params, opt_state) and the batch NLL before it."""
        index, weight = trained_positions(seqs.loss_mask)
        params, opt_state, loss = self._step(
            params, opt_state, seqs.tokens, seqs.attention_mask, index, weight
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
