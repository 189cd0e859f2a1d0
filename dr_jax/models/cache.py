"""KVCache: per-row key/value slots for continuous-batching decoding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Row b holds its tokens' keys/values in slots 0 .. lengths[b]-1, with no padding inside.

    k, v: [L, B, S, Hkv, Dh] in the compute dtype; lengths: i32[B]. Slots at or past lengths[b]
    hold stale values that no query can see.
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def empty(
        cls, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype
    ) -> KVCache:
        shape = (layers, batch, max_len, kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(batch, jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def reset(self, rows_mask: jax.Array) -> KVCache:
        """Empties the rows where rows_mask bool[B] is true (their slots are then overwritten)."""
        return dataclasses.replace(self, lengths=jnp.where(rows_mask, 0, self.lengths))
