"""Model FLOPs per token, for model-FLOPs utilisation (MFU = achieved FLOP/s / peak FLOP/s)."""

from __future__ import annotations

from dr_jax.models.config import ModelConfig


def matmul_params(config: ModelConfig) -> int:
    """N: weights that take part in a matmul per token (every layer's projections plus the LM
    head, tied or not); the embedding lookup, norms and biases cost no matmul."""
    d, f = config.hidden_size, config.intermediate_size
    q = config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return config.num_layers * per_layer + d * config.vocab_size


def training_flops_per_token(config: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """FLOPs of one forward + backward pass per trained token:

        6 N  +  6 L H Dh T      (causal; 12 L H Dh T when counting the masked half too)

    A forward matmul costs 2 FLOPs per weight per token and the backward twice that (hence 6N);
    attention scores q·k and the weighted sum of v cost 2 * 2 * H * Dh per visible key, of which
    a causal token sees T / 2 on average.
    """
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6 * matmul_params(config) + (attention / 2 if causal else attention)


def learner_flops(
    config: ModelConfig,
    seq_len: int,
    tokens: float,
    scored: float,
    *,
    updates: int,
    forward_passes: int,
) -> float:
    """FLOPs the learner computes for a batch of `tokens` real tokens (rows of `seq_len`), of
    which `scored` are trained: the layers run on every token, the LM head only on the scored
    ones (train/logprobs.py). Each update is a forward and a backward (3 forwards' worth), each
    log-prob pass a forward."""
    head = 2 * config.hidden_size * config.vocab_size  # forward FLOPs per unembedded token
    layers = training_flops_per_token(config, seq_len) / 3 - head
    return (3 * updates + forward_passes) * (layers * tokens + head * scored)
