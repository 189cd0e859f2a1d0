"""Mesh strings, logical-axis partition rules and multi-host start-up (dr_jax.sharding)."""

import json
import logging
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from dr_jax.sharding import (
    MESH_AXES,
    MeshConfig,
    logical_to_spec,
    make_mesh,
    maybe_initialize_distributed,
    parse_mesh,
)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("4x4", MeshConfig(1, 4, 4)),
        ("8x1", MeshConfig(1, 8, 1)),
        ("fsdp=4,tp=4", MeshConfig(1, 4, 4)),
        ("data=2,fsdp=2,tp=2", MeshConfig(2, 2, 2)),
        ("tp=2", MeshConfig(1, 1, 2)),
        ("2x2x2", MeshConfig(2, 2, 2)),
        (" 1x1 ", MeshConfig(1, 1, 1)),
        ("auto", MeshConfig(1, -1, 1)),
    ],
)
def test_parse_mesh_forms(spec, want):
    assert parse_mesh(spec) == want


@pytest.mark.parametrize("spec", ["4", "4x4x4x4", "fsdp=4,pp=2", "fsdp=x", "axb", "fsdp=2,fsdp=2"])
def test_unreadable_mesh_says_how_to_write_one(spec):
    with pytest.raises(ValueError, match="'4x4'"):
        parse_mesh(spec)


def test_resolve_fills_one_axis_and_checks_the_product():
    assert MeshConfig(data=2, fsdp=-1, tp=2).resolve(16) == (2, 4, 2)
    assert parse_mesh("auto").resolve(8) == (1, 8, 1)


def test_wrong_device_count_lists_meshes_that_fit():
    with pytest.raises(ValueError) as err:
        parse_mesh("4x4").resolve(8)
    assert "needs 16 devices but 8 are available" in str(err.value)
    assert "8x1, 4x2, 2x4, 1x8" in str(err.value)


def test_make_mesh_on_this_process_checks_devices():
    mesh = make_mesh("1x1")
    assert mesh.axis_names == MESH_AXES and mesh.devices.size == jax.device_count()
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh("4x4")


MESH_FSDP2_TP4 = AbstractMesh((1, 2, 4), MESH_AXES)


@pytest.mark.parametrize(
    "logical, shape, want",
    [
        (("vocab", "embed"), (512, 64), PartitionSpec("tp", "fsdp")),
        (("embed", "heads", "head_dim"), (64, 4, 16), PartitionSpec("fsdp", "tp", None)),
        (("embed", "mlp"), (64, 128), PartitionSpec("fsdp", "tp")),
        (("mlp", "embed"), (128, 64), PartitionSpec("tp", "fsdp")),
        (("embed",), (64,), PartitionSpec("fsdp")),
        ((None,), (7,), PartitionSpec(None)),
    ],
)
def test_rule_table_maps_logical_axes(logical, shape, want):
    assert logical_to_spec(logical, shape, MESH_FSDP2_TP4) == want


def test_kv_heads_not_divisible_by_tp_are_replicated_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dr_jax.sharding"):
        spec = logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), MESH_FSDP2_TP4)
    assert spec == PartitionSpec("fsdp", None, None)
    assert "replicating logical axis 'kv_heads' of size 2" in caplog.text


def test_two_logical_axes_on_one_mesh_axis_are_refused():
    with pytest.raises(ValueError, match="cannot share a mesh axis"):
        logical_to_spec(("heads", "mlp"), (4, 128), MESH_FSDP2_TP4)


def test_unknown_logical_axis_is_refused():
    with pytest.raises(ValueError, match="no sharding rule for logical axis 'expert'"):
        logical_to_spec(("expert", "embed"), (4, 64), MESH_FSDP2_TP4)


def test_single_process_without_cluster_environment():
    assert maybe_initialize_distributed(env={}) is False


def test_incomplete_distributed_environment_names_the_missing_variables():
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS=host:port and JAX_PROCESS_ID"):
        maybe_initialize_distributed(env={"JAX_NUM_PROCESSES": "2"})


EIGHT_DEVICE_CHECK = """
import json, jax, jax.numpy as jnp, numpy as np
from dr_jax.sharding import make_mesh, shard_params, batch_sharding, put_global
params = {"embed": np.zeros((512, 64), np.float32), "k": np.zeros((64, 2, 16), np.float32)}
axes = {"embed": ("vocab", "embed"), "k": ("embed", "kv_heads", "head_dim")}
out = {}
for spec in ["2x4", "data=2,fsdp=2,tp=2", "8x1"]:
    mesh = make_mesh(spec)
    placed = shard_params(params, axes, mesh)
    batch = put_global(np.zeros((8, 5), np.int32), batch_sharding(mesh))
    out[spec] = {
        "shape": dict(mesh.shape),
        "embed_shard": list(placed["embed"].addressable_shards[0].data.shape),
        "k_shard": list(placed["k"].addressable_shards[0].data.shape),
        "batch_shard": list(batch.addressable_shards[0].data.shape),
    }
print(json.dumps(out))
"""


def run_on_eight_cpu_devices(code: str) -> dict:
    """Runs `code` in a fresh process that sees 8 CPU devices; returns its last printed JSON."""
    flags = "--xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parameters_and_batches_split_on_eight_devices():
    got = run_on_eight_cpu_devices(EIGHT_DEVICE_CHECK)
    assert got["2x4"] == {
        "shape": {"data": 1, "fsdp": 2, "tp": 4},
        "embed_shard": [128, 32],  # vocab / tp, embed / fsdp
        "k_shard": [32, 2, 16],  # 2 KV heads on tp=4: replicated
        "batch_shard": [4, 5],  # rows over data x fsdp = 2
    }
    assert got["data=2,fsdp=2,tp=2"]["embed_shard"] == [256, 32]
    assert got["data=2,fsdp=2,tp=2"]["k_shard"] == [32, 1, 16]
    assert got["data=2,fsdp=2,tp=2"]["batch_shard"] == [2, 5]
    assert got["8x1"]["embed_shard"] == [512, 8] and got["8x1"]["batch_shard"] == [1, 5]


def test_golden_partition_of_every_qwen_parameter():
    """Pins the sharding of each parameter of a Qwen2 policy on fsdp=2, tp=4 (2 KV heads)."""
    from dr_jax.models import ModelConfig, Policy
    from dr_jax.models.policy import abstract_model

    config = ModelConfig.tiny(vocab_size=512, tie_word_embeddings=False)
    graphdef, params = abstract_model(config)  # shapes only, nothing allocated
    axes = jax.tree.leaves(Policy(config, graphdef, params).logical_axes(), is_leaf=_is_tuple)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    mesh = MESH_FSDP2_TP4
    got = {
        jax.tree_util.keystr(path).replace(".value", ""): logical_to_spec(a, leaf.shape, mesh)
        for (path, leaf), a in zip(leaves, axes, strict=True)
    }
    layer = "['layers']"
    assert got == {
        "['embed']": PartitionSpec("tp", "fsdp"),
        "['lm_head']['kernel']": PartitionSpec("fsdp", "tp"),
        "['norm']['scale']": PartitionSpec("fsdp"),
        f"{layer}['attn']['q_proj']['kernel']": PartitionSpec(None, "fsdp", "tp", None),
        f"{layer}['attn']['q_proj']['bias']": PartitionSpec(None, "tp", None),
        f"{layer}['attn']['k_proj']['kernel']": PartitionSpec(None, "fsdp", None, None),
        f"{layer}['attn']['k_proj']['bias']": PartitionSpec(None, None, None),
        f"{layer}['attn']['v_proj']['kernel']": PartitionSpec(None, "fsdp", None, None),
        f"{layer}['attn']['v_proj']['bias']": PartitionSpec(None, None, None),
        f"{layer}['attn']['o_proj']['kernel']": PartitionSpec(None, "tp", None, "fsdp"),
        f"{layer}['mlp']['gate_proj']['kernel']": PartitionSpec(None, "fsdp", "tp"),
        f"{layer}['mlp']['up_proj']['kernel']": PartitionSpec(None, "fsdp", "tp"),
        f"{layer}['mlp']['down_proj']['kernel']": PartitionSpec(None, "tp", "fsdp"),
        f"{layer}['input_norm']['scale']": PartitionSpec(None, "fsdp"),
        f"{layer}['post_attn_norm']['scale']": PartitionSpec(None, "fsdp"),
    }


def _is_tuple(x) -> bool:
    return isinstance(x, tuple)
