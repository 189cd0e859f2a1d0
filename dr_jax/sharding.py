"""Device meshes, logical-axis partition rules and multi-host start-up.

The mesh always has the axes ("data", "fsdp", "tp"):
  data  pure data parallelism: parameters replicated, batch rows split;
  fsdp  ZeRO-3 style: parameters split along the model width ("embed"), batch rows split too;
  tp    tensor parallelism: heads, MLP width and vocabulary split.
Parameters carry logical axis names (`policy.logical_axes()`); one rule table maps each name to
a mesh axis, so changing the parallelism is editing a table, not the model.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")  # mesh axes that split the rows of a batch

# logical axis name -> mesh axis (None: replicated). Names follow MaxText's conventions.
DEFAULT_RULES: Mapping[str, str | None] = {
    "vocab": "tp",
    "embed": "fsdp",
    "heads": "tp",
    "kv_heads": "tp",
    "mlp": "tp",
    "head_dim": None,
    "layers": None,
}


@dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ("data", "fsdp", "tp") mesh axes; -1 on one axis takes the remaining devices."""

    data: int = 1  # data-parallel replicas (parameters replicated across them)
    fsdp: int = -1  # parameter/optimizer sharding along the model width; -1 = all other devices
    tp: int = 1  # tensor parallelism over heads / MLP / vocabulary

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete (data, fsdp, tp) shape for `num_devices`, or ValueError saying what fits."""
        sizes = [self.data, self.fsdp, self.tp]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh {self}: sizes must be positive, with at most one -1 (fill)")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh {self}: {num_devices} devices are not divisible by {known}; "
                    f"{_what_fits(num_devices)}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {'x'.join(map(str, sizes))} (data x fsdp x tp) needs {math.prod(sizes)} "
                f"devices but {num_devices} are available; {_what_fits(num_devices)}"
            )
        return sizes[0], sizes[1], sizes[2]


def _what_fits(num_devices: int) -> str:
    fits = [f"{f}x{num_devices // f}" for f in range(num_devices, 0, -1) if num_devices % f == 0]
    return f"meshes that fit (fsdp x tp): {', '.join(fits)}"


def parse_mesh(spec: str | MeshConfig) -> MeshConfig:
    """Reads "4x4" (fsdp x tp), "2x2x2" (data x fsdp x tp) or "fsdp=4,tp=4" / "data=2,fsdp=2,tp=2".

    Named forms leave unnamed axes at 1; "auto" or "" puts every device on fsdp.
    """
    if isinstance(spec, MeshConfig):
        return spec
    text = spec.strip().lower()
    if text in ("", "auto"):
        return MeshConfig()
    if "=" in text:
        sizes: dict[str, int] = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in MESH_AXES or name in sizes or not re.fullmatch(r"-?\d+", value.strip()):
                raise ValueError(_mesh_help(spec))
            sizes[name] = int(value)
        return MeshConfig(**{axis: sizes.get(axis, 1) for axis in MESH_AXES})
    parts = text.split("x")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
        raise ValueError(_mesh_help(spec))
    sizes_list = [int(p) for p in parts]
    if len(sizes_list) == 2:
        sizes_list.insert(0, 1)
    return MeshConfig(*sizes_list)


def _mesh_help(spec: str) -> str:
    return (
        f"cannot read mesh {spec!r}: write FSDPxTP like '4x4', DATAxFSDPxTP like '2x2x2', or "
        "named sizes like 'fsdp=4,tp=4' / 'data=2,fsdp=2,tp=2'"
    )


def make_mesh(spec: str | MeshConfig = "auto", devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp", "tp") mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh(spec).resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _axis_size(mesh: Mesh, axis: str) -> int:
    return int(mesh.shape.get(axis, 1))


def logical_to_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec of one array from its logical axis names.

    Refuses two logical axes of one array on the same mesh axis (the rule table is wrong). A
    dimension the mesh axis does not divide (e.g. 2 KV heads on tp=4) is replicated instead,
    with a warning, because that is correct, only less memory-efficient.
    """
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match array shape {tuple(shape)}")
    unknown = [name for name in logical if name is not None and name not in rules]
    if unknown:
        raise ValueError(
            f"no sharding rule for logical axis {unknown[0]!r}; known: {sorted(rules)}"
        )
    mapped = [None if name is None else rules[name] for name in logical]
    used = [axis for axis in mapped if axis is not None]
    if len(used) != len(set(used)):
        raise ValueError(
            f"logical axes {tuple(logical)} map to mesh axes {tuple(mapped)}: two dimensions of "
            "one array cannot share a mesh axis; give one of them another axis (or None)"
        )
    spec: list[str | None] = []
    for name, size, axis in zip(logical, shape, mapped, strict=True):
        if axis is not None and size % _axis_size(mesh, axis):
            log.warning(
                "replicating logical axis %r of size %d: mesh axis %r has size %d, which does "
                "not divide it",
                name,
                size,
                axis,
                _axis_size(mesh, axis),
            )
            axis = None
        spec.append(axis)
    return PartitionSpec(*spec)


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def param_shardings(
    params: Any, logical_axes: Any, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES
) -> Any:
    """NamedSharding for every parameter, in a pytree with the exact structure of `params`.

    `logical_axes` holds one tuple of names per array leaf of `params`, in the same order
    (e.g. `policy.logical_axes()` for an nnx.State of Params).
    """
    leaves, treedef = jax.tree.flatten(params)
    axes = jax.tree.leaves(logical_axes, is_leaf=_is_axes)
    if len(axes) != len(leaves):
        raise ValueError(f"{len(axes)} logical-axis tuples for {len(leaves)} parameter arrays")
    specs = [
        logical_to_spec(a, np.shape(x), mesh, rules) for a, x in zip(axes, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, spec) for spec in specs])


def put_global(value: Any, sharding: NamedSharding) -> jax.Array:
    """Place one array as a global array with `sharding`.

    A host array (NumPy) must hold the same values on every process; a jax.Array is resharded.
    """
    if isinstance(value, jax.Array) and (
        jax.process_count() == 1 or not value.is_fully_addressable
    ):
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_tree(tree: Any, shardings: Any) -> Any:
    """`put_global` over two pytrees of the same structure."""
    return jax.tree.map(put_global, tree, shardings)


def shard_params(
    params: Any, logical_axes: Any, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES
) -> Any:
    """Parameters placed on `mesh` by the logical-axis rules."""
    return shard_tree(params, param_shardings(params, logical_axes, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over ("data", "fsdp"), every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """The number of row shards: a batch's rows must be a multiple of it."""
    return math.prod(_axis_size(mesh, a) for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    return int(value) if value else None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Join a multi-process JAX job when the environment says one was launched.

    Explicit: JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    Detected by JAX itself: Slurm (SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1) and
    multi-host Cloud TPU (TPU_WORKER_HOSTNAMES lists several hosts). Otherwise the run stays a
    single process. Returns whether this process is part of a multi-process job.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    num = _env_int(env, "JAX_NUM_PROCESSES")
    if num is not None and num > 1:
        coordinator = env.get("JAX_COORDINATOR_ADDRESS")
        pid = _env_int(env, "JAX_PROCESS_ID")
        if not coordinator or pid is None:
            raise ValueError(
                f"JAX_NUM_PROCESSES={num} also needs JAX_COORDINATOR_ADDRESS=host:port and "
                "JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) in every process's environment"
            )
        log.info("joining %d-process JAX job at %s as process %d", num, coordinator, pid)
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num, process_id=pid
        )
        return True
    detected = (
        (_env_int(env, "SLURM_NTASKS") or 1) > 1
        or (_env_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )
    if detected:
        log.info("multi-process cluster detected in the environment; joining it")
        jax.distributed.initialize()
    return detected
