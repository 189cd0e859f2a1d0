"""Policy throughput: forward and forward+backward tokens/s, dr_jax (JAX) vs transformers (torch).

Both run the same random Qwen2 model on CPU in float32: 4 layers, width 256, 4 heads of 64 with 2
KV heads, MLP 1024, vocabulary 32k, a batch of 4 x 512 tokens with left padding. Forward =
logits [B, T, V]; forward+backward = gradient of the mean next-token cross-entropy.
Run: `python benchmarks/policy.py [--repeats N]`. The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from report import print_summary

from dr_jax.models import ModelConfig, init_policy
from dr_jax.models.flops import training_flops_per_token

CONFIG = ModelConfig(
    vocab_size=32_000,
    hidden_size=256,
    intermediate_size=1_024,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    rope_theta=10_000.0,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
)
BATCH, LENGTH = 4, 512


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    lengths = np.array([LENGTH, LENGTH - 64, LENGTH - 128, LENGTH - 200])
    mask = (np.arange(LENGTH)[None] >= LENGTH - lengths[:, None]).astype(np.int32)
    return tokens, mask


def jax_steps(tokens, mask):
    policy = init_policy(CONFIG)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)

    def loss(params):
        logp = jax.nn.log_softmax(policy.apply(params, tokens, mask)[:, :-1])
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        weights = mask[:, 1:]
        return -(picked * weights).sum() / weights.sum()

    forward = jax.jit(lambda p: policy.apply(p, tokens, mask))
    backward = jax.jit(jax.value_and_grad(loss))
    return (
        lambda: jax.block_until_ready(forward(policy.params)),
        lambda: jax.block_until_ready(backward(policy.params)),
    )


def torch_steps(tokens, mask):
    torch.manual_seed(0)
    hf = transformers.Qwen2Config(**{k: v for k, v in CONFIG.to_hf().items() if k != "dtype"})
    model = transformers.Qwen2ForCausalLM(hf).float()
    tokens, mask = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = tokens.masked_fill(mask == 0, -100)
    inputs = dict(input_ids=tokens, attention_mask=mask, position_ids=positions)

    def forward():
        with torch.no_grad():
            return model(**inputs).logits

    def backward():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss

    return forward, backward


def paired_seconds(ours, reference, repeats: int) -> tuple[float, float]:
    """Median wall time of each step, timed alternately so machine load hits both alike."""
    ours(), reference()  # compile / warm up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for step, out in ((ours, times[0]), (reference, times[1])):
            start = time.perf_counter()
            step()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args()
    tokens, mask = batch()
    ours, ref = jax_steps(tokens, mask), torch_steps(tokens, mask)
    count = BATCH * LENGTH
    rows = []
    for name, i in (("forward", 0), ("forward+backward", 1)):
        t_ours, t_ref = paired_seconds(ours[i], ref[i], args.repeats)
        rows.append((name, count / t_ours, count / t_ref))
    flops = training_flops_per_token(CONFIG, LENGTH)
    print(f"{'pass':<18}{'dr_jax tok/s':>14}{'torch tok/s':>14}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<18}{a:>14.0f}{b:>14.0f}{a / b:>8.2f}")
    achieved = rows[1][1] * flops / 1e9
    print(f"training FLOPs/token {flops / 1e6:.1f} M; dr_jax fwd+bwd {achieved:.1f} GFLOP/s")
    print(f"jax {jax.devices()[0].platform}, torch threads {torch.get_num_threads()}")
    _, ours_tps, ref_tps = rows[1]
    setup = (
        f"Qwen2 L={CONFIG.num_layers} D={CONFIG.hidden_size} H={CONFIG.num_heads}/"
        f"{CONFIG.num_kv_heads} F={CONFIG.intermediate_size} V={CONFIG.vocab_size}, "
        f"batch {BATCH}x{LENGTH}, f32, CPU, torch {torch.__version__} vs jax {jax.__version__}"
    )
    print_summary(
        "policy_forward_backward_tokens_per_s",
        round(ours_tps, 1),
        round(ref_tps, 1),
        unit="tokens/s",
        higher_is_better=True,
        setup=setup,
    )


if __name__ == "__main__":
    main()
