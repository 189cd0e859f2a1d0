"""TrainState: everything a training step reads and writes, as one pytree."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TrainState:
    """f32 master parameters, optimizer state and the optimizer step count."""

    params: Any  # nnx.State of f32 arrays, sharded by the logical-axis rules
    opt_state: Any  # optax state (moments shaped and sharded like params)
    step: jax.Array  # i32[]: optimizer updates applied so far

    def replace(self, **changes: Any) -> TrainState:
        return replace(self, **changes)
