"""Token log-probs (and entropy) of a sequence, chunked over time so [B, T, V] never exists."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dr_jax import losses


def sequence_logprobs(
    policy: Any,
    params: Any,
    tokens: jax.Array,
    attention_mask: jax.Array,
    *,
    chunk: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """logp f32[B, T] with logp[:, t] = log p(tokens[t] | tokens[<t]) (logp[:, 0] = 0), and the
    entropy f32[B, T] of the distribution tokens[t] was drawn from (None unless asked).

    The final hidden states [B, T, D] are unembedded `chunk` positions at a time inside a
    rematerialised scan: peak logits memory is [B, chunk, V], in the forward pass and in the
    backward pass alike (each chunk's logits are recomputed rather than stored).
    """
    hidden = policy.apply(params, tokens, attention_mask, return_hidden=True)[:, :-1]
    targets = tokens[:, 1:]
    b, steps, d = hidden.shape
    chunk = max(1, min(chunk, steps))
    n = -(-steps // chunk)
    pad = n * chunk - steps
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk)

    @jax.checkpoint
    def one_chunk(h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = policy.unembed(params, h)  # f32[B, chunk, V]
        logp = losses.token_logprobs(logits, t, temperature)
        ent = (
            losses.entropy_from_logits(logits, temperature)
            if with_entropy
            else jnp.zeros_like(logp)
        )
        return logp, ent

    def body(
        carry: None, xs: tuple[jax.Array, jax.Array]
    ) -> tuple[None, tuple[jax.Array, jax.Array]]:
        return carry, one_chunk(*xs)

    _, (logp, ent) = jax.lax.scan(body, None, (hidden.swapaxes(0, 1), targets.swapaxes(0, 1)))

    def aligned(x: jax.Array) -> jax.Array:  # [n, B, chunk] -> [B, T] with a leading 0 column
        x = x.swapaxes(0, 1).reshape(b, n * chunk)[:, :steps]
        return jnp.pad(x, ((0, 0), (1, 0)))

    return aligned(logp), aligned(ent) if with_entropy else None
