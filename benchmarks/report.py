"""How every benchmark reports (a readable table, then one JSON summary as the very last line),
and what several of them measure alike: the main job's model shape, the machine's matmul
roofline, paired timings and the load they ran under."""

import json
import os
import statistics
import time
from typing import Any


def print_table(rows: list[tuple[str, str]]) -> None:
    """Two aligned columns: what was measured, and its value."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def print_summary(
    benchmark: str,
    ours: float,
    reference: float,
    *,
    unit: str,
    higher_is_better: bool,
    setup: str,
    ratio: float | None = None,
    **extra: Any,
) -> None:
    """The last line every benchmark prints; `ratio` defaults to ours / reference."""
    summary = {
        "benchmark": benchmark,
        "ours": ours,
        "reference": reference,
        "ratio": round(ours / reference if ratio is None else ratio, 4),
        "unit": unit,
        "higher_is_better": higher_is_better,
        "setup": setup,
        **extra,
    }
    print(json.dumps(summary))


def smollm2_135m(**overrides: Any):
    """The shape of SmolLM2-135M-Instruct (Llama: 30 layers, width 576, 9 / 3 heads of 64, MLP
    1536, vocabulary 49,152, tied embeddings, RoPE theta 1e5): the main job's policy."""
    from dr_jax.models import ModelConfig

    fields = dict(
        model_type="llama", vocab_size=49_152, hidden_size=576, intermediate_size=1_536,
        num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100_000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, qkv_bias=False, qk_norm=False,
        max_position_embeddings=8_192, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    fields.update(overrides)
    return ModelConfig(**fields)


def matmul_roofline(m: int, k: int, n: int, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of one f32 [m, k] x [k, n] matmul in JAX and in torch (median of `repeats`):
    the most a model made of such matmuls can reach on this machine, measured now."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    dot = jax.jit(jnp.dot)
    runs = {"jax": lambda: dot(ja, jb).block_until_ready(), "torch": lambda: ta @ tb}
    return {name: 2 * m * k * n / median_seconds(run, repeats) / 1e9 for name, run in runs.items()}


def mlp_roofline(m: int, d: int, f: int, layers: int = 4, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of forward + backward (weight and input gradients) through `layers` residual
    SwiGLU MLPs on [m, d] inputs (width f), in JAX and in torch (median of `repeats`): matmuls
    alone at the model's shape, without attention or the LM head, so what each library's
    kernels reach on training's bulk of FLOPs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, d), np.float32)
    w = [rng.standard_normal(shape, np.float32) * 0.02 for shape in [(d, f), (d, f), (f, d)]]

    def loss(weights, h, silu, mean):
        for gate, up, down in [weights] * layers:
            h = h + (silu(h @ gate) * (h @ up)) @ down
        return mean(h * h)

    grad = jax.jit(jax.grad(lambda ws, h: loss(ws, h, jax.nn.silu, jnp.mean), argnums=(0, 1)))
    jw, jx = [jnp.asarray(a) for a in w], jnp.asarray(x)
    tw = [torch.from_numpy(a).requires_grad_() for a in w]
    tx = torch.from_numpy(x).requires_grad_()

    def torch_step():
        loss(tw, tx, torch.nn.functional.silu, torch.mean).backward()

    runs = {"jax": lambda: jax.block_until_ready(grad(jw, jx)), "torch": torch_step}
    flops = 3 * layers * 3 * 2 * m * d * f  # three matmuls a layer, forward and two gradients
    return {name: flops / median_seconds(run, repeats) / 1e9 for name, run in runs.items()}


def median_seconds(step, repeats: int) -> float:
    """Median wall time of `step()` over `repeats` runs, after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_average() -> str:
    """The 1/5/15-minute load averages: other jobs on the cores make every figure noisier."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def paired_seconds(ours, reference, repeats: int) -> tuple[float, float]:
    """Median wall time of each step, timed alternately so machine load hits both alike (each
    runs once first: compilation, warm-up)."""
    ours(), reference()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for step, out in ((ours, times[0]), (reference, times[1])):
            start = time.perf_counter()
            step()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def with_threads(step, threads: int):
    """`step` run with torch limited to `threads` intra-op threads (other jobs on the cores
    starve torch's worker threads, so a reference is timed with all and with one)."""
    import torch

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step()
        finally:
            torch.set_num_threads(before)

    return run


def paired_by_threads(ours, reference, repeats: int) -> dict[int, tuple[float, float]]:
    """`paired_seconds` of ours against the torch reference run with all of torch's threads and
    with one: {threads: (ours, reference) medians}. The faster pairing is the reference that
    counts (other jobs on the cores starve torch's worker threads more than XLA's)."""
    import torch

    threads = sorted({torch.get_num_threads(), 1}, reverse=True)
    return {n: paired_seconds(ours, with_threads(reference, n), repeats) for n in threads}


def fastest_reference(timed: dict[int, tuple[float, float]]) -> int:
    """The thread count whose reference run was fastest in `paired_by_threads`' result."""
    return min(timed, key=lambda n: timed[n][1])
