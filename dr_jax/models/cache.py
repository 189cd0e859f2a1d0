"""KVCache: per-row key/value slots for continuous-batching decoding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Row b holds its tokens' keys/values in slots 0 .. lengths[b]-1, with no padding inside.

    k, v: [L, B, Hkv, S, Dh] in the compute dtype (heads before slots: attention reads a head's
    slots as one block, with no transposed copy); lengths: i32[B]. Slots at or past lengths[b]
    hold stale values that no query can see.

    A split cache holds k and v as tuples of L per-layer arrays [B, Hkv, S, Dh] (`split`): a
    decode loop over it updates and reads each layer's block in place, where the stacked form
    would copy each layer's slots out at every step.
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def empty(
        cls, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype
    ) -> KVCache:
        shape = (layers, batch, kv_heads, max_len, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(batch, jnp.int32))

    @property
    def max_len(self) -> int:
        return (self.k[0] if isinstance(self.k, tuple) else self.k).shape[-2]

    def split(self, span: int) -> KVCache:
        """The first `span` slots of every layer, as a split cache (copied once)."""
        take = lambda c: tuple(c[i, :, :, :span] for i in range(c.shape[0]))
        return KVCache(take(self.k), take(self.v), self.lengths)

    def join(self, split: KVCache) -> KVCache:
        """This cache with a split cache of its first slots written back (and its lengths)."""
        put = lambda c, layers: c.at[:, :, :, : layers[0].shape[2]].set(jnp.stack(layers))
        return KVCache(put(self.k, split.k), put(self.v, split.v), split.lengths)

    def reset(self, rows_mask: jax.Array) -> KVCache:
        """Empties the rows where rows_mask bool[B] is true (their slots are then overwritten)."""
        return dataclasses.replace(self, lengths=jnp.where(rows_mask, 0, self.lengths))
