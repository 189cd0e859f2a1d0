"""Training: optimizer, train state, the sharded jitted learner step, checkpoints."""

from dr_jax.train.checkpoint import Checkpointer
from dr_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
from dr_jax.train.state import TrainState
from dr_jax.train.step import Learner, LossConfig, TrainBatch

__all__ = [
    "Checkpointer",
    "Learner",
    "LossConfig",
    "OptimConfig",
    "TrainBatch",
    "TrainState",
    "lr_schedule",
    "make_optimizer",
]
