"""A training run's checkpoint as an HF directory (weights, config, tokenizer and chat template),
for evaluation, SGLang, transformers or another run:

    python -m dr_jax.models export runs/default OUT [--step N]

and `--policy.path RUN_DIR` (training and evaluation) reads the run's latest checkpoint through
the same export, cached in RUN_DIR/export/step_N.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from dr_jax.config import PolicyConfig
from dr_jax.models import save_pretrained
from dr_jax.train.checkpoint import FINGERPRINT, Checkpointer
from dr_jax.train.optim import OptimConfig, make_optimizer
from dr_jax.train.state import TrainState


def is_run_dir(path: str | Path) -> bool:
    """A training run's directory: it holds checkpoints with their configuration."""
    return (Path(path) / "checkpoints" / FINGERPRINT).is_file()


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Write checkpoint `step` (default: the latest) of the run as an HF directory at `out`
    (atomically); returns `out`."""
    from dr_jax.runtime import build_policy, build_tokenizer  # runtime builds runs from here

    run_dir, out = Path(run_dir), Path(out)
    fingerprint, checkpoints = _checkpoints(run_dir)
    policy_config = PolicyConfig(**fingerprint["policy"])
    base = policy_config
    if (run_dir / "warm_start" / "config.json").is_file():  # the run trained from there
        base = dataclasses.replace(policy_config, path=str(run_dir / "warm_start"))
    policy = build_policy(base)
    with checkpoints:
        steps = checkpoints.all_steps()
        if not steps or (step is not None and step not in steps):
            raise FileNotFoundError(
                f"{run_dir}: no checkpoint {'at step ' + str(step) if step else 'yet'}; "
                f"saved steps: {steps or 'none'}"
            )
        state, _ = checkpoints.restore(_template(policy.params, fingerprint["optim"]), step)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(policy.replace(params=state.params), tmp)
    build_tokenizer(policy_config).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def latest_export(run_dir: str | Path) -> Path:
    """The run's latest checkpoint as an HF directory (exported once, then reused)."""
    _, checkpoints = _checkpoints(Path(run_dir))
    with checkpoints:
        step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"{run_dir}: the run has no checkpoint yet")
    out = Path(run_dir) / "export" / f"step_{step}"
    return out if (out / "config.json").is_file() else export_run(run_dir, out, step)


def _checkpoints(run_dir: Path) -> tuple[dict[str, Any], Checkpointer]:
    """The run's configuration, and its checkpoints opened under it."""
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a training run (no checkpoints/{FINGERPRINT})")
    fingerprint = json.loads((run_dir / "checkpoints" / FINGERPRINT).read_text())
    return fingerprint, Checkpointer(run_dir / "checkpoints", fingerprint=fingerprint)


def _template(params: Any, optim: dict[str, Any]) -> TrainState:
    """A TrainState shaped like the run's (its optimizer's moments included) to restore into."""
    tx = make_optimizer(OptimConfig(**optim))
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
