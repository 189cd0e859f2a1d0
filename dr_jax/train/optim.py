"""The optimizer: AdamW with global-norm clipping and a warmup + constant/cosine LR schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import optax


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping. DeepResearcher trained with lr 1e-6 constant, weight
    decay 0.01, clip 1.0 (--preset deepresearcher); each preset sets its own."""

    lr: float = 1e-6  # peak learning rate
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.999  # Adam second-moment decay
    eps: float = 1e-8  # Adam denominator epsilon
    weight_decay: float = 0.01  # decoupled weight decay, on every parameter (as veRL's AdamW)
    max_grad_norm: float | None = 1.0  # clip the global gradient norm to this (None: no clipping)
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many optimizer steps
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    total_steps: int = 1_000  # cosine: steps until the LR reaches min_lr_ratio * lr
    min_lr_ratio: float = 0.0  # cosine: final LR as a fraction of lr

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}: use 'constant' or 'cosine'")
        if self.warmup_steps < 0 or self.lr < 0:
            raise ValueError("lr and warmup_steps must be >= 0")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"cosine schedule: total_steps={self.total_steps} must exceed "
                f"warmup_steps={self.warmup_steps}"
            )


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
    """lr(step) = lr * step / warmup during warmup, then lr (constant) or a cosine decay to
    min_lr_ratio * lr at total_steps."""
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        after = optax.cosine_decay_schedule(
            cfg.lr, cfg.total_steps - cfg.warmup_steps, alpha=cfg.min_lr_ratio
        )
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm (before the moments, as torch's clip_grad_norm_ + AdamW) then AdamW."""
    adamw = optax.adamw(
        lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
