"""The Qwen2 / Qwen2.5 / Qwen3 dense decoder in Flax NNX.

    x = embed[tokens]
    for each of L layers (one `jax.lax.scan` over stacked weights, or a loop over split ones):
        x = x + Attention(RMSNorm(x))          GQA, RoPE, optional q/k bias or q/k RMSNorm
        x = x + W_down(silu(W_gate x) * W_up x)  after RMSNorm
    hidden = RMSNorm(x);  logits = hidden @ W_out   (W_out = embed^T when tied)

Every parameter is an `nnx.Param` whose `axes` metadata names its logical axes
("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"); the stacked layer axis is unnamed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dr_jax.models.attention import DEFAULT_CHUNK, attention, chunked
from dr_jax.models.config import ModelConfig
from dr_jax.models.remat import checkpointed
from dr_jax.models.rope import rope_frequencies

_INIT_STD = 0.02

KV = tuple[Any, Any]  # a KV cache: k, v [L, B, Hkv, S, Dh], or one layer's [B, Hkv, S, Dh]


class Linear(nnx.Module):
    """y = x · W (+ b): the last len(in_shape) axes of x contract with W[*in_shape, *out_shape]."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        axes: tuple[str | None, ...],
        *,
        bias: bool = False,
        rngs: nnx.Rngs,
    ):
        kernel = _INIT_STD * jax.random.normal(rngs.params(), (*in_shape, *out_shape))
        self.kernel = nnx.Param(kernel, axes=axes)
        self.bias = nnx.Param(jnp.zeros(out_shape), axes=axes[len(in_shape) :]) if bias else None
        self.n_in = len(in_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul(x, self.kernel[...], self.n_in)
        return y if self.bias is None else y + self.bias[...]


def matmul(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """x [..., *in] · w [*in, *out] -> [..., *out], as one 2-D matmul: XLA's CPU backend runs
    the gradients of multi-axis contractions several times slower than a flat [M, K] x [K, N]."""
    lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
    k = math.prod(w.shape[:n_in])
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=out_dtype)
    return y.reshape(*lead, *out)


class RMSNorm(nnx.Module):
    """y = scale * x / sqrt(mean(x^2) + eps), the statistics in float32."""

    def __init__(self, dim: int, eps: float, axis: str | None):
        self.scale = nnx.Param(jnp.ones((dim,)), axes=(axis,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * y.astype(x.dtype)


def rope_angles(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos, sin f32[B, T, 1, Dh/2] of angle p * inv_freq[i] for positions i32[B, T]."""
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates each pair (x_i, x_{i+Dh/2}) of x [B, T, H, Dh] by its angle ("rotate half")."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        bias = cfg.qkv_bias
        self.q_proj = Linear((d,), (h, dh), q_axes, bias=bias, rngs=rngs)
        self.k_proj = Linear((d,), (kv, dh), kv_axes, bias=bias, rngs=rngs)
        self.v_proj = Linear((d,), (kv, dh), kv_axes, bias=bias, rngs=rngs)
        self.o_proj = Linear((h, dh), (d,), ("heads", "head_dim", "embed"), rngs=rngs)
        self.q_norm = RMSNorm(dh, cfg.rms_norm_eps, "head_dim") if cfg.qk_norm else None
        self.k_norm = RMSNorm(dh, cfg.rms_norm_eps, "head_dim") if cfg.qk_norm else None

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        mask: jax.Array,
        cache: KV | None = None,
        slots: jax.Array | None = None,
        layer: jax.Array | None = None,
        attention_chunk: int | None = None,
        attention_impl: str = "xla",
    ) -> tuple[jax.Array, KV | None]:
        """x [B, T, D] -> [B, T, D]. With a cache, k/v of x are first written in place at
        (layer, rows, slots i32[B, T]) of the all-layer cache, or at (rows, slots) of a layer's
        own cache when layer is None (out-of-range slots are dropped); the queries then attend
        over that layer's first S' slots (mask bool[B, T, S'], S' <= S).
        mask: see `dr_jax.models.attention`."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            attended = attention(q, k, v, mask, attention_chunk, attention_impl)
            return self.o_proj(attended), None
        rows = jnp.arange(x.shape[0])[:, None]
        at = (rows, slice(None), slots) if layer is None else (layer, rows, slice(None), slots)
        cache = (
            cache[0].at[at].set(k.astype(cache[0].dtype), mode="drop"),
            cache[1].at[at].set(v.astype(cache[1].dtype), mode="drop"),
        )
        span = mask.shape[-1]  # the slots the queries may see: a prefix of the cache
        k, v = (c[..., :span, :] if layer is None else c[layer, :, :, :span] for c in cache)
        attended = chunked(q, k, v, mask, attention_chunk or DEFAULT_CHUNK)
        return self.o_proj(attended), cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear((d,), (f,), ("embed", "mlp"), rngs=rngs)
        self.up_proj = Linear((d,), (f,), ("embed", "mlp"), rngs=rngs)
        self.down_proj = Linear((f,), (d,), ("mlp", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed")
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed")
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, rope, mask, cache=None, slots=None, layer=None, chunk=None, impl="xla"):
        h, cache = self.attn(self.input_norm(x), rope, mask, cache, slots, layer, chunk, impl)
        x = x + h
        return x + self.mlp(self.post_attn_norm(x)), cache


class Qwen(nnx.Module):
    """The decoder: token ids -> final hidden states; `unembed` turns them into logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        table = _INIT_STD * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size))
        self.embed = nnx.Param(table, axes=("vocab", "embed"))
        keys = jax.random.split(rngs.params(), cfg.num_layers)
        make_layer = lambda key: DecoderLayer(cfg, rngs=nnx.Rngs(params=key))
        self.layers = nnx.vmap(make_layer, in_axes=0, out_axes=0)(keys)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed")
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear((cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), rngs=rngs)
        )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        *,
        cache: KV | None = None,
        slots: jax.Array | None = None,
        remat: bool | str = False,
        attention_chunk: int | None = None,
        attention_impl: str = "xla",
        layers: Sequence[nnx.State] | None = None,
    ) -> tuple[jax.Array, KV | None]:
        """tokens/positions i32[B, T], mask bool[B, T, S] or causal-form bool[B, T] -> hidden
        [B, T, D] and the new cache when one is given. remat: what each layer keeps for the
        backward pass (`dr_jax.models.remat`); attention_chunk and attention_impl pick the
        attention (`dr_jax.models.attention`).

        layers: the layers' params split one per layer (`split_layers`), with a split cache
        (k, v: tuples of [B, Hkv, S, Dh]): the layers then run as a Python loop, so a decode
        loop around this call slices no weights or cache blocks at each step (XLA copies the
        slices a scan over stacked layers takes)."""
        x = jnp.take(self.embed[...], tokens, axis=0)
        rope = rope_angles(positions, rope_frequencies(self.config))
        graphdef, stacked = nnx.split(self.layers)
        run = (attention_chunk, attention_impl)
        if layers is not None:
            new_k, new_v = [], []
            for state, k, v in zip(layers, *cache, strict=True):
                x, (k, v) = nnx.merge(graphdef, state)(x, rope, mask, (k, v), slots, None, *run)
                new_k.append(k)
                new_v.append(v)
            return self.norm(x), (tuple(new_k), tuple(new_v))

        def block(carry, layer_state_and_index):
            x, cache = carry  # the cache rides in the carry, so XLA updates it in place
            layer_state, index = layer_state_and_index
            layer = nnx.merge(graphdef, layer_state)
            return layer(x, rope, mask, cache, slots, index, *run), None

        block = checkpointed(block, remat)
        each_layer = (stacked, jnp.arange(self.config.num_layers))
        (x, cache), _ = jax.lax.scan(block, (x, cache), each_layer)
        return self.norm(x), cache

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> float32 logits [..., V] (accumulated in float32 for bf16 compute)."""
        table = self.embed[...].T if self.lm_head is None else self.lm_head.kernel[...]
        return matmul(hidden, table, out_dtype=jnp.float32)
