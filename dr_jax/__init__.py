"""dr_jax: train deep-research agents with reinforcement learning, in JAX."""
