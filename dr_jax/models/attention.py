"""Attention implementations behind one call: softmax(q k^T / sqrt(Dh) | mask) v with GQA.

The mask comes in two forms. A bool[B, T, S] array is any mask (the KV-cache path of the
sampler). A bool[B, T] array means causal self-attention (S = T) over left-padded rows: entry t
says whether token t is real. The second form lets an implementation build the mask blockwise
instead of holding [T, T] in memory, which is what long rows need:

    xla      today's einsum + softmax: f32 scores [B, H, T, S] in memory (short rows, reference)
    chunked  queries `chunk` at a time, each block recomputed in the backward pass
    splash   TPU: the Pallas splash-attention kernel (causal mask; padding = segment 0)
    cudnn    GPU: jax.nn.dot_product_attention(implementation="cudnn")
    auto     splash on TPU, cudnn on GPU, else chunked when a chunk is set, else xla

splash and cudnn need the causal form; given an arbitrary mask they fall back to chunked (one
block when T <= chunk, as in decoding). "xla" with a chunk is "chunked".
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from dr_jax.sharding import BATCH_AXES

AttentionImpl = Literal["auto", "xla", "chunked", "splash", "cudnn"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(AttentionImpl)
DEFAULT_CHUNK = 1024  # queries per block of "chunked" when no chunk is given
_MASKED = -1e30  # finite, so a query row with no visible key (left padding) stays NaN-free
_SPLASH_BLOCK = 128  # splash tiles rows in blocks of this many tokens (TPU lane width)


def resolve(impl: str, platform: str, chunk: int | None = None) -> str:
    """The implementation `impl` means on `platform` ("tpu", "gpu", "cpu"): "auto" resolved."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r}: use one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(
        platform, "chunked" if chunk else "xla"
    )


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    chunk: int | None = None,
    impl: str = "xla",
) -> jax.Array:
    """q [B, T, H, Dh], k/v [B, S, Hkv, Dh], mask bool[B, T, S] or bool[B, T] (causal, see the
    module doc) -> [B, T, H, Dh]; query head h reads key/value head h // (H / Hkv). Scores and
    softmax are float32 (splash and cudnn: the kernels' own accumulation)."""
    impl = resolve(impl, jax.default_backend(), chunk)
    causal = mask.ndim == 2
    if impl == "splash" and causal:
        return splash(q, k, v, mask)
    if impl == "cudnn" and causal:
        return dot_product(q, k, v, mask, "cudnn")
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # [B, Hkv, S, Dh]
    if impl != "xla" or chunk:
        return chunked(q, k, v, mask, chunk or DEFAULT_CHUNK)
    return _attend(q, k, v, _full_mask(mask, k.shape[2]))


def _full_mask(mask: jax.Array, slots: int) -> jax.Array:
    """bool[B, T, S]: a causal-form mask expanded (query t sees real keys s <= t)."""
    if mask.ndim == 3:
        return mask
    causal = jnp.tril(jnp.ones((mask.shape[1], slots), bool))
    return causal[None] & mask[:, None, :]


def chunked(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, chunk: int) -> jax.Array:
    """Queries `chunk` at a time (lax.map), each block rematerialised in the backward pass, so
    memory holds [chunk, S] scores per head instead of [T, S]. A causal-form mask is built per
    block from token positions: no [T, S] mask exists either. k/v come heads first,
    [B, Hkv, S, Dh], as the KV cache holds them (decoding is one block: T <= chunk)."""
    batch, length = q.shape[:2]
    if length <= chunk:
        return _attend(q, k, v, _full_mask(mask, k.shape[2]))
    pad = -length % chunk
    blocks = (length + pad) // chunk
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_blocks = q.reshape(batch, blocks, chunk, *q.shape[2:]).swapaxes(0, 1)
    if mask.ndim == 3:
        mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))  # padded query rows see nothing
        masks = mask.reshape(batch, blocks, chunk, mask.shape[-1]).swapaxes(0, 1)
        block_mask = lambda m: m
    else:
        masks = jnp.arange(blocks) * chunk  # each block's first query position
        key_pos = jnp.arange(k.shape[2])

        def block_mask(start):
            query_pos = start + jnp.arange(chunk)
            return (key_pos[None, :] <= query_pos[:, None])[None] & mask[:, None, :]

    attend_block = jax.checkpoint(lambda qm: _attend(qm[0], k, v, block_mask(qm[1])))
    out = jax.lax.map(attend_block, (q_blocks, masks)).swapaxes(0, 1)
    return out.reshape(batch, length + pad, *out.shape[3:])[:, :length]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """The reference: q [B, T, H, Dh] over k/v laid out as [B, Hkv, S, Dh], mask bool[B, T, S]."""
    batch, length, heads, head_dim = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # [B, Hkv, G*T, Dh]: each key/value head with its G query heads' rows stacked, so every
    # matmul (and its gradient) contracts a single axis.
    q = q.reshape(batch, length, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, kv_heads, group * length, head_dim)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(batch, kv_heads, group, length, slots) / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    probs = probs.reshape(batch, kv_heads, group * length, slots)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(batch, kv_heads, group, length, -1)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def dot_product(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str
) -> jax.Array:
    """jax.nn.dot_product_attention (cuDNN's flash attention on GPU) with our mask forms; the
    causal form passes is_causal plus the key padding, so cuDNN can skip the upper triangle."""
    if mask.ndim == 2:
        keys = mask[:, None, None, :]
        mask = jnp.broadcast_to(keys, (q.shape[0], 1, q.shape[1], k.shape[1]))
        causal = True
    else:
        mask, causal = mask[:, None], False
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )


def splash(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, interpret: bool = False
) -> jax.Array:
    """The TPU splash-attention kernel over causal, left-padded rows (valid bool[B, T]).

    Padding is segment 0 and real tokens segment 1, so real queries never see padding (a padded
    query sees the padding before it: finite garbage the caller masks). GQA runs the kernel's
    multi-query form once per KV head. Under a mesh (jax.set_mesh) the kernel is shard_mapped:
    rows over data x fsdp, heads over tp when both head counts divide it. Rows are padded at the
    end to a multiple of 128 tokens (the kernel's tile)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    length, heads, head_dim = q.shape[1:]
    pad = -length % _SPLASH_BLOCK
    padded = length + pad
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        valid = jnp.pad(valid, ((0, 0), (0, pad)))
    block = max(b for b in (512, 256, 128) if padded % b == 0)
    sizes = sa.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mesh = jax.sharding.get_abstract_mesh()
    tp = mesh.shape.get("tp", 1) if not mesh.empty else 1
    head_axis = "tp" if heads % tp == 0 and k.shape[2] % tp == 0 and tp > 1 else None
    kernel = sa.make_splash_mqa_single_device(  # called with one KV head's G query heads
        sa.MultiHeadMask([sa.CausalMask((padded, padded))] * (heads // k.shape[2])),
        block_sizes=sizes,
        interpret=interpret,
    )

    def run(q, k, v, valid):
        kv_heads, group = k.shape[2], q.shape[2] // k.shape[2]
        q = q * (1.0 / math.sqrt(head_dim))
        # [B, Hkv, G, T, Dh] and [B, Hkv, S, Dh]: one multi-query call per (row, KV head).
        qg = q.reshape(q.shape[0], padded, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
        kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        segments = valid.astype(jnp.int32)

        def one_row(qr, kr, vr, seg):
            ids = sa.SegmentIds(seg, seg)
            return jax.vmap(lambda a, b, c: kernel(a, b, c, segment_ids=ids))(qr, kr, vr)

        out = jax.vmap(one_row)(qg, kg, vg, segments)  # [B, Hkv, G, T, Dh]
        return out.transpose(0, 3, 1, 2, 4).reshape(q.shape)

    if not mesh.empty:
        rows = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None
        spec = PartitionSpec(rows, None, head_axis, None)
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(spec, spec, spec, PartitionSpec(rows, None)),
            out_specs=spec,
            check_vma=False,
        )
    out = run(q, k, v, valid)
    return out[:, :length]
