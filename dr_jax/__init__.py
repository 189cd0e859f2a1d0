"""dr_jax: train deep-research agents with reinforcement learning, in JAX."""

import os

# dr_jax uses transformers for tokenizers and configs only: its advice that PyTorch is missing
# (printed on every command without torch) is noise here. A user's own setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
