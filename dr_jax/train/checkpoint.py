"""Orbax checkpoints of a TrainState plus the caller's JSON state (e.g. the data position).

Each save is one step directory holding `state` (params, optimizer state, step, RNG; sharded
arrays written by every process) and `extra` (JSON). Orbax writes into a temporary directory
and renames it when complete, so a crash mid-save never leaves a checkpoint that looks valid.
Saves are asynchronous: the arrays are copied off the devices, then written in the background
while training continues. Restore places every array with the sharding of a template state, so
a run saved on one mesh resumes on any other.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dr_jax.train.state import TrainState

FINGERPRINT = "fingerprint.json"


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each array's sharding: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """Keeps the last `keep` checkpoints of one run in `directory`.

    `fingerprint` (any JSON-able dict, e.g. the model and loss configs) is written with the first
    checkpoint and compared on every later start: resuming a run with another configuration is
    refused, while a start that failed before saving anything leaves the directory free.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep: int = 3,
        fingerprint: dict[str, Any] | None = None,
        async_save: bool = True,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fingerprint = json.loads(json.dumps(fingerprint or {}, default=str))
        self._check_fingerprint()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extra")
        )

    def _check_fingerprint(self) -> None:
        path, fingerprint = self.directory / FINGERPRINT, self._fingerprint
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != fingerprint:
                changed = sorted(
                    k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k)
                )
                raise ValueError(
                    f"checkpoint directory {self.directory} belongs to a run with another "
                    f"configuration (differs in: {', '.join(changed)}); resume with the same "
                    "configuration or choose a new directory"
                )

    def _write_fingerprint(self) -> None:
        path = self.directory / FINGERPRINT
        if jax.process_index() == 0 and not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._fingerprint, indent=2, sort_keys=True))
            os.replace(tmp, path)

    def save(self, state: TrainState, extra: dict[str, Any] | None = None) -> None:
        """Starts saving `state` (at its own step number) and `extra`; returns once the arrays
        are safe to donate to the next step."""
        step = int(jax.device_get(state.step))
        self._write_fingerprint()
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(
        self, template: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """(state, extra) of `step`, placed like `template` (any mesh). Without a step: the
        newest checkpoint that reads; an unreadable newer one is said, and moved aside to
        corrupt/<step>-<time> (kept, never deleted) so the run can save that step again."""
        self.wait()
        if step is not None:
            return self._restore(template, step)
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for newest in steps[:-1]:
            try:
                return self._restore(template, newest)
            except Exception as error:  # orbax raises many kinds for a damaged checkpoint
                self._set_aside(newest, error)
        return self._restore(template, steps[-1])

    def _set_aside(self, step: int, error: Exception) -> None:
        aside = self.directory / "corrupt" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        warnings.warn(
            f"checkpoint {step} in {self.directory} is unreadable ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}); moved to {aside}, resuming from an older one",
            stacklevel=3,
        )
        if jax.process_index() == 0:
            aside.parent.mkdir(exist_ok=True)
            os.replace(self.directory / str(step), aside)
        self._manager.reload()

    def _restore(self, template: TrainState, step: int) -> tuple[TrainState, dict[str, Any]]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(template)), extra=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.extra or {})

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
