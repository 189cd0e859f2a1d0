"""In-process sampler over the policy's KV cache, with continuous batching.

A fixed number of slots (rows of one `KVCache`) decode together. Requests from the concurrent
agent loop queue up; between decode chunks every free slot takes a waiting request, which is
prefilled on a small cache of its own (batch and length bucketed to powers of two, so prefill
compiles once per bucket, not per request) and copied into its row. A decode chunk is
`decode_chunk` steps of `lax.scan` in one jitted call, so dispatch is paid once per chunk; a
row that stops mid-chunk just stops writing. One long trajectory therefore never idles the
other slots: they are refilled as soon as their request ends.

Sampling per row: z = logits / T; the token is drawn from softmax(z) truncated by top-k / top-p
(a two-level inverse CDF with one uniform per row; greedy = argmax when T = 0), and its log-prob is
log softmax(z)[token] of the untruncated distribution (T = 1 for greedy), which is what
`losses.token_logprobs(logits, tokens, T)` computes in training. The uniform of a row's n-th
token comes from fold_in(PRNGKey(request seed), n): same seed, same tokens, whichever slot or
batch the request lands in.

Parameters are the policy's own arrays (`update_params` swaps them, no copy), so a sampler
colocated with the learner reads its sharded params on its mesh directly.
"""

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import astuple
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dr_jax.models import KVCache, Policy
from dr_jax.rollout.sampler import SampleResult, SamplingParams
from dr_jax.sharding import BATCH_AXES, batch_divisor

MAX_STOP_IDS = 8  # stop ids per row on device (eos ids + the request's own)
CDF_BLOCK = 1024  # vocabulary block of the two-level inverse-CDF draw
MIN_SPAN = 256  # fewest cache slots a decode chunk attends over (spans are powers of two)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slots:
    """Per-row decoding state, [B] each (stop_ids [B, MAX_STOP_IDS], key u32[B, 2])."""

    pending: Any  # last sampled token, not yet in the cache
    count: Any  # tokens sampled so far
    active: Any  # decoding (has a pending token to write)
    key: Any  # raw PRNG key of the request
    temperature: Any
    top_p: Any
    top_k: Any
    max_new: Any
    stop_ids: Any  # -1 padded

    @classmethod
    def empty(cls, batch: int) -> "Slots":
        return cls(
            pending=np.zeros(batch, np.int32),
            count=np.zeros(batch, np.int32),
            active=np.zeros(batch, bool),
            key=np.zeros((batch, 2), np.uint32),
            temperature=np.ones(batch, np.float32),
            top_p=np.ones(batch, np.float32),
            top_k=np.full(batch, -1, np.int32),
            max_new=np.ones(batch, np.int32),
            stop_ids=np.full((batch, MAX_STOP_IDS), -1, np.int32),
        )


def truncate_logprobs(
    logp: jax.Array, top_p: jax.Array, top_k: jax.Array, iterations: int = 40
) -> jax.Array:
    """logp f32[B, V] with entries outside each row's top-k and top-p nucleus set to -inf.

    The nucleus is the shortest prefix (by descending probability) whose mass reaches top_p;
    ties at the threshold are kept. Both thresholds are found by bisection on the value t:
    the largest t with count(logp >= t) >= k, and with sum(p[logp >= t]) >= top_p. Forty
    halvings of the logp range are finer than float32 spacing, so the kept sets are exact,
    and each costs one pass over V (a sort of V costs far more on CPU).
    """
    vocab = logp.shape[-1]
    finite = jnp.where(jnp.isfinite(logp), logp, jnp.inf)
    low = jnp.min(finite, axis=-1)
    high = jnp.max(logp, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    p = jnp.exp(logp)

    def halve(_, bounds):
        k_lo, k_hi, p_lo, p_hi = bounds
        k_mid, p_mid = (k_lo + k_hi) / 2, (p_lo + p_hi) / 2
        k_ok = jnp.sum(logp >= k_mid[:, None], axis=-1) >= k
        p_ok = jnp.sum(jnp.where(logp >= p_mid[:, None], p, 0.0), axis=-1) >= top_p
        return (
            jnp.where(k_ok, k_mid, k_lo),
            jnp.where(k_ok, k_hi, k_mid),
            jnp.where(p_ok, p_mid, p_lo),
            jnp.where(p_ok, p_hi, p_mid),
        )

    k_lo, _, p_lo, _ = jax.lax.fori_loop(0, iterations, halve, (low, high, low, high))
    kth = jnp.where(k < vocab, _snap(logp, k_lo), low)
    pth = jnp.where(top_p < 1, _snap(logp, p_lo), low)
    threshold = jnp.maximum(kth, pth)[:, None]
    return jnp.where(logp >= threshold, logp, -jnp.inf)


def _snap(logp: jax.Array, t: jax.Array) -> jax.Array:
    """The smallest entry of each row that is >= t[b] (the bisection's exact threshold)."""
    return jnp.min(jnp.where(logp >= t[:, None], logp, jnp.inf), axis=-1)


def draw(weights: jax.Array, u: jax.Array, block: int = CDF_BLOCK) -> jax.Array:
    """Inverse-CDF draw: for weights f32[B, V] >= 0 and u f32[B] in (0, 1), the first index i
    with sum(weights[:i+1]) >= u * sum(weights), always one of positive weight.

    Two levels (block sums, then one block) instead of a cumsum over V: a V-long scan costs
    several passes on CPU, this costs one.
    """
    batch, vocab = weights.shape
    pad = -vocab % block
    w = jnp.pad(weights, ((0, 0), (0, pad))).reshape(batch, -1, block)
    mass = w.sum(-1)  # [B, V / block]
    upto = jnp.cumsum(mass, axis=-1)
    target = u * upto[:, -1]
    b = jnp.argmax(upto >= target[:, None], axis=-1)
    before = jnp.where(b > 0, jnp.take_along_axis(upto, (b - 1)[:, None], -1)[:, 0], 0.0)
    inner = before[:, None] + jnp.cumsum(jnp.take_along_axis(w, b[:, None, None], 1)[:, 0], -1)
    j = jnp.argmax(inner >= jnp.minimum(target, inner[:, -1])[:, None], axis=-1)
    return (b * block + j).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Paths:
    """Which costly sampling paths a call compiles in (static: at most four variants)."""

    truncate: bool = False  # some row samples with top-p < 1 or top-k > 0
    greedy: bool = False  # some row decodes greedily (a V-wide argmax is slow on CPU)


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    paths: Paths = Paths(truncate=True, greedy=True),
) -> tuple[jax.Array, jax.Array]:
    """logits f32[B, V], raw keys u32[B, 2] -> (tokens i32[B], log-probs f32[B]) (module doc).

    `paths` may leave out truncation or argmax when no row needs them."""
    greedy = temperature <= 0
    z = logits.astype(jnp.float32) / jnp.where(greedy, 1.0, temperature)[:, None]
    top = jnp.max(z, axis=-1, keepdims=True)
    weights = jnp.exp(z - top)  # softmax(z) up to its normaliser
    lse = top[:, 0] + jnp.log(jnp.sum(weights, axis=-1))
    if paths.truncate:
        kept = jnp.isfinite(truncate_logprobs(z - lse[:, None], top_p, top_k))
        weights = jnp.where(kept | greedy[:, None], weights, 0.0)
    tiny = jnp.finfo(jnp.float32).tiny
    u = jax.vmap(lambda k: jax.random.uniform(k, (), minval=tiny, maxval=1.0))(keys)
    tokens = draw(weights, u)
    if paths.greedy:
        tokens = jnp.where(greedy, jnp.argmax(z, axis=-1), tokens)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(z, tokens[:, None], axis=-1)[:, 0] - lse


def _emit(
    slots: Slots, logits: jax.Array, rows: jax.Array, paths: Paths
) -> tuple[Slots, jax.Array, jax.Array]:
    """Samples the next token of `rows` bool[B]; returns slots, tokens (-1 off rows), log-probs."""
    keys = jax.vmap(jax.random.fold_in)(slots.key, slots.count)
    tokens, logprobs = sample_tokens(
        logits, keys, slots.temperature, slots.top_p, slots.top_k, paths
    )
    count = slots.count + rows
    stopped = jnp.any(tokens[:, None] == slots.stop_ids, axis=-1) | (count >= slots.max_new)
    slots = dataclasses.replace(
        slots,
        pending=jnp.where(rows, tokens, slots.pending),
        count=count,
        active=jnp.where(rows, ~stopped, slots.active),
    )
    return slots, jnp.where(rows, tokens, -1), logprobs


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6), donate_argnums=2)
def _decode(
    policy: Policy, params, cache: KVCache, slots: Slots, steps: int, paths: Paths, span: int
):
    """`steps` decode steps: write each active row's pending token, sample the next one.
    The steps run on a split copy of the first `span` cache slots (>= every row's length after
    the chunk), written back at the end: each step then reads and updates the layers' blocks in
    place (module doc of `dr_jax.models.cache`).
    Returns the cache, slots, tokens i32[steps, B] (-1 where idle) and log-probs f32[steps, B].
    Compiled once per (policy, shapes, span): every sampler over the same policy shares it."""

    layers = policy.split_layers(params)  # copied once per chunk, not at every step

    def step(carry, _):
        window, slots = carry
        pending, active = slots.pending[:, None], slots.active.astype(jnp.int32)
        logits, window = policy.extend(params, window, pending, active, layers=layers)
        slots, tokens, logprobs = _emit(slots, logits, slots.active, paths)
        return (window, slots), (tokens, logprobs)

    carry = (cache.split(span), slots)
    (window, slots), (tokens, logprobs) = jax.lax.scan(step, carry, length=steps)
    return cache.join(window), slots, tokens, logprobs


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9), donate_argnums=2)
def _prefill(
    policy: Policy, params, cache: KVCache, slots: Slots, rows, tokens, lengths, n, chunk, paths
):
    """Prefills prompts tokens i32[b, n] (right-padded, lengths i32[b]) on a fresh [b, n] cache
    in chunks, copies it into cache rows `rows` i32[b] (B = padding, dropped) and samples each
    row's first token. Returns cache, slots, tokens i32[B] (-1 elsewhere), log-probs f32[B]."""
    b, batch = tokens.shape[0], cache.lengths.shape[0]
    small = policy.init_cache(b, n)

    def step(carry, i):
        small, last = carry
        piece = jax.lax.dynamic_slice_in_dim(tokens, i * chunk, chunk, axis=1)
        num_new = jnp.clip(lengths - i * chunk, 0, chunk)
        logits, small = policy.extend(params, small, piece, num_new)
        return (small, jnp.where((num_new > 0)[:, None], logits, last)), None

    last = jnp.zeros((b, policy.config.vocab_size), jnp.float32)
    (small, last), _ = jax.lax.scan(step, (small, last), jnp.arange(n // chunk))
    span = min(n, cache.max_len)
    k = cache.k.at[:, rows, :, :span].set(small.k[..., :span, :], mode="drop")
    v = cache.v.at[:, rows, :, :span].set(small.v[..., :span, :], mode="drop")
    cache = KVCache(k, v, cache.lengths.at[rows].set(lengths, mode="drop"))
    logits = jnp.zeros((batch, last.shape[-1]), jnp.float32).at[rows].set(last, mode="drop")
    fresh = jnp.zeros(batch, bool).at[rows].set(True, mode="drop")
    slots, first, logprobs = _emit(slots, logits, fresh, paths)
    return cache, slots, first, logprobs


@dataclasses.dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    seed: int
    stop_ids: tuple[int, ...]
    max_new: int
    future: asyncio.Future
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)

    def result(self, reason: str) -> SampleResult:
        return SampleResult(self.tokens, self.logprobs, reason)


def cache_shardings(mesh: Mesh, kv_heads: int) -> KVCache:
    """The KV cache's layout: rows over data x fsdp, KV heads over tp when it divides them."""
    tp = "tp" if kv_heads % mesh.shape.get("tp", 1) == 0 else None
    kv = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, tp, None, None))
    return KVCache(kv, kv, NamedSharding(mesh, PartitionSpec(BATCH_AXES)))


def _bucket(n: int, floor: int) -> int:
    """Smallest power of two >= max(n, floor)."""
    return 1 << (max(n, floor, 1) - 1).bit_length()


class JaxSampler:
    """`Sampler` running the policy in this process; see the module doc.

    eos_token_ids: ids that end every request (kept in its output), e.g. <|im_end|>.
    max_batch_size: slots decoded together (rows of the KV cache).
    max_seq_len: cache length per row: prompt + new tokens of one request.
    decode_chunk: decode steps per jitted call (refills happen between chunks).
    prefill_chunk, min_prefill_bucket: prefill piece length and smallest length bucket.
    tokenizer: needed only for SamplingParams.stop strings.
    seed: seeds of requests that bring none (SamplingParams.seed None).

    With `mesh`, the KV cache and per-row state are split by rows over the mesh's batch axes
    and the params stay as the learner placed them. On several processes (a pod), each process
    owns `max_batch_size / process_count` slots and serves its own agent loop; every process
    must sample inside `async with sampler.lockstep():` so that all of them enter each prefill
    and decode call together (bucket sizes are agreed by an all-gather per chunk).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        eos_token_ids: Sequence[int] = (),
        max_batch_size: int = 16,
        max_seq_len: int = 4096,
        decode_chunk: int = 16,
        prefill_chunk: int = 1024,
        min_prefill_bucket: int = 64,
        tokenizer: Any = None,
        seed: int = 0,
        mesh: Mesh | None = None,
    ) -> None:
        if max_batch_size < 1 or max_seq_len < 2 or decode_chunk < 1:
            raise ValueError("max_batch_size >= 1, max_seq_len >= 2 and decode_chunk >= 1 needed")
        if prefill_chunk & (prefill_chunk - 1) or min_prefill_bucket & (min_prefill_bucket - 1):
            raise ValueError("prefill_chunk and min_prefill_bucket must be powers of two")
        self.shards = 1 if mesh is None else batch_divisor(mesh)
        processes = 1 if mesh is None else jax.process_count()
        if max_batch_size % max(self.shards, processes):
            raise ValueError(
                f"max_batch_size {max_batch_size} must be a multiple of the mesh's row shards "
                f"({self.shards}) and of the process count ({processes})"
            )
        self.policy = policy
        self.params = policy.params
        self.eos_token_ids = tuple(eos_token_ids)
        self.batch = max_batch_size
        self.max_len = max_seq_len
        self.decode_chunk = decode_chunk
        self.prefill_chunk = prefill_chunk
        self.min_bucket = min_prefill_bucket
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.multiprocess = processes > 1
        self._owned = self._owned_rows(max_batch_size)  # global ids of this process's slots
        local = len(self._owned)
        self._seeds = itertools.count(seed << 20)
        self._cache = self._empty_cache()
        self._slots = Slots.empty(local)
        self._rows: list[_Request | None] = [None] * local
        self._waiting: deque[_Request] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._leaving = False
        # Device calls run in worker threads and donate the cache: one at a time, and the
        # thread itself keeps the new cache, so an event loop that ends mid-call loses nothing.
        self._device = threading.Lock()
        # busy_seconds: wall time inside prefill and decode calls (they never overlap), so a
        # caller can split a rollout's wall time into sampling and waiting on tools.
        self.stats = {
            "prefill_calls": 0, "decode_calls": 0, "decode_steps": 0, "tokens": 0,
            "busy_seconds": 0.0,
        }  # fmt: skip

    def update_params(self, params: Any) -> None:
        """Samples with `params` from the next chunk on (the learner's arrays, not a copy)."""
        self.params = params

    # ------------------------------------------------------------------ rows across devices

    def _row_sharding(self, ndim: int, axis: int = 0) -> NamedSharding:
        spec = [None] * ndim
        spec[axis] = BATCH_AXES
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def _owned_rows(self, size: int) -> list[int]:
        """Global indices of an axis of `size` (split over the batch axes) held here, in order."""
        if not self.multiprocess:
            return list(range(size))
        held = self._row_sharding(1).addressable_devices_indices_map((size,)).values()
        return sorted({i for index in held for i in range(size)[index[0]]})

    def _empty_cache(self) -> KVCache:
        if self.mesh is None:
            return self.policy.init_cache(self.batch, self.max_len)
        shardings = cache_shardings(self.mesh, self.policy.config.num_kv_heads)
        init = functools.partial(self.policy.init_cache, self.batch, self.max_len)
        return jax.jit(init, out_shardings=shardings)()

    def _to_global(self, local: np.ndarray, axis: int = 0) -> Any:
        """This process's rows (on `axis`) -> one global array split by rows over the mesh."""
        if not self.multiprocess:
            return local
        owned = self._owned_rows(local.shape[axis] * jax.process_count())
        position = {g: i for i, g in enumerate(owned)}
        shape = list(local.shape)
        shape[axis] *= jax.process_count()

        def block(index):
            rows = [position[g] for g in range(shape[axis])[index[axis]]]
            return np.take(local, rows, axis=axis)

        return jax.make_array_from_callback(
            tuple(shape), self._row_sharding(local.ndim, axis), block
        )

    def _to_local(self, array: Any, axis: int = 0) -> np.ndarray:
        """The rows (on `axis`) of a global array that this process owns, as NumPy."""
        if not self.multiprocess:
            return np.array(array)
        owned = self._owned_rows(array.shape[axis])
        position = {g: i for i, g in enumerate(owned)}
        shape = list(array.shape)
        shape[axis] = len(owned)
        out = np.empty(shape, array.dtype)
        for shard in array.addressable_shards:
            rows = range(array.shape[axis])[shard.index[axis]]
            target = [slice(None)] * array.ndim
            target[axis] = [position[g] for g in rows]
            out[tuple(target)] = np.asarray(shard.data)
        return out

    # ---------------------------------------------------------------------- the public API

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[SampleResult]:
        """Queues the prompts (row i seeded with params.seed + i) and awaits their results."""
        if self.multiprocess:
            if self._task is None or self._task.done():
                raise RuntimeError(
                    "a JaxSampler on several processes samples in lockstep: wrap every "
                    "process's rollout in `async with sampler.lockstep():`"
                )
        else:
            self._ensure_running()
        loop = asyncio.get_running_loop()
        stop_ids = tuple(dict.fromkeys((*self.eos_token_ids, *params.stop_token_ids)))
        if len(stop_ids) > MAX_STOP_IDS:
            raise ValueError(f"at most {MAX_STOP_IDS} stop token ids (eos included)")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need the tokenizer: JaxSampler(..., tokenizer=tok)")
        futures = []
        for i, prompt in enumerate(prompts):
            seed = next(self._seeds) if params.seed is None else params.seed + i
            request = _Request(
                prompt=list(prompt),
                params=params,
                seed=seed,
                stop_ids=stop_ids,
                max_new=min(params.max_new_tokens, self.max_len - len(prompt)),
                future=loop.create_future(),
            )
            if request.max_new < 1 or not request.prompt:
                request.future.set_result(request.result("length"))
            else:
                self._waiting.append(request)
            futures.append(request.future)
        self._wake.set()
        return list(await asyncio.gather(*futures))

    @contextlib.asynccontextmanager
    async def lockstep(self) -> AsyncIterator["JaxSampler"]:
        """Serve in lockstep with the other processes until every one of them has left."""
        self._forget_requests()
        self._leaving = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve_lockstep())
        try:
            yield self
        finally:
            self._leaving = True
            await self._task

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._forget_requests()  # of an event loop that has ended
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve())

    def _forget_requests(self) -> None:
        self._rows = [None] * len(self._rows)
        self._slots.active[:] = False
        self._waiting.clear()

    async def _serve(self) -> None:
        """The scheduler: admit waiting requests into free slots, decode a chunk, repeat."""
        while True:
            if not self._waiting and not any(self._rows):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                admitted = self._admit()
                if admitted:
                    longest = max(len(self._rows[row].prompt) for row in admitted)
                    await self._run_prefill(
                        admitted, _bucket(len(admitted), 1), _bucket(longest, self.min_bucket)
                    )
                if any(self._rows):
                    await self._run_decode()
            except Exception as err:
                self._fail_all(err)

    async def _serve_lockstep(self) -> None:
        """The multi-process scheduler: every process runs the same calls each round; the
        prefill buckets and whether to decode are agreed by an all-gather."""
        while True:
            admitted = self._admit()
            longest = max((len(self._rows[row].prompt) for row in admitted), default=0)
            paths, span = self._paths(), self._span()
            mine = np.array(
                [len(admitted), longest, any(self._rows), self._leaving, span, *astuple(paths)],
                np.int32,
            )
            everyone = await asyncio.to_thread(multihost_utils.process_allgather, mine)
            counts, lengths, busy, leaving, spans, *flags = np.asarray(everyone).reshape(-1, 7).T
            paths = Paths(*(bool(flag.any()) for flag in flags))
            if leaving.all() and not counts.any() and not busy.any():
                return
            try:
                if counts.any():
                    b = max(_bucket(int(counts.max()), 1), self.shards // jax.process_count(), 1)
                    n = _bucket(int(lengths.max()), self.min_bucket)
                    await self._run_prefill(admitted, b, n, paths)
                if counts.any() or busy.any():
                    await self._run_decode(paths, int(spans.max()))
                else:
                    await asyncio.sleep(0.005)
            except Exception as err:
                self._fail_all(err)

    def _admit(self) -> list[int]:
        """Moves waiting requests into free rows and writes their sampling state."""
        s, admitted = self._slots, []
        for row in range(len(self._rows)):
            if not self._waiting:
                break
            if self._rows[row] is not None:
                continue
            request = self._waiting.popleft()
            if request.future.done():  # cancelled by its caller
                continue
            p = request.params
            self._rows[row] = request
            s.count[row], s.active[row] = 0, False
            s.key[row] = [(request.seed >> 32) & 0xFFFFFFFF, request.seed & 0xFFFFFFFF]
            s.temperature[row], s.top_p[row], s.top_k[row] = p.temperature, p.top_p, p.top_k
            s.max_new[row] = request.max_new
            s.stop_ids[row] = -1
            s.stop_ids[row, : len(request.stop_ids)] = request.stop_ids
            admitted.append(row)
        return admitted

    def _paths(self) -> Paths:
        """The sampling paths the occupied rows need."""
        busy = np.array([request is not None for request in self._rows])
        s = self._slots
        greedy = busy & (s.temperature <= 0)
        truncate = busy & ~greedy & ((s.top_p < 1) | (s.top_k > 0))
        return Paths(truncate=bool(truncate.any()), greedy=bool(greedy.any()))

    async def _run_prefill(
        self, admitted: list[int], b: int, n: int, paths: Paths | None = None
    ) -> None:
        """Prefills this process's `admitted` rows as `b` bucketed entries of width `n`."""
        chunk = min(n, self.prefill_chunk)
        rows = np.full(b, self.batch, np.int32)  # out of range: dropped
        tokens = np.zeros((b, n), np.int32)
        lengths = np.zeros(b, np.int32)
        for i, row in enumerate(admitted):
            prompt = self._rows[row].prompt
            rows[i], tokens[i, : len(prompt)], lengths[i] = self._owned[row], prompt, len(prompt)
        slots = jax.tree.map(self._to_global, self._slots)
        inputs = self._to_global(rows), self._to_global(tokens), self._to_global(lengths)
        paths = self._paths() if paths is None else paths

        def call():
            with self._device:
                self._cache, *out = _prefill(
                    self.policy, self.params, self._cache, slots, *inputs, n, chunk, paths
                )
            return jax.tree.map(self._to_local, out)

        slots, first, logprobs = await asyncio.to_thread(self._timed, call)
        self.stats["prefill_calls"] += 1
        self._take(slots, first[None], logprobs[None])

    def _span(self) -> int:
        """Cache slots the next decode chunk reads: a power of two (>= MIN_SPAN, so a run
        compiles a handful) covering every busy row's length after the chunk, at most max_len."""
        longest = max(
            (len(r.prompt) + len(r.tokens) for r in self._rows if r is not None), default=0
        )
        return min(self.max_len, _bucket(longest + self.decode_chunk, MIN_SPAN))

    async def _run_decode(self, paths: Paths | None = None, span: int | None = None) -> None:
        slots = jax.tree.map(self._to_global, self._slots)
        paths = self._paths() if paths is None else paths
        span = self._span() if span is None else span

        def call():
            with self._device:
                self._cache, slots_out, tokens, logprobs = _decode(
                    self.policy, self.params, self._cache, slots, self.decode_chunk, paths, span
                )
            local = jax.tree.map(self._to_local, slots_out)
            return local, self._to_local(tokens, 1), self._to_local(logprobs, 1)

        slots, tokens, logprobs = await asyncio.to_thread(self._timed, call)
        self.stats["decode_calls"] += 1
        self.stats["decode_steps"] += self.decode_chunk
        self._take(slots, tokens, logprobs)

    def _timed(self, call: Any) -> Any:
        """call(), its wall time added to stats["busy_seconds"]."""
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.stats["busy_seconds"] += time.perf_counter() - started

    def _take(self, slots: Slots, tokens: np.ndarray, logprobs: np.ndarray) -> None:
        """Records tokens i32[steps, B_local] (-1 = none) and finishes the rows that stopped."""
        self._slots = slots
        for row, request in enumerate(self._rows):
            if request is None:
                continue
            emitted = tokens[:, row] >= 0
            before = len(request.tokens)
            request.tokens.extend(tokens[emitted, row].tolist())
            request.logprobs.extend(logprobs[emitted, row].tolist())
            self.stats["tokens"] += len(request.tokens) - before
            reason = None
            if not self._slots.active[row]:
                last = request.tokens[-1] if request.tokens else None
                reason = "stop" if last in request.stop_ids else "length"
            if request.params.stop and self._cut_at_stop_string(request, before):
                reason = "stop"
            if reason is not None:
                self._slots.active[row] = False
                self._rows[row] = None
                if not request.future.done():
                    request.future.set_result(request.result(reason))

    def _cut_at_stop_string(self, request: _Request, before: int) -> bool:
        """Truncates the request after the first token completing a stop string, if any."""
        decode = self.tokenizer.decode
        if not any(s in decode(request.tokens) for s in request.params.stop):
            return False
        for end in range(before + 1, len(request.tokens) + 1):
            if any(s in decode(request.tokens[:end]) for s in request.params.stop):
                del request.tokens[end:], request.logprobs[end:]
                return True
        return False

    def _fail_all(self, err: Exception) -> None:
        """A device failure ends every admitted request with the error; the sampler recovers
        with a fresh cache for the next ones."""
        for row, request in enumerate(self._rows):
            if request is not None and not request.future.done():
                request.future.set_exception(err)
            self._rows[row] = None
        self._slots = Slots.empty(len(self._rows))
        with self._device:
            self._cache = self._empty_cache()
