"""Builders shared by the launchers: policy, tokenizer, sampler, and tools (with the world).

Each turns one config piece from `dr_jax.config` (or `ToolsConfig`) into a live object, so
`launch/train.py` and `launch/eval.py` assemble a run the same way; `settled_heap` is the
state both then run in.
"""

import gc
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from dr_jax.config import PolicyConfig, SamplerConfig
from dr_jax.models import ModelConfig, Policy, init_policy, load_pretrained
from dr_jax.models.tokenizer import load_tokenizer, qwen2_tokenizer
from dr_jax.rollout import JaxSampler, Sampler, SamplingParams, SGLangSampler
from dr_jax.tools import ToolExecutor, ToolsConfig
from dr_jax.world import World, WorldServer

LOOPBACK = "127.0.0.1"


@contextmanager
def settled_heap() -> Iterator[None]:
    """Collect once, then leave every object alive now out of collections until the block ends
    (`gc.freeze`, undone by `gc.unfreeze` so a later collection may free them again).

    Start-up leaves millions of long-lived objects (modules, tokenizer, model, world), and a
    full collection walks them all while the event loop that drives every rollout and tool call
    waits. Measured on benchmarks/tools.py's 71k-object heap alone: one 49 ms pause in a 1.8 s
    run of 1,000 tool calls. Enter it once the run is assembled, around the work.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_policy(config: PolicyConfig, mesh: object = None) -> Policy:
    """The tiny random policy (real Qwen2.5 vocabulary) or a checkpoint: an HF directory, a
    .gguf file, a catalog name, a Hub id (`dr_jax.models.sources.resolve_model`) or a training
    run's directory (its latest checkpoint)."""
    dtype = jnp.dtype(config.dtype)
    options = config.model_options(jax.default_backend())
    if config.is_tiny:
        policy = init_policy(ModelConfig.tiny(), seed=config.seed, dtype=dtype, mesh=mesh)
        return policy.replace(**options)
    return load_pretrained(model_path(config), dtype=dtype, mesh=mesh).replace(**options)


def build_tokenizer(config: PolicyConfig) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, or the real Qwen2.5 tokenizer (built offline) for "tiny"."""
    return qwen2_tokenizer() if config.is_tiny else load_tokenizer(model_path(config))


def model_path(config: PolicyConfig) -> str:
    """--policy.path, where a training run's directory stands for its latest checkpoint."""
    from dr_jax.train.export import is_run_dir, latest_export

    return str(latest_export(config.path)) if is_run_dir(config.path) else config.path


def sampling_params(config: SamplerConfig) -> SamplingParams:
    """Per-turn sampling parameters; temperature 0 is greedy."""
    return SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_new_tokens=config.max_new_tokens,
    )


def build_sampler(
    config: SamplerConfig,
    policy: Policy | None,
    tokenizer: PreTrainedTokenizerBase,
    mesh: Mesh | None = None,
) -> Sampler:
    """The in-process JAX sampler over `policy`, or a client of the SGLang engines.

    `mesh`: the JAX sampler splits its KV cache by rows over the mesh the policy lives on
    (needed on several processes, where it samples in lockstep)."""
    if config.kind == "sglang":
        return SGLangSampler(config.sglang)
    if policy is None:
        raise ValueError("--sampler.kind jax samples from a policy: build one with build_policy.")
    # Qwen chat models end a turn with eos (<|im_end|>) and a document with <|endoftext|>.
    stops = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return JaxSampler(
        policy,
        eos_token_ids=tuple(dict.fromkeys(i for i in stops if i is not None)),
        max_batch_size=config.max_batch_size,
        max_seq_len=config.max_seq_len,
        tokenizer=tokenizer,
        mesh=mesh,
    )


WORLD_PORT = 41766
"""The world's port: its URLs are in every observation, so a run is reproducible only if they
are the same each time."""


def serve_world(world: World) -> WorldServer:
    """The world served on loopback at WORLD_PORT, or at any free port when another process holds
    it (said: the URLs in observations, and so the run, then differ from a run at WORLD_PORT)."""
    try:
        return WorldServer(world, host=LOOPBACK, port=WORLD_PORT).start()
    except OSError:
        warnings.warn(
            f"port {WORLD_PORT} is taken: the world is served at another port, so its URLs (and "
            "this run) differ from a run at the usual one",
            stacklevel=2,
        )
        return WorldServer(world, host=LOOPBACK, port=0).start()


@asynccontextmanager
async def start_world_tools(
    config: ToolsConfig, world: World | None = None, world_seed: int = 0
) -> AsyncIterator[ToolExecutor]:
    """A started `ToolExecutor`; for backend "world" without a URL, also the world's server.

    The offline world (`world`, or one generated from `world_seed`) is served on loopback for
    the life of the context, and the executor is pointed at it and allowed to browse it.
    Other backends (or a world already served at `search_url`) just open the executor.
    """
    if config.search_backend != "world" or config.search_url:
        async with ToolExecutor(config) as tools:
            yield tools
        return
    world = world if world is not None else World.generate(seed=world_seed)
    with serve_world(world) as server:
        # The guard lets the policy browse the world's port, no other on this host.
        served = config.replace(
            search_url=server.url, allow_hosts=(*config.allow_hosts, urlsplit(server.url).netloc)
        )
        async with ToolExecutor(served) as tools:
            yield tools
