"""On one GPU (or TPU chip): the learner step and the sampler's decode of a Qwen2.5-1.5B-shaped
random model in bf16, as tokens/s and measured MFU against the chip's peak bf16 FLOP/s.

The learner step is one Learner.train_step (forward + backward + AdamW, remat and attention
as chosen, every position trained) on rows x length tokens; its model FLOPs are
dr_jax.models.flops.training_flops_per_token. Decode is JaxSampler.generate of `--decode-rows`
rows, `--new-tokens` each, after a short prompt. "reference" is the chip's peak: ratio = MFU.
One prepared run, under 8 minutes on an H100/H200 (compiles included).

    python benchmarks/accelerator.py [--rows 8] [--length 4096] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from report import print_summary, print_table

from dr_jax.cli import skip_absent_tpu
from dr_jax.models import init_policy
from dr_jax.models.flops import training_flops_per_token
from dr_jax.models.hf_io import read_config
from dr_jax.rollout import JaxSampler, SamplingParams
from dr_jax.train import Learner, LossConfig, OptimConfig, TrainBatch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5": 459.0}
"""Dense bf16 peak per chip (vendor figures; H100/H200 SXM without sparsity)."""
CONFIG = "benchmarks/configs/qwen2.5-1.5b-instruct"


def peak_flops(device_kind: str, override: float | None) -> float:
    if override:
        return override * 1e12
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_kind:
            return tflops * 1e12
    raise SystemExit(f"unknown peak for {device_kind!r}: pass --peak-tflops")


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def learner_step(policy, rows: int, length: int, repeats: int) -> float:
    """Seconds of one train step on rows x length random tokens (all trained)."""
    learner = Learner(policy, OptimConfig(lr=1e-6), LossConfig(), logprob_chunk=1024)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, policy.config.vocab_size, (rows, length)).astype(np.int32)
    ones = np.ones((rows, length), np.float32)
    zeros = np.zeros((rows, length), np.float32)
    batch = TrainBatch(tokens, ones.astype(np.int32), ones, rng.normal(size=rows), zeros, zeros)
    state = [learner.init_state()]

    def step():
        state[0], metrics = learner.train_step(state[0], batch)
        jax.block_until_ready(metrics)

    return median_seconds(step, repeats)


def decode(policy, rows: int, prompt: int, new_tokens: int) -> float:
    """Seconds of generating new_tokens for each of `rows` rows (one batch, continuous)."""
    sampler = JaxSampler(policy, max_batch_size=rows, max_seq_len=prompt + new_tokens)
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    prompts = np.random.default_rng(1).integers(0, 1000, (rows, prompt)).tolist()

    def run():
        results = asyncio.run(sampler.generate(prompts, params))
        assert all(len(r.token_ids) == new_tokens for r in results)

    return median_seconds(run, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="learner rows per step")
    parser.add_argument("--length", type=int, default=4096, help="tokens per learner row")
    parser.add_argument("--remat", default="matmuls", help="none | full | matmuls")
    parser.add_argument("--attention", default="auto", help="auto | xla | chunked | cudnn")
    parser.add_argument("--decode-rows", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="chip's bf16 peak")
    parser.add_argument("--config", default=CONFIG, help="a model directory's config.json")
    args = parser.parse_args()
    skip_absent_tpu()  # libtpu installed, no TPU: the CPU, quietly

    device = jax.devices()[0]
    peak = peak_flops(device.device_kind, args.peak_tflops)
    config = read_config(args.config)
    policy = init_policy(config, dtype=jnp.bfloat16).replace(
        remat=args.remat, attention=args.attention
    )
    step_s = learner_step(policy, args.rows, args.length, args.repeats)
    tokens = args.rows * args.length
    achieved = tokens * training_flops_per_token(config, args.length) / step_s
    decode_s = decode(policy, args.decode_rows, 128, args.new_tokens)
    decode_tps = args.decode_rows * args.new_tokens / decode_s
    print_table(
        [
            ("chip", f"{device.device_kind} ({jax.default_backend()})"),
            ("model", f"{args.config} shape, random, bf16, remat {args.remat}"),
            ("learner step", f"{args.rows} x {args.length} tokens in {step_s:.3f} s"),
            ("learner tokens/s", f"{tokens / step_s:,.0f}"),
            ("learner MFU", f"{achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s"),
            ("decode tokens/s", f"{decode_tps:,.0f} ({args.decode_rows} rows)"),
        ]
    )
    print_summary(
        "accelerator_learner_mfu",
        achieved / 1e12,
        peak / 1e12,
        unit="TFLOP/s (model FLOPs of the learner step)",
        higher_is_better=True,
        setup=f"{device.device_kind}, {args.config} bf16, {args.rows}x{args.length}",
        learner_tokens_per_s=tokens / step_s,
        decode_tokens_per_s=decode_tps,
    )


if __name__ == "__main__":
    main()
