"""Throughput of one GRPO update: dr_jax's Learner vs the same update in transformers + torch.

One update = old-policy log-probs + reference log-probs (no grad) + the policy update (PPO-clip
token-mean loss + 0.001 k3 KL - 0.001 entropy, global-norm clip 1.0, AdamW), as veRL runs it
per DeepResearcher step. dr_jax unembeds only the trained (response) tokens, chunked; the
torch side computes full [B, T, V] logits as veRL does. Both sides start from the same weights
(dr_jax's random init, written with save_pretrained and loaded by transformers) and see the
same batch; both run f32 on CPU.

    python benchmarks/train_step.py [--batch 8] [--seq 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from report import print_summary

from dr_jax.cli import skip_absent_tpu
from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.train import Learner, LossConfig, OptimConfig, TrainBatch

FIELDS = ("tokens", "attention_mask", "loss_mask", "advantages")


def make_batch(config: ModelConfig, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Left-padded rows: a 32-token prompt, then a response; the response is trained."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 2, t + 1, b)
    positions = np.arange(t)
    attention = (positions >= t - lengths[:, None]).astype(np.int32)
    loss_mask = (positions >= t - lengths[:, None] + 32).astype(np.float32)
    tokens = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32) * attention
    return {
        "tokens": tokens,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "advantages": rng.normal(size=b).astype(np.float32),
    }


# ---- dr_jax -----------------------------------------------------------------------------------


def jax_update(learner: Learner, reference, state, data: dict):
    tokens, attention, mask = data["tokens"], data["attention_mask"], data["loss_mask"]
    old = learner.logprobs(state.params, tokens, attention, mask)  # trained tokens only
    ref = learner.logprobs(reference, tokens, attention, mask)
    batch = TrainBatch(*(data[k] for k in FIELDS), old, ref)
    state, metrics = learner.train_step(state, batch)
    jax.block_until_ready(state)
    return state, metrics


# ---- transformers + torch ----------------------------------------------------------------------


def torch_logprobs_entropy(model, tokens, attention, positions, with_entropy: bool):
    logits = model(input_ids=tokens, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, :-1].float()
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, tokens[:, 1:, None])[..., 0] - logz
    if not with_entropy:
        return logp, None
    probs = torch.softmax(logits, dim=-1)
    return logp, logz - (probs * logits).sum(-1)


def torch_update(model, reference, optimizer, data: dict, cfg: LossConfig):
    tokens = torch.from_numpy(data["tokens"]).long()
    attention = torch.from_numpy(data["attention_mask"]).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    mask = torch.from_numpy(data["loss_mask"])[:, 1:]
    advantages = torch.from_numpy(data["advantages"])[:, None]
    with torch.no_grad():
        old, _ = torch_logprobs_entropy(model, tokens, attention, positions, False)
        ref, _ = torch_logprobs_entropy(reference, tokens, attention, positions, False)
    logp, entropy = torch_logprobs_entropy(model, tokens, attention, positions, True)
    ratio = torch.exp((logp - old).clamp(-20, 20))
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    pg = torch.maximum(-advantages * ratio, -advantages * clipped)
    d = (ref - logp).clamp(-20, 20)
    kl = (torch.exp(d) - d - 1).clamp(-10, 10)

    def token_mean(x):
        return (x * mask).sum() / mask.sum()

    loss = token_mean(pg) + cfg.kl_coef * token_mean(kl) - cfg.entropy_coef * token_mean(entropy)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


# ---- measurement --------------------------------------------------------------------------------


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one untimed warm-up call (compilation)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def update_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """10 (N + L H Dh T): a forward pass costs 2 FLOPs per matmul parameter N (LM head
    included, embedding lookup excluded) plus 2 L H Dh T for causal attention (QK^T and AV,
    halved by the mask); the update is backward (2x forward) + forward + two log-prob forwards
    = 5 forwards."""
    c = config
    attention_proj = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    n = c.num_layers * (attention_proj + 3 * c.hidden_size * c.intermediate_size)
    n += c.hidden_size * c.vocab_size
    return 10.0 * (n + c.num_layers * c.num_heads * c.head_dim * seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="trajectories per update")
    parser.add_argument("--seq", type=int, default=128, help="tokens per trajectory (padded)")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per side")
    parser.add_argument("--chunk", type=int, default=32, help="dr_jax log-prob chunk length")
    args = parser.parse_args()
    skip_absent_tpu()  # libtpu installed, no TPU: the CPU, quietly
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    config = ModelConfig.tiny()  # Qwen2 arch, 2 layers, width 64, the real 151,665 vocab
    loss_cfg = LossConfig()
    optim = OptimConfig(lr=1e-6, weight_decay=0.01, max_grad_norm=1.0)
    data = make_batch(config, args.batch, args.seq)
    tokens = args.batch * args.seq

    policy = init_policy(config, seed=0)
    learner = Learner(policy, optim, loss_cfg, logprob_chunk=args.chunk)
    reference = learner.reference_params()
    state = learner.init_state()

    def run_jax():
        nonlocal state
        state, metrics = jax_update(learner, reference, state, data)
        return float(metrics["loss"])

    with tempfile.TemporaryDirectory() as hf_dir:
        save_pretrained(policy, hf_dir)
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        torch_reference = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32
        )
    model.train()
    torch_reference.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optim.lr,
        betas=(optim.b1, optim.b2),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )

    first_jax = run_jax()
    first_torch = torch_update(model, torch_reference, optimizer, data, loss_cfg)
    jax_s, _ = timed(run_jax, args.repeats)
    torch_s, _ = timed(
        lambda: torch_update(model, torch_reference, optimizer, data, loss_cfg), args.repeats
    )
    ours, ref = tokens / jax_s, tokens / torch_s

    zeros = np.zeros((args.batch, args.seq), np.float32)
    probe = TrainBatch(*(data[k] for k in FIELDS), None, zeros)
    memory = learner.lower_step(state, probe).compile().memory_analysis()
    flops = update_flops_per_token(config, args.seq)
    chunk_logits = args.batch * args.chunk * config.vocab_size * 4
    achieved = ours * flops

    print(
        f"GRPO update (old + ref log-probs + policy update), {args.batch} x {args.seq} tokens, "
        f"tiny Qwen2 (2 layers, width 64, vocab {config.vocab_size:,}), f32, CPU"
    )
    print(f"{'':24}{'dr_jax':>14}{'torch+HF':>14}")
    print(f"{'seconds / update':24}{jax_s:14.3f}{torch_s:14.3f}")
    print(f"{'tokens / s':24}{ours:14.1f}{ref:14.1f}")
    print(f"{'loss of first update':24}{first_jax:14.6f}{first_torch:14.6f}")
    print(f"speed-up: {ours / ref:.2f}x")
    print()
    print("MFU on an accelerator = tokens/s x FLOPs/token / (chips x peak FLOP/s), with")
    print("  FLOPs/token = 10 (N + L H Dh T): a forward is 2N + causal attention 2 L H Dh T;")
    print("  the update is forward + backward (2x) + two log-prob forwards = 5 forwards")
    print(f"  here: {flops / 1e6:.1f} MFLOP/token -> {achieved / 1e9:.2f} GFLOP/s on this CPU")
    print(f"  (1 TPU v5p chip, 459 TFLOP/s bf16, at this tokens/s: MFU {achieved / 459e12:.1e})")
    print()
    print("device memory of the jitted train step (XLA memory analysis):")
    print(
        f"  temporaries {memory.temp_size_in_bytes / 2**20:8.1f} MiB = "
        f"{memory.temp_size_in_bytes / tokens / 1024:.1f} KiB per token; one [B, chunk, V] f32 "
        f"logits buffer is {chunk_logits / 2**20:.1f} MiB, the full [B, T, V] would be "
        f"{chunk_logits * args.seq / args.chunk / 2**20:.1f} MiB"
    )
    print(
        f"  arguments   {memory.argument_size_in_bytes / 2**20:8.1f} MiB "
        "(params, AdamW moments, batch)"
    )
    print_summary(
        "train_step",
        round(ours, 2),
        round(ref, 2),
        unit="tokens/s",
        higher_is_better=True,
        setup="one GRPO update (old+ref log-probs, PPO-clip + k3 KL + entropy, AdamW) on "
        f"{args.batch}x{args.seq} tokens, ModelConfig.tiny (vocab {config.vocab_size}), "
        f"{int(data['loss_mask'].sum())} trained; f32 CPU; dr_jax Learner (chunk "
        f"{args.chunk}, trained tokens only) vs transformers+torch "
        f"{torch.__version__}; median of {args.repeats} after warm-up",
    )


if __name__ == "__main__":
    main()
