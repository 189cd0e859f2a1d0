"""Policy throughput: forward and forward+backward tokens/s, dr_jax (JAX) vs transformers (torch).

Both run the same random model on CPU in float32, by default the SmolLM2-135M shape (Llama, 30
layers, width 576, 9 / 3 heads, MLP 1536, vocabulary 49,152, tied; the main job's policy), or
with `--shape tiny` a 4-layer width-256 Qwen2 with a 32k vocabulary; a batch of 4 x 512 tokens
with left padding. Forward = logits [B, T, V]; forward+backward = gradient of the mean
next-token cross-entropy. The steps are timed alternately (median of `--repeats`; torch with all
its threads and with one, the faster counting), beside the machine's matmul roofline measured in
the same run at the model's MLP shape ([B*T, D] x [D, F]), so the figures read as a fraction of
what this machine can do now.
Run: `python benchmarks/policy.py [--shape smollm2|tiny] [--repeats N]`. The last line is the
JSON summary. Targets on the SmolLM2 shape: forward+backward >= 1.05x torch and >= 90% of the
roofline; forward >= 1.0x.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from report import (
    fastest_reference,
    load_average,
    matmul_roofline,
    mlp_roofline,
    paired_by_threads,
    print_summary,
    smollm2_135m,
)

from dr_jax.cli import skip_absent_tpu
from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.models.flops import training_flops_per_token

TINY = ModelConfig(
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


def batch(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    lengths = np.array([LENGTH, LENGTH - 64, LENGTH - 128, LENGTH - 200])
    mask = (np.arange(LENGTH)[None] >= LENGTH - lengths[:, None]).astype(np.int32)
    return tokens, mask


def cross_entropy(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over real tokens. Position t predicts token t + 1 and the
    last position gets weight 0, as transformers' loss does, so the [B, T, V] logits are never
    sliced (a copy). The target's logit is picked with a compare-and-sum, whose gradient is one
    fused select (a gather's is a [B, T, V] scatter into zeros)."""
    targets = jnp.roll(tokens, -1, axis=1)
    weights = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
    hit = jnp.arange(logits.shape[-1]) == targets[..., None]
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return (nll * weights).sum() / weights.sum()


def jax_steps(policy, tokens, mask):
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    forward = jax.jit(lambda p: policy.apply(p, tokens, mask))
    loss = lambda p: cross_entropy(policy.apply(p, tokens, mask), tokens, mask)
    backward = jax.jit(jax.value_and_grad(loss))
    return (
        lambda: jax.block_until_ready(forward(policy.params)),
        lambda: jax.block_until_ready(backward(policy.params)),
    )


def torch_model(policy, path: str):
    """transformers' own class for the config, loaded from our saved weights (same model)."""
    save_pretrained(policy, path)
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def torch_steps(model, tokens, mask):
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


def logit_gap(policy, model, tokens, mask) -> float:
    """Largest |logit difference| on the real tokens: both sides run the same maths."""
    ours = np.asarray(policy.logits(jnp.asarray(tokens), jnp.asarray(mask)))
    positions = (torch.as_tensor(mask).cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask),
            position_ids=positions,
        ).logits.numpy()
    return float(np.abs(ours - ref)[mask.astype(bool)].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args()
    skip_absent_tpu()  # libtpu installed, no TPU: the CPU, quietly
    config = smollm2_135m() if args.shape == "smollm2" else TINY
    policy = init_policy(config)
    tokens, mask = batch(config)
    with tempfile.TemporaryDirectory() as path:
        model = torch_model(policy, path)
    gap = logit_gap(policy, model, tokens, mask)
    ours, ref = jax_steps(policy, tokens, mask), torch_steps(model, tokens, mask)
    count = BATCH * LENGTH
    rows = []
    for name, i in (("forward", 0), ("forward+backward", 1)):
        timed = paired_by_threads(ours[i], ref[i], args.repeats)
        t_ours, t_ref = timed[fastest_reference(timed)]
        rows.append((name, count / t_ours, count / t_ref))
    roof = matmul_roofline(count, config.hidden_size, config.intermediate_size)
    mlp = mlp_roofline(count, config.hidden_size, config.intermediate_size)
    best = max(roof.values())
    flops = training_flops_per_token(config, LENGTH)
    print(f"{'pass':<18}{'dr_jax tok/s':>14}{'torch tok/s':>14}{'ratio':>8}{'roofline':>10}")
    for name, a, b in rows:
        limit = best * 1e9 / (flops / 3 if name == "forward" else flops)
        print(f"{name:<18}{a:>14.0f}{b:>14.0f}{a / b:>8.2f}{a / limit:>10.0%}")
    _, ours_tps, ref_tps = rows[1]
    print(
        f"matmul roofline [{count}x{config.hidden_size}]x[{config.hidden_size}x"
        f"{config.intermediate_size}]: jax {roof['jax']:.0f}, torch {roof['torch']:.0f} GFLOP/s; "
        f"training FLOPs/token {flops / 1e6:.0f} M -> limit {best * 1e9 / flops:.0f} tokens/s"
    )
    print(
        f"4 SwiGLU MLPs of this shape, forward+backward alone: jax {mlp['jax']:.0f}, torch "
        f"{mlp['torch']:.0f} GFLOP/s"
    )
    print(
        f"dr_jax fwd+bwd {ours_tps * flops / 1e9:.1f} GFLOP/s, torch {ref_tps * flops / 1e9:.1f}; "
        f"max |logit gap| {gap:.1e}; load average {load_average()}; "
        f"torch threads tried {list(timed)}"
    )
    setup = (
        f"{args.shape}: {config.model_type} L={config.num_layers} D={config.hidden_size} "
        f"H={config.num_heads}/{config.num_kv_heads} F={config.intermediate_size} "
        f"V={config.vocab_size}, batch {BATCH}x{LENGTH}, f32, CPU, torch {torch.__version__} vs "
        f"jax {jax.__version__}, roofline {best:.0f} GFLOP/s, load {load_average()}"
    )
    print_summary(
        "policy_forward_backward_tokens_per_s",
        round(ours_tps, 1),
        round(ref_tps, 1),
        unit="tokens/s",
        higher_is_better=True,
        setup=setup,
        forward_ratio=round(rows[0][1] / rows[0][2], 4),
        roofline_fraction=round(ours_tps * flops / (best * 1e9), 4),
    )


if __name__ == "__main__":
    main()
