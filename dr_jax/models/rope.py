"""RoPE inverse frequencies, with the frequency scalings that checkpoints declare.

Plain RoPE rotates pair i of a head by p * theta^(-2i/Dh). Llama 3.1's scaling (HF rope_type
"llama3") stretches a model to longer contexts: wavelengths longer than the original context
/ low_freq_factor are slowed by `factor`, those shorter than original context /
high_freq_factor are kept, and the band between blends the two linearly in context/wavelength.
"""

from __future__ import annotations

import math

import numpy as np

from dr_jax.models.config import ModelConfig


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """f32[Dh/2]: the angle per position of each rotated pair (a constant under jit)."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float32) / np.float32(config.head_dim)
    inv_freq = (1.0 / np.float32(config.rope_theta) ** exponents).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    context = scaling.original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    blend = (context / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blend = np.clip(blend, 0.0, 1.0)  # 0: long wavelengths (slowed), 1: short ones (kept)
    scaled = (1 - blend) * inv_freq / scaling.factor + blend * inv_freq
    return scaled.astype(np.float32)
