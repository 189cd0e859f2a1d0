"""One train step gives the same loss, gradient norm and parameters on every mesh, and in a
two-process jax.distributed job on loopback as in one process.

The meshes need 8 devices, so the work runs in fresh processes that simulate 8 CPU devices
(`python tests/test_train_step_mesh.py OUT MESH...`); the rest of the suite keeps 1 device.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MESHES = ["1x1", "2x4", "4x2", "8x1"]


def worker(out_dir: str, meshes: list[str]) -> None:
    import jax
    from jax.experimental import multihost_utils

    from dr_jax.models import ModelConfig, init_policy
    from dr_jax.sharding import make_mesh, maybe_initialize_distributed
    from dr_jax.train import Learner, LossConfig, OptimConfig, TrainBatch

    maybe_initialize_distributed()
    config = ModelConfig.tiny(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2
    )
    rng = np.random.default_rng(0)
    b, t = 8, 12
    tokens = rng.integers(0, 128, (b, t)).astype(np.int32)
    attention = (np.arange(t) >= rng.integers(0, 4, b)[:, None]).astype(np.int32)
    loss_mask = (attention * (np.arange(t) >= 6)).astype(np.float32)
    old = (-4.8 + rng.normal(0, 0.3, (b, t)) * loss_mask).astype(np.float32)
    ref = (-4.8 + rng.normal(0, 0.3, (b, t)) * loss_mask).astype(np.float32)
    batch = TrainBatch(
        tokens, attention, loss_mask, rng.normal(size=b).astype(np.float32), old, ref
    )
    policy = init_policy(config, seed=0)
    for spec in meshes:
        devices = jax.devices()[:1] if spec == "1x1" else None
        learner = Learner(
            policy,
            OptimConfig(lr=1.0, eps=1.0),  # first step ~ g: parameters compare gradients
            LossConfig(kl_coef=0.1, entropy_coef=0.05),
            mesh=make_mesh(spec, devices),
            micro_batch_size=8,
            logprob_chunk=4,
        )
        state, metrics = learner.train_step(learner.init_state(), batch)
        params = [
            multihost_utils.process_allgather(x, tiled=True) for x in jax.tree.leaves(state.params)
        ]
        if jax.process_index() == 0:
            np.savez(
                Path(out_dir) / f"{spec}.npz",
                loss=float(metrics["loss"]),
                grad_norm=float(metrics["grad_norm"]),
                n_processes=jax.process_count(),
                **{f"param{i}": p for i, p in enumerate(params)},
            )


def run_workers(out_dir: Path, meshes: list[str], processes: int = 1) -> None:
    devices_each = 8 // processes
    base = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
    )
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(out_dir), *meshes],
            env=dict(base, JAX_PROCESS_ID=str(i)) if processes > 1 else base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]


def load(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("meshes")
    run_workers(out, MESHES)
    return {spec: load(out / f"{spec}.npz") for spec in MESHES}


def assert_same_step(got: dict, want: dict, rtol: float) -> None:
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=rtol)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=rtol)
    params = [k for k in want if k.startswith("param")]
    assert len(params) > 10
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-7, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("spec", MESHES[1:])
def test_sharded_step_equals_single_device_step(one_process, spec):
    assert_same_step(one_process[spec], one_process["1x1"], rtol=1e-5)


@pytest.mark.slow
def test_two_process_job_equals_one_process(one_process, tmp_path):
    run_workers(tmp_path, ["2x4"], processes=2)
    got = load(tmp_path / "2x4.npz")
    assert int(got["n_processes"]) == 2
    assert_same_step(got, one_process["2x4"], rtol=1e-6)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2:])
