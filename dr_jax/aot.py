"""Compile-only: does a run fit its TPU topology? Answered on a CPU machine, before a pod is spent.

libtpu's compile-only client compiles for a named topology (`v5p:2x2x4`, `v5e:4x4`, `v6e:2x2`,
...) without the chips. The run is built from its config alone (the model's config.json,
abstract parameters; no weights, data, tools or devices), every jitted program it executes is
compiled at the config's real sizes (the learner step at the micro-batch and longest row, the
log-prob pass, the sampler's prefill and decode at its batch and KV size), and each program's
per-device memory comes from the compiler. A program the compiler refuses for memory does not
fit (with the compiler's figure); any other compiler error is raised.

    python launch/train.py --preset deepresearcher --policy.path DIR --mesh 4x4 \\
        --compile-only v5p:2x2x4
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dr_jax.config import PolicyConfig, SamplerConfig
from dr_jax.models import KVCache, ModelConfig, Policy
from dr_jax.models.flops import matmul_params, training_flops_per_token
from dr_jax.models.policy import abstract_model
from dr_jax.models.sources import resolve_config
from dr_jax.sharding import batch_divisor, make_mesh

GIB = 2**30
HEADROOM = 0.10
"""A program fits when its peak stays below (1 - HEADROOM) x HBM: the compiler's figure is not
everything a live process holds (runtime buffers, fragmentation)."""
_AMOUNT = r"\(([\d.]+)([KMGT]?)\)"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass
class ProgramMemory:
    """One compiled program's per-device memory (bytes) and its model FLOPs."""

    name: str
    peak_bytes: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    fits: bool
    model_flops: float
    refused: str = ""  # the compiler's out-of-memory message, when it refused


def topology_devices(topology: str) -> list[Any]:
    """The devices of a named TPU topology, from libtpu's compile-only client."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no pod to discover
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology, platform="tpu").devices)
    except Exception as err:
        raise ValueError(
            f"--compile-only {topology!r}: libtpu cannot build this topology ({err}). Install "
            "the TPU extra (pip install -e '.[tpu]') and name a topology as libtpu does, e.g. "
            "v5p:2x2x4, v5e:4x4, v6e:2x2"
        ) from err


def hbm_bytes(device: Any) -> int:
    """The HBM one device offers programs: its runtime's limit on a real chip; on a
    compile-only device, as the compiler reports it (compile a program that cannot fit and read
    the figure from the refusal)."""
    try:
        return int(device.memory_stats()["bytes_limit"])
    except Exception:  # compile-only devices have no runtime statistics
        pass
    sharding = jax.sharding.SingleDeviceSharding(device)
    huge = jax.jit(lambda x: jnp.outer(x, x) + 1, in_shardings=sharding)
    try:
        huge.lower(jax.ShapeDtypeStruct((2**19,), jnp.float32)).compile()  # 1 TiB of output
    except Exception as err:
        amounts = re.findall(_AMOUNT, str(err))
        if amounts:
            return _bytes(amounts[-1])
        raise
    raise RuntimeError(f"{device.device_kind}: a 1 TiB program compiled; HBM unknown")


def _bytes(amount: tuple[str, str]) -> int:
    return int(float(amount[0]) * _UNITS[amount[1]])


def measure(name: str, lower: Callable[[], Any], hbm: int, flops: float) -> ProgramMemory:
    """Compiles one lowered program and reads its memory; an out-of-memory refusal is a result."""
    budget = hbm * (1 - HEADROOM)
    try:
        stats = lower().compile().memory_analysis()
    except Exception as err:
        message = str(err)
        if "RESOURCE_EXHAUSTED" not in message and "exceed" not in message:
            raise
        amounts = re.findall(_AMOUNT, message)
        needed = _bytes(amounts[0]) if amounts else hbm + 1
        first_line = message.strip().splitlines()[0][:300]
        return ProgramMemory(name, needed, 0, 0, needed, False, flops, refused=first_line)
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return ProgramMemory(
        name,
        int(peak),
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
        peak <= budget,
        flops,
    )


def abstract_policy(policy: PolicyConfig, model: ModelConfig) -> Policy:
    """A Policy of ShapeDtypeStructs with the config's dtype and memory knobs ("auto" on TPU)."""
    graphdef, params = abstract_model(model)
    dtype = jnp.dtype(policy.dtype)
    return Policy(model, graphdef, params, dtype=dtype, **policy.model_options("tpu"))


def model_config(policy: PolicyConfig) -> ModelConfig:
    """The config of the model --policy.path names (a directory needs only its config.json);
    the tiny random model when the path is "tiny"."""
    return ModelConfig.tiny() if policy.is_tiny else resolve_config(policy.path)


def sampler_programs(
    policy: Policy, sampler: SamplerConfig, mesh: Mesh, param_shardings: Any
) -> dict[str, tuple[Callable[[], Any], float]]:
    """The JAX sampler's prefill (its whole batch admitted at once, each prompt the KV length)
    and decode chunk (attending over the whole KV cache), lowered on abstract inputs laid out
    as the sampler lays them out."""
    from dr_jax.rollout.jax_sampler import (
        JaxSampler,
        Paths,
        Slots,
        _decode,
        _prefill,
        cache_shardings,
    )

    cfg, batch, length = policy.config, sampler.max_batch_size, sampler.max_seq_len
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def spec(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding)

    shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
    layout = cache_shardings(mesh, cfg.num_kv_heads)
    cache = KVCache(
        jax.ShapeDtypeStruct(shape, policy.dtype, sharding=layout.k),
        jax.ShapeDtypeStruct(shape, policy.dtype, sharding=layout.v),
        jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=layout.lengths),
    )
    slots = jax.tree.map(lambda x: spec(x, rows), Slots.empty(batch))
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        policy.params,
        param_shardings,
    )
    paths = Paths(truncate=sampler.top_p < 1 or sampler.top_k > 0, greedy=sampler.greedy)
    chunk = min(length, JaxSampler.__init__.__kwdefaults__["prefill_chunk"])
    steps = JaxSampler.__init__.__kwdefaults__["decode_chunk"]
    prompt = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
    row_ids = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    per_token = 2 * matmul_params(cfg)
    attend = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    return {
        "sampler prefill": (
            lambda: _prefill.lower(
                policy, params, cache, slots, row_ids, prompt, row_ids, length, chunk, paths
            ),
            batch * length * (per_token + attend * length / 2),
        ),
        "sampler decode": (
            lambda: _decode.lower(policy, params, cache, slots, steps, paths, length),
            steps * batch * (per_token + attend * length),
        ),
    }


def learner_programs(learner: Any, rows: int, length: int, on_policy: bool) -> dict:
    """The learner's step and log-prob pass at `rows` x `length`."""
    cfg = learner.policy.config
    lowered = learner.lower_abstract(rows, length, on_policy)
    forward = rows * length * training_flops_per_token(cfg, length) / 3
    return {
        "learner step": (lambda: lowered["learner step"], 3 * forward),
        "log-probs (old, ref)": (lambda: lowered["log-probs (old, ref)"], forward),
    }


def check(
    topology: str,
    devices: Sequence[Any],
    programs: dict[str, tuple[Callable[[], Any], float]],
    knobs: str,
    mesh: Mesh,
) -> int:
    """Compiles every program under `mesh`, prints the table and the JSON line; 0 if all fit."""
    hbm = hbm_bytes(devices[0])
    results = []
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        for name, (lower, flops) in programs.items():
            results.append(measure(name, lower, hbm, flops))
            print(_row(results[-1], hbm), flush=True)
    fits = all(r.fits for r in results)
    if not fits:
        bad = ", ".join(r.name for r in results if not r.fits)
        print(f"does not fit ({bad}): {knobs}")
    record = {
        "topology": topology,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "hbm_bytes": hbm,
        "fits": fits,
        "programs": [
            {k: v for k, v in dataclasses.asdict(r).items() if k != "refused" or v} for r in results
        ],
    }
    print(json.dumps(record))
    return 0 if fits else 1


def header(topology: str, devices: Sequence[Any], mesh: Mesh, hbm_note: str = "") -> str:
    axes = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
    return (
        f"compile-only: {topology} ({len(devices)} x {devices[0].device_kind}), mesh {axes}"
        f"{hbm_note}\n{'program':<22} {'peak GiB':>9} {'args':>7} {'out':>7} {'temp':>7} "
        f"{'of HBM':>7}  fits (<= {1 - HEADROOM:.0%} of HBM)"
    )


def _row(r: ProgramMemory, hbm: int) -> str:
    cells = [r.peak_bytes, r.argument_bytes, r.output_bytes, r.temp_bytes]
    gib = " ".join(f"{c / GIB:>{w}.2f}" for c, w in zip(cells, (9, 7, 7, 7), strict=True))
    note = "yes" if r.fits else f"NO{' (compiler refused: ' + r.refused + ')' if r.refused else ''}"
    return f"{r.name:<22} {gib} {r.peak_bytes / hbm:>7.0%}  {note}"


TRAIN_KNOBS = (
    "lower --grpo.micro-batch-size, --policy.remat full, --policy.attention splash (or chunked "
    "with a smaller --policy.attention-chunk), --grpo.logprob-chunk, --grpo.max-row-tokens, "
    "--sampler.max-batch-size / --sampler.max-seq-len, or a larger mesh"
)


def check_train(config: Any, topology: str, devices: Sequence[Any]) -> int:
    """The learner's programs and the JAX sampler's for a TrainConfig on `devices`."""
    from dr_jax.train.run import make_learner

    mesh = make_mesh(config.mesh, devices)
    policy = abstract_policy(config.policy, model_config(config.policy))
    learner = make_learner(config, policy, mesh)
    g = config.grpo
    rows = g.questions_per_step * g.group_size // g.mini_batches
    on_policy = g.mini_batches == g.epochs == 1 and g.tis_cap == 0
    programs = learner_programs(learner, rows, g.max_row_tokens, on_policy)
    if config.sampler.kind == "jax":
        programs |= sampler_programs(policy, config.sampler, mesh, learner.param_shardings)
    print(header(topology, devices, mesh))
    return check(topology, devices, programs, TRAIN_KNOBS, mesh)


def compile_train(config: Any, topology: str) -> int:
    """`launch/train.py --compile-only TOPOLOGY`."""
    return check_train(config, topology, topology_devices(topology))


def preflight(config: Any) -> None:
    """On TPU, the same check on the real devices before the first step: a run that cannot fit
    stops now, naming the knobs, instead of an hour later."""
    if jax.default_backend() != "tpu":
        return
    if check_train(config, "this TPU slice", jax.devices()):
        raise SystemExit(f"the run does not fit this TPU slice: {TRAIN_KNOBS}")


def compile_eval(config: Any, topology: str) -> int:
    """`launch/eval.py run --compile-only`: the sampler's programs over every device."""
    from dr_jax.sharding import param_shardings

    devices = topology_devices(topology)
    mesh = make_mesh("auto", devices)
    policy = abstract_policy(config.policy, model_config(config.policy))
    if config.sampler.max_batch_size % batch_divisor(mesh):
        raise ValueError(
            f"--sampler.max-batch-size {config.sampler.max_batch_size} must be a multiple of "
            f"{batch_divisor(mesh)} (the devices of {topology})"
        )
    shardings = param_shardings(policy.params, policy.logical_axes(), mesh)
    programs = sampler_programs(policy, config.sampler, mesh, shardings)
    print(header(topology, devices, mesh))
    knobs = "lower --sampler.max-batch-size or --sampler.max-seq-len, or a larger topology"
    return check(topology, devices, programs, knobs, mesh)
