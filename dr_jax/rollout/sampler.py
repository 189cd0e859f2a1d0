"""What the agent loop asks of a sampler: token ids in, token ids + log-probs out.

Both implementations (`JaxSampler` in process, `SGLangSampler` over HTTP) follow one protocol
so the agent never knows which one it drives. Log-probs are those of the distribution the token
was drawn from, log softmax(logits / T) at the sampled id (T = 1 for greedy), so they equal
`dr_jax.losses.token_logprobs(logits, tokens, temperature=T)` of the same policy.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import jax.numpy as jnp

from dr_jax.losses import token_logprobs

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """How one assistant turn is sampled."""

    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax, log-probs at T = 1)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; keep 1.0 in RL so log-probs are of the untruncated distribution."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 keeps all."""
    max_new_tokens: int = 2000
    """Tokens generated at most (DeepResearcher: 2000 per turn)."""
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end generation (kept in the output); added to the sampler's own eos ids."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the output keeps the tokens that complete the string."""
    seed: int | None = None
    """Seed of this request (row i of a batch uses seed + i); None draws one from the sampler."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SampleResult:
    """One prompt's continuation: `token_ids` and aligned `logprobs` (same length)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    """stop: a stop id or string ended it (kept in token_ids); length: max_new_tokens or the
    context was reached; abort: the server dropped the request."""


@runtime_checkable
class Sampler(Protocol):
    """An async batch generator over token ids (in-process JAX or a remote SGLang server)."""

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[SampleResult]:
        """One `SampleResult` per prompt, in order; raises on a sampler failure."""
        ...


async def sampler_logprob_gap(
    sampler: Sampler, policy: Any, prompts: Sequence[Sequence[int]], params: SamplingParams
) -> float:
    """max |sampler log-prob - losses.token_logprobs(policy)| over every sampled token.

    The trainer-side value is a full forward pass over prompt + sample at the sampling
    temperature (1 for greedy); a gap above ~1e-4 (f32) means trainer and sampler disagree.
    """
    results = await sampler.generate(prompts, params)
    temperature = params.temperature if params.temperature > 0 else 1.0
    gap = 0.0
    for prompt, result in zip(prompts, results, strict=True):
        if not result.token_ids:
            continue
        tokens = jnp.asarray([[*prompt, *result.token_ids]], jnp.int32)
        logits = policy.logits(tokens)[:, len(prompt) - 1 : -1]
        trainer = token_logprobs(logits, tokens[:, len(prompt) :], temperature)[0]
        gap = max(gap, float(jnp.max(jnp.abs(trainer - jnp.asarray(result.logprobs)))))
    return gap
