"""What the agent loop asks of a sampler: token ids in, token ids + log-probs out.

Both implementations (`JaxSampler` in process, `SGLangSampler` over HTTP) follow one protocol
so the agent never knows which one it drives. Log-probs are those of the distribution the token
was drawn from, log softmax(logits / T) at the sampled id (T = 1 for greedy), so they equal
`dr_jax.losses.token_logprobs(logits, tokens, temperature=T)` of the same policy.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

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


class ContextFull(ValueError):
    """The prompt alone fills the sampler's context: no token can be sampled after it. The
    policy's own conversation ran out of room (the agent ends it as "context_budget"), not an
    infrastructure failure."""


@runtime_checkable
class Sampler(Protocol):
    """An async batch generator over token ids (in-process JAX or a remote SGLang server)."""

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[SampleResult]:
        """One `SampleResult` per prompt, in order; raises ContextFull for a prompt that leaves
        no room, and another exception on a sampler failure."""
        ...


LOGPROB_CHUNK = 128  # positions unembedded at once by `policy_logprobs` ([128, V] logits)


@functools.cache
def _learner_logprobs() -> Any:
    from dr_jax.train.logprobs import sequence_logprobs  # the training side, loaded when used

    return jax.jit(sequence_logprobs, static_argnums=0, static_argnames=("chunk", "temperature"))


def policy_logprobs(policy: Any, tokens: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    """The trainer's view: f32[T] with entry t = log softmax(logits_t-1 / T)[tokens[t]], from the
    learner's own log-prob pass (`train.logprobs.sequence_logprobs`; entry 0 is 0). Padded to a
    power-of-two width on the right (causal, so it changes nothing) to compile once per width."""
    n = len(tokens)
    width = max(LOGPROB_CHUNK, 1 << (n - 1).bit_length())
    padded = np.zeros((1, width), np.int32)
    padded[0, :n] = tokens
    logp, _ = _learner_logprobs()(policy, policy.params, jnp.asarray(padded), jnp.ones_like(padded),
                     chunk=LOGPROB_CHUNK, temperature=float(temperature))  # fmt: skip
    return np.asarray(logp)[0, :n]


async def sampler_logprob_gap(
    sampler: Sampler, policy: Any, prompts: Sequence[Sequence[int]], params: SamplingParams
) -> float:
    """max |sampler log-prob - trainer log-prob| over every sampled token, the trainer's being
    `policy_logprobs` at the sampling temperature (1 for greedy). Above ~1e-4 in f32, trainer
    and sampler disagree (wrong temperature, truncation, positions or cache)."""
    results = await sampler.generate(prompts, params)
    temperature = params.temperature if params.temperature > 0 else 1.0
    gap = 0.0
    for prompt, result in zip(prompts, results, strict=True):
        if result.token_ids:
            trainer = policy_logprobs(policy, [*prompt, *result.token_ids], temperature)
            diff = np.abs(trainer[len(prompt) :] - np.asarray(result.logprobs))
            gap = max(gap, float(diff.max()))
    return gap
