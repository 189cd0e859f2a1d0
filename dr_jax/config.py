"""Config pieces shared by the launchers (`launch/train.py`, `launch/eval.py`).

Each is a small dataclass with defaults that work on a laptop: the embedded tiny policy and the
in-process JAX sampler. tyro turns the field comments into `--help` text.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from dr_jax.models.attention import AttentionImpl, resolve
from dr_jax.models.remat import RematPolicy

TINY = "tiny"
"""`PolicyConfig.path` for a random tiny Qwen2-architecture model with the real tokenizer."""


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy to load, and in which compute dtype."""

    path: str = TINY
    """HF checkpoint dir (config.json, *.safetensors, tokenizer), a .gguf file, a catalog name
    (smollm2-135m-instruct), a Hugging Face Hub id, or "tiny" (random tiny model)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype; parameters stay float32 and logits are always float32."""
    seed: int = 0
    """Initialisation seed of the tiny random model (ignored for checkpoints)."""
    remat: RematPolicy = "none"
    """What each decoder layer keeps for the backward pass: none (all), full (its input only;
    recomputed) or matmuls (projection outputs; the rest recomputed)."""
    attention: AttentionImpl = "auto"
    """Attention: auto (splash on TPU, cudnn on GPU, else xla or chunked), xla, chunked,
    splash (TPU Pallas kernel) or cudnn (GPU)."""
    attention_chunk: int = 0
    """Queries per attention block for chunked attention and the sampler's KV-cache attention
    (memory [chunk, T] per head); 0: whole rows (chunked: 1024)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError('PolicyConfig.path is empty: pass a model path or name, or "tiny".')
        if self.attention_chunk < 0:
            raise ValueError(f"--policy.attention-chunk must be >= 0, got {self.attention_chunk}.")

    def model_options(self, platform: str) -> dict[str, Any]:
        """The memory knobs as `Policy.replace` arguments, "auto" resolved for `platform`."""
        chunk = self.attention_chunk or None
        return {
            "remat": self.remat,
            "attention": resolve(self.attention, platform, chunk),
            "attention_chunk": chunk,
        }

    @property
    def is_tiny(self) -> bool:
        return self.path == TINY


@dataclass(frozen=True)
class SGLangConfig:
    """How the client drives SGLang servers (kind="sglang"; dr_jax.rollout.sglang.MIN_VERSION)."""

    engines: tuple[str, ...] = ("http://127.0.0.1:30000",)
    """Base URLs of the SGLang engines. Weight updates (pause, load, continue) go to every one;
    generation goes round-robin over them unless --sampler.sglang.router is set."""
    router: str = ""
    """An SGLang router in front of the engines: generation goes through it (it has no weight
    routes, so the engines are still listed). Empty: round-robin over the engines."""
    timeout: float = 600.0
    """Seconds for one HTTP exchange (a long generation included)."""
    retries: int = 3
    """Extra attempts after a refused connection or a 5xx, with exponential backoff (a 4xx is
    never retried)."""
    backoff: float = 0.5
    """First backoff in seconds; doubles each attempt."""
    max_connections: int = 512
    """Requests in flight at once."""
    pause_mode: Literal["abort", "retract", "in_place"] = "abort"
    """`pause_generation` mode before a weight update. abort: requests in flight end as aborts;
    retract / in_place keep them, and newer SGLang then refuses the cache flush the update
    needs, so keep abort unless nothing is in flight (SGLang 0.5.5 ignores the mode)."""
    sync_timeout: float = 600.0
    """Seconds to wait for an engine that went away (health polling) before a rollout and
    during a weight update, before giving up."""

    def __post_init__(self) -> None:
        urls = (*self.engines, *((self.router,) if self.router else ()))
        if not self.engines or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(
                "--sampler.sglang.engines needs one or more http(s):// base URLs (and "
                f"--sampler.sglang.router one, or nothing); got {list(self.engines)}, "
                f"{self.router!r}."
            )
        at_least(self, "sampler.sglang", timeout=1e-3, retries=0, backoff=0.0,
                 max_connections=1, sync_timeout=0.0)  # fmt: skip


@dataclass(frozen=True)
class SamplerConfig:
    """Where tokens come from: the in-process JAX sampler or an SGLang server, and how to sample."""

    kind: Literal["jax", "sglang"] = "jax"
    """"jax": sample in this process from the policy; "sglang": SGLang (--sampler.sglang)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy (argmax). DeepResearcher trained and evaluated at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 keeps all."""
    max_new_tokens: int = 2000
    """Cap on tokens generated per assistant turn (DeepResearcher: 2000)."""
    max_batch_size: int = 16
    """JAX sampler: rows decoded together (KV-cache batch)."""
    max_seq_len: int = 8192
    """JAX sampler: KV-cache length per row; it bounds the context (prompt, turns, observations)."""
    sglang: SGLangConfig = field(default_factory=SGLangConfig)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--sampler.temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--sampler.top-p must be in (0, 1], got {self.top_p}.")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"--sampler.top-k must be -1 (off) or >= 1, got {self.top_k}.")
        at_least(self, "sampler", max_new_tokens=1, max_batch_size=1, max_seq_len=2)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def at_least(config: object, group: str, **minimums: float) -> None:
    """Refuse a field below its minimum, naming the flag (--group.field-name, or --field-name
    for a top-level field: group "") and the bound; an optional field left at None passes."""
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if value is not None and value < minimum:
            field_flag = name.replace("_", "-")
            flag = f"--{group}.{field_flag}" if group else f"--{field_flag}"
            raise ValueError(f"{flag} must be >= {minimum}, got {value}.")
