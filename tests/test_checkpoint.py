"""Checkpoints: a killed run resumes bit-identically, on the same or on another mesh.

Runs that must be killed (or need 8 simulated devices) execute this file as a script in a fresh
process: `python tests/test_checkpoint.py train DIR MESH STEPS` trains STEPS steps from scratch,
saves, then SIGKILLs itself; `... resume DIR SAVE_MESH RESUME_MESH` checks a cross-mesh resume.
"""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import CONFIG, LOSS, OPTIM, make_batch, shared_learner

from dr_jax.train import Checkpointer, TrainBatch, TrainState

TOTAL_STEPS, SAVED_AT = 5, 3
FINGERPRINT = {"model": "tiny-128", "lr": OPTIM.lr}


def build(mesh_spec: str):
    """The learner of test_train_step (compiled once per process) or one on another mesh."""
    from dr_jax.sharding import make_mesh
    from dr_jax.train import Learner

    if mesh_spec == "1x1":
        return shared_learner()[1]
    return Learner(shared_learner()[0], OPTIM, LOSS, mesh=make_mesh(mesh_spec), logprob_chunk=5)


def batch(step: int) -> TrainBatch:
    """The data of optimizer step `step` (a data position the checkpoint must restore). The
    masks are those of test_train_step's batch, so its compiled step is reused."""
    tokens, attention, loss_mask, _ = make_batch()
    rng = np.random.default_rng(100 + step)
    tokens = rng.integers(0, CONFIG.vocab_size, tokens.shape).astype(np.int32)
    ref = (-4.8 + rng.normal(0, 0.3, tokens.shape) * loss_mask).astype(np.float32)
    old = (-4.8 + rng.normal(0, 0.3, tokens.shape) * loss_mask).astype(np.float32)
    advantages = rng.normal(size=tokens.shape[0]).astype(np.float32)
    return TrainBatch(tokens, attention, loss_mask, advantages, old, ref)


def train(learner, state, start: int, stop: int):
    for step in range(start, stop):
        state, _ = learner.train_step(state, batch(step))
    return state


def host(state: TrainState) -> list[np.ndarray]:
    from jax.experimental import multihost_utils

    return [
        np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in jax.tree.leaves(state)
    ]


def assert_bit_identical(a: TrainState, b: TrainState) -> None:
    left, right = host(a), host(b)
    assert len(left) == len(right) > 10
    for x, y in zip(left, right, strict=True):
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x, y)


def run_script(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=600
    )


# ---- script modes (run in a fresh process) --------------------------------------------------


def train_then_die(directory: str, mesh_spec: str, steps: int) -> None:
    learner = build(mesh_spec)
    state = train(learner, learner.init_state(), 0, steps)
    ckpt = Checkpointer(directory, keep=2, fingerprint=FINGERPRINT)
    ckpt.save(state, extra={"data": {"next_step": steps}})
    train(learner, state, steps, steps + 1)  # donates `state` while the save may still be writing
    ckpt.wait()
    os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown: the checkpoint must already be whole


def resume_on_other_mesh(directory: str, save_mesh: str, resume_mesh: str) -> None:
    saver, resumer = build(save_mesh), build(resume_mesh)
    saved = train(saver, saver.init_state(), 0, SAVED_AT)
    ckpt = Checkpointer(directory, fingerprint=FINGERPRINT)
    ckpt.save(saved, extra={"data": {"next_step": SAVED_AT}})
    restored, extra = ckpt.restore(resumer.init_state())
    assert extra == {"data": {"next_step": SAVED_AT}}
    leaves = jax.tree.leaves(restored.params)
    assert leaves[0].sharding == jax.tree.leaves(resumer.param_shardings)[0]
    # the in-memory reference: the same state moved to the resume mesh without a checkpoint
    moved = jax.device_put(saved, resumer.state_shardings)
    assert_bit_identical(restored, moved)
    resumed = train(resumer, restored, SAVED_AT, TOTAL_STEPS)
    reference = train(resumer, moved, SAVED_AT, TOTAL_STEPS)
    assert_bit_identical(resumed, reference)
    print("ok")


# ---- tests ------------------------------------------------------------------------------------


def small_state(value: float, step: int) -> TrainState:
    params = {"w": jnp.full((4, 3), value), "b": jnp.arange(3.0) * value}
    opt_state = {"mu": jax.tree.map(jnp.zeros_like, params)}
    return TrainState(params, opt_state, jnp.asarray(step, jnp.int32))


def test_keeps_the_last_n_and_round_trips_extra_state(tmp_path):
    with Checkpointer(tmp_path, keep=2, fingerprint=FINGERPRINT) as ckpt:
        for step in range(1, 5):
            ckpt.save(small_state(float(step), step), extra={"data": {"epoch": 0, "offset": step}})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
        state, extra = ckpt.restore(small_state(0.0, 0))
        earlier, _ = ckpt.restore(small_state(0.0, 0), step=3)
    assert extra == {"data": {"epoch": 0, "offset": 4}}
    np.testing.assert_array_equal(state.params["w"], np.full((4, 3), 4.0))
    assert int(state.step) == 4 and int(earlier.step) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4", "fingerprint.json"]


def test_directory_of_another_configuration_is_refused(tmp_path):
    Checkpointer(tmp_path, fingerprint={**FINGERPRINT, "lr": 1.0}).close()  # a failed start
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as ckpt:  # the corrected command
        ckpt.save(small_state(1.0, 1))
    Checkpointer(tmp_path, fingerprint=dict(FINGERPRINT)).close()  # same config: fine
    with pytest.raises(ValueError, match=r"another configuration \(differs in: lr\)"):
        Checkpointer(tmp_path, fingerprint={**FINGERPRINT, "lr": 3e-4})


def test_an_unreadable_newest_checkpoint_is_set_aside_and_the_one_before_restored(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as ckpt:
        ckpt.save(small_state(1.0, 1))
        ckpt.save(small_state(2.0, 2))
    for path in (tmp_path / "2" / "state").rglob("*"):  # damaged: its arrays are gone
        if path.is_file():
            path.unlink()
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as ckpt:
        with pytest.warns(UserWarning, match=r"checkpoint 2 .* unreadable .*corrupt/2-"):
            state, _ = ckpt.restore(small_state(0.0, 0))
        assert int(state.step) == 1 and ckpt.all_steps() == [1]
        ckpt.save(small_state(3.0, 2))  # the run saves that step again
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
    [aside] = (tmp_path / "corrupt").iterdir()
    assert aside.name.startswith("2-") and (aside / "state").is_dir(), "kept, never deleted"


def test_restore_from_an_empty_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpointer(tmp_path).restore(small_state(0.0, 0))


def test_killed_run_resumes_bit_identically(tmp_path):
    proc = run_script("train", str(tmp_path), "1x1", str(SAVED_AT))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    learner = build("1x1")
    straight = train(learner, learner.init_state(), 0, TOTAL_STEPS)
    restored, extra = Checkpointer(tmp_path, fingerprint=FINGERPRINT).restore(learner.init_state())
    assert int(restored.step) == SAVED_AT
    resumed = train(learner, restored, extra["data"]["next_step"], TOTAL_STEPS)
    assert_bit_identical(resumed, straight)


@pytest.mark.slow
def test_resume_on_another_mesh_is_bit_identical(tmp_path):
    proc = run_script("resume", str(tmp_path), "2x4", "4x2", devices=8)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


if __name__ == "__main__":
    mode, directory, *rest = sys.argv[1:]
    if mode == "train":
        train_then_die(directory, rest[0], int(rest[1]))
    else:
        resume_on_other_mesh(directory, rest[0], rest[1])
