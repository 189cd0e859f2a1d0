"""Rollouts: the multi-turn agent loop over a token-in/token-out sampler (JAX or SGLang)."""

from dr_jax.rollout.agent import Agent, AgentConfig
from dr_jax.rollout.jax_sampler import JaxSampler
from dr_jax.rollout.metrics import rollout_metrics
from dr_jax.rollout.sampler import Sampler, SampleResult, SamplingParams, sampler_logprob_gap
from dr_jax.rollout.sglang import SGLangConfig, SGLangSampler, start_sglang_server
from dr_jax.rollout.trajectory import Trajectory

__all__ = [
    "Agent",
    "AgentConfig",
    "JaxSampler",
    "SGLangConfig",
    "SGLangSampler",
    "SampleResult",
    "Sampler",
    "SamplingParams",
    "Trajectory",
    "rollout_metrics",
    "sampler_logprob_gap",
    "start_sglang_server",
]
