"""Token sequences -> padded training arrays, token-exact.

A row is `prompt_ids + response_ids`, left-padded to a common length T (rounded up to a multiple,
so the jitted step sees few distinct shapes). Arrays are aligned to tokens (contracts.md):
`loss_mask[b, t]` = 1 iff token t was sampled by the policy, `sampler_logprobs[b, t]` is the
rollout engine's log p(tokens[t] | tokens[<t]) there and 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class PaddedSequences:
    """Left-padded rows; every array is [B, T]."""

    tokens: np.ndarray  # i32
    attention_mask: np.ndarray  # i32, 1 on real tokens
    loss_mask: np.ndarray  # f32, 1 on sampled (trained) tokens
    sampler_logprobs: np.ndarray  # f32, 0 where loss_mask is 0

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    def take(self, rows: np.ndarray) -> PaddedSequences:
        """The sub-batch of the given row indices."""
        return PaddedSequences(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    response_masks: Sequence[Sequence[int]],
    response_logprobs: Sequence[Sequence[float]] | None = None,
    *,
    pad_id: int,
    multiple: int = 64,
    max_len: int | None = None,
) -> PaddedSequences:
    """Join prompt and response per row and left-pad to T = round_up(longest, multiple).

    A row longer than `max_len` keeps its first `max_len` tokens (its tail is not trained), so
    one runaway trajectory cannot blow up the step's memory.
    """
    if not (len(prompts) == len(responses) == len(response_masks)):
        raise ValueError("prompts, responses and response_masks must have one entry per row")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    width = round_up(max([*lengths, 1]), multiple)
    if max_len is not None:
        width = min(width, max_len)
    b = len(prompts)
    tokens = np.full((b, width), pad_id, np.int32)
    attention = np.zeros((b, width), np.int32)
    loss_mask = np.zeros((b, width), np.float32)
    logprobs = np.zeros((b, width), np.float32)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        mask = response_masks[i]
        if len(mask) != len(response):
            raise ValueError(f"row {i}: {len(mask)} loss-mask entries for {len(response)} tokens")
        row = np.concatenate([np.asarray(prompt, np.int32), np.asarray(response, np.int32)])
        row_mask = np.concatenate([np.zeros(len(prompt), np.float32), np.asarray(mask, np.float32)])
        row_lp = np.zeros(len(row), np.float32)
        if response_logprobs is not None:
            row_lp[len(prompt) :] = np.asarray(response_logprobs[i], np.float32)
        n = min(len(row), width)
        start = width - n
        tokens[i, start:] = row[:n]
        attention[i, start:] = 1
        loss_mask[i, start:] = row_mask[:n]
        logprobs[i, start:] = row_lp[:n] * row_mask[:n]
    return PaddedSequences(tokens, attention, loss_mask, logprobs)


def pad_trajectories(
    trajectories: Sequence, *, pad_id: int, multiple: int = 64, max_len: int | None = None
) -> PaddedSequences:
    """Rollout trajectories (dr_jax.rollout.Trajectory) -> PaddedSequences, rows in order."""
    return pad_sequences(
        [t.prompt_ids for t in trajectories],
        [t.response_ids for t in trajectories],
        [t.loss_mask for t in trajectories],
        [t.sampler_logprobs for t in trajectories],
        pad_id=pad_id,
        multiple=multiple,
        max_len=max_len,
    )


def minibatch_indices(
    num_rows: int, num_minibatches: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Split rows into equal mini-batches (shuffled when an rng is given)."""
    if num_rows % num_minibatches:
        raise ValueError(
            f"{num_rows} rows do not split into {num_minibatches} equal mini-batches: "
            "choose mini_batches dividing questions_per_step * group_size"
        )
    order = rng.permutation(num_rows) if rng is not None else np.arange(num_rows)
    return list(np.split(order, num_minibatches))
