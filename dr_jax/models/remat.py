"""Layer rematerialisation: what each decoder layer keeps for the backward pass.

none      keep every activation (fastest, most memory)
full      keep only the layer's input; recompute the layer in the backward pass
matmuls   keep the outputs of the projection matmuls (no batch dims), recompute the rest
          (norms, RoPE, softmax, activations): most of full's saving at less recompute
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import jax

RematPolicy = Literal["none", "full", "matmuls"]
REMAT_POLICIES: tuple[str, ...] = get_args(RematPolicy)


def remat_name(remat: bool | str) -> str:
    """A policy name; True/False (the older flag) mean "full"/"none"."""
    if isinstance(remat, bool):
        return "full" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: use one of {', '.join(REMAT_POLICIES)}")
    return remat


def checkpointed(fn: Callable, remat: bool | str) -> Callable:
    """`fn` wrapped in jax.checkpoint under the named policy (unchanged for "none")."""
    name = remat_name(remat)
    if name == "none":
        return fn
    if name == "full":
        return jax.checkpoint(fn)
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
