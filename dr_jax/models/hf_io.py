"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors` <-> Policy.

Names: our stacked `layers/attn/q_proj/kernel` [L, D, H, Dh] is HF's
`model.layers.{i}.self_attn.q_proj.weight` [H*Dh, D] for each layer i (kernels are the
transpose of torch's Linear weight, with the head axes split out).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, SingleDeviceSharding

from dr_jax.models.config import ModelConfig
from dr_jax.models.gguf import GGUFModel
from dr_jax.models.policy import Policy, abstract_model, named_shardings
from dr_jax.models.safetensors_io import read_safetensors, write_safetensors
from dr_jax.models.sources import resolve_model

_INDEX = "model.safetensors.index.json"
_TOP_LEVEL = {
    ("embed",): "model.embed_tokens.weight",
    ("norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}
_MODULE_NAMES = {
    "attn": "self_attn",
    "input_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
}
ParamPath = tuple[str, ...]


def hf_name(path: ParamPath, layer: int | None = None) -> str:
    """Our parameter path (+ layer index for stacked ones) -> the HF tensor name."""
    if path in _TOP_LEVEL:
        return _TOP_LEVEL[path]
    *modules, leaf = path[1:]
    suffix = "bias" if leaf == "bias" else "weight"
    modules = [_MODULE_NAMES.get(m, m) for m in modules]
    return ".".join(["model.layers", str(layer), *modules, suffix])


def hf_shape(path: ParamPath, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one (per-layer) parameter of ours. Kernels are [out, in] with heads merged;
    o_proj is the one kernel whose input has two axes (heads, head_dim)."""
    if path[-1] == "kernel":
        if path[-2] == "o_proj":
            return (shape[-1], math.prod(shape[:-1]))
        return (math.prod(shape[1:]), shape[0])
    if path[-1] == "bias":
        return (math.prod(shape),)
    return shape


def to_ours(path: ParamPath, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (tensor.T if path[-1] == "kernel" else tensor).reshape(shape)


def to_hf(path: ParamPath, array: np.ndarray) -> np.ndarray:
    shape = hf_shape(path, array.shape)
    return array.reshape(shape[::-1]).T if path[-1] == "kernel" else array.reshape(shape)


class _Checkpoint:
    """The tensors of a checkpoint directory, memory-mapped, found by name across shards."""

    def __init__(self, directory: Path):
        index = directory / _INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({directory / name for name in weight_map.values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors files (nor {_INDEX})")
        self.location: dict[str, Path] = {}
        self.tensors: dict[str, np.ndarray] = {}
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file}: listed in {index} but missing")
            for name, tensor in read_safetensors(file).items():
                self.tensors[name] = tensor
                self.location[name] = file
        self.directory = directory

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"{self.directory}: tensor {name} is missing from the checkpoint")
        tensor = self.tensors[name]
        if tuple(tensor.shape) != tuple(expected_shape):
            raise ValueError(
                f"{self.location[name]}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected_shape)}"
            )
        return tensor


def read_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (an HF model directory has config.json)")
    try:
        return ModelConfig.from_hf(json.loads(path.read_text()))
    except KeyError as e:
        raise ValueError(f"{path}: required field {e} is missing") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def load_pretrained(
    path: str | Path, *, dtype=jnp.float32, mesh: Mesh | None = None, remat: bool = False
) -> Policy:
    """A Policy with f32 params; `dtype` is the compute dtype. `path`: an HF directory, a .gguf
    file, a catalog name or a Hugging Face Hub id (`dr_jax.models.sources.resolve_model`).

    Tensors are memory-mapped and each device receives only its own shard (on a mesh, placed by
    the default logical-axis rules), so host memory peaks near one layer's tensor per device.
    """
    source = resolve_model(path)
    if source.suffix == ".gguf":
        checkpoint = GGUFModel(source)
        config = checkpoint.config
    else:
        config = read_config(source)
        checkpoint = _Checkpoint(source)
    graphdef, abstract = abstract_model(config)
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    else:
        shardings = named_shardings(abstract, mesh)
    flat_shardings = dict(nnx.to_flat_state(shardings))

    def load(path: ParamPath, var: nnx.Variable) -> nnx.Variable:
        shape = var.get_value().shape
        stacked = path[0] == "layers"
        layer_shape = shape[1:] if stacked else shape

        def read(name: str) -> np.ndarray:
            tensor = checkpoint.get(name, hf_shape(path, layer_shape))
            return to_ours(path, tensor, layer_shape)

        def block(index: tuple[slice, ...]) -> np.ndarray:
            if not stacked:
                return np.asarray(read(hf_name(path))[index], dtype=np.float32)
            layers = range(config.num_layers)[index[0]]
            block_shape = np.broadcast_to(np.float32(0), layer_shape)[index[1:]].shape
            out = np.empty((len(layers), *block_shape), np.float32)  # filled layer by layer
            for j, i in enumerate(layers):
                out[j] = read(hf_name(path, i))[index[1:]]
            return out

        sharding = flat_shardings[path].get_value()
        return var.replace(jax.make_array_from_callback(shape, sharding, block))

    params = nnx.from_flat_state([(p, load(p, v)) for p, v in nnx.to_flat_state(abstract)])
    return Policy(config, graphdef, params, dtype=dtype, remat=remat)


def save_pretrained(
    policy: Policy,
    path: str | Path,
    *,
    dtype=jnp.float32,
    max_shard_bytes: int = 4 << 30,
    tokenizer: Any = None,
) -> Path:
    """Writes `config.json` and HF-named safetensors (sharded above max_shard_bytes, with an
    index) that `transformers.AutoModelForCausalLM.from_pretrained` loads. dtype=jnp.bfloat16
    halves the files (e.g. for an SGLang weight sync); a transformers `tokenizer` is saved
    beside them, making the directory a complete model a server can start from. Returns it."""
    directory = Path(path)
    np_dtype = np.dtype(dtype)
    entries = []
    for key, var in nnx.to_flat_state(policy.params):
        array = var.get_value()
        if key[0] == "layers":
            for i in range(policy.config.num_layers):
                entries.append(_entry(key, array, i, np_dtype))
        else:
            entries.append(_entry(key, array, None, np_dtype))
    shards = _split(entries, max_shard_bytes)
    if jax.process_index() != 0:
        for shard in shards:  # join the cross-host gathers; process 0 writes
            for *_, make in shard:
                make()
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    config = policy.config.to_hf(dtype=np_dtype.name)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    count = len(shards)
    names = [f"model-{n:05d}-of-{count:05d}.safetensors" for n in range(1, count + 1)]
    if count == 1:
        names = ["model.safetensors"]
    # A re-save into the same directory (weight sync) leaves no stale shard for a loader to glob.
    for old in directory.glob("model*.safetensors"):
        if old.name not in names:
            old.unlink()
    (directory / _INDEX).unlink(missing_ok=True)
    weight_map, total = {}, 0
    for name, shard in zip(names, shards, strict=True):
        write_safetensors(directory / name, shard)
        for tensor_name, shape, dt, _ in shard:
            weight_map[tensor_name] = name
            total += math.prod(shape) * dt.itemsize
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / _INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def _host(array: jax.Array) -> np.ndarray:
    """The full value on this host (gathered from other hosts when the array spans them)."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _entry(key: ParamPath, array: jax.Array, layer: int | None, dtype: np.dtype):
    shape = array.shape if layer is None else array.shape[1:]

    def make() -> np.ndarray:
        value = _host(array if layer is None else array[layer])
        return to_hf(key, value).astype(dtype)

    return hf_name(key, layer), hf_shape(key, shape), dtype, make


def _split(entries: list, max_bytes: int) -> list[list]:
    """Consecutive groups of tensors, each group under max_bytes (a larger tensor stands alone)."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(entry[1]) * entry[2].itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards
