"""Rollout speed: JaxSampler decode vs transformers `generate`, and the agent loop's own cost.

1. Decode throughput on the same weights: by default the SmolLM2-135M shape (random weights;
   `--shape tiny` for the 2-layer test model with the 151,665-token vocabulary), batch 16, 128
   new tokens each, temperature 1 over the full vocabulary, no early stop, f32. Ours:
   `JaxSampler.generate` (KV cache, `decode_chunk` steps per jitted call); reference:
   transformers `generate` on torch CPU with its KV cache, with all of torch's threads and with
   one (the faster counts: other jobs on the cores starve torch's threads). Timed alternately,
   median of
   `--repeats` runs each after a warm-up (compilation for us, a short generate for torch),
   beside the machine's matmul roofline at the decode shape ([batch, D] x [D, F]) and the load.
   Target on the SmolLM2 shape: >= 3x.
2. Agent-loop overhead: model turns per second when the sampler and the tools answer at once
   (canned turns, real tokenizer, parser and chat-template observations), i.e. the ceiling the
   orchestration puts on a rollout. Target: >= 500 turns/s on 2 cores.

    python benchmarks/sampler.py [--shape smollm2|tiny] [--batch 16] [--new-tokens 128]

The last line is the JSON summary of the decode comparison (the agent-loop figure is in the
table and in its `setup`).
"""

import argparse
import asyncio
import json
import tempfile
import time

import numpy as np
import torch
from report import (
    fastest_reference,
    load_average,
    matmul_roofline,
    paired_by_threads,
    print_summary,
    print_table,
    smollm2_135m,
)
from transformers import AutoModelForCausalLM

from dr_jax.cli import skip_absent_tpu
from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.models.tokenizer import qwen2_tokenizer
from dr_jax.rollout import Agent, AgentConfig, JaxSampler, SampleResult, SamplingParams


def jax_decode(policy, prompts: np.ndarray, new_tokens: int, chunk: int):
    """One JaxSampler.generate of all rows, as a step to time (compiled by a first call)."""
    batch, length = prompts.shape
    sampler = JaxSampler(
        policy, max_batch_size=batch, max_seq_len=length + new_tokens, decode_chunk=chunk
    )
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    rows = prompts.tolist()

    def step():
        results = asyncio.run(sampler.generate(rows, params))
        assert all(len(r.token_ids) == new_tokens for r in results)

    return step


def torch_decode(path: str, prompts: np.ndarray, new_tokens: int):
    """transformers generate (sampling, KV cache) on the same weights, as a step to time."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inputs = torch.from_numpy(prompts.astype(np.int64))
    kwargs = dict(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, use_cache=True,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip

    def step(count=new_tokens):
        with torch.inference_mode():
            out = model.generate(inputs, max_new_tokens=count, min_new_tokens=count, **kwargs)
        assert out.shape[1] == prompts.shape[1] + count

    step(8)  # warm-up
    return step


def same_maths(policy, path: str, prompts: np.ndarray) -> float:
    """Largest |logit difference| of the two models on the prompts: both sides run one model."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(prompts.astype(np.int64))).logits.numpy()
    ours = np.asarray(policy.logits(prompts.astype(np.int32)))
    return float(np.abs(ours - ref).max())


class CannedSampler:
    """Answers at once: three tool-call turns, then an answer (the real tokenizer's ids)."""

    def __init__(self, tokenizer) -> None:
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        call = '{"name": "web_search", "arguments": {"query": ["benchmark query"]}}'
        tool = f"\nSearch first.\n</think>\n<tool_call>\n{call}\n</tool_call>"
        answer = "\nDone.\n</think>\n<answer>42</answer>"
        self.turns = [[*tokenizer.encode(t), end] for t in (tool, tool, tool, answer)]
        self.start = tokenizer.convert_tokens_to_ids("<|im_start|>")

    async def generate(self, prompts, params):
        out = []
        for prompt in prompts:
            ids = self.turns[min((list(prompt).count(self.start) - 3) // 2, 3)]
            out.append(SampleResult(ids, [-0.5] * len(ids), "stop"))
        return out


class InstantTools:
    async def execute(self, call, session) -> str:
        return json.dumps([{"title": "A page", "url": "http://127.0.0.1/a", "snippet": "text"}])


def agent_turns_per_second(tokenizer, questions: int, group: int) -> float:
    """Turns/s of `questions` x `group` trajectories (GRPO groups share the prompt render)."""
    config = AgentConfig(today="2026-01-02")
    agent = Agent(CannedSampler(tokenizer), tokenizer, InstantTools(), config)
    texts = [f"Question number {i}?" for i in range(questions)]
    asyncio.run(agent.rollout(texts[:2], group))  # warm caches
    started = time.perf_counter()
    trajs = asyncio.run(agent.rollout(texts, group))
    elapsed = time.perf_counter() - started
    assert all(t.finish_reason == "answer" and t.num_turns == 4 for t in trajs)
    return sum(t.num_turns for t in trajs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--decode-chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--group", type=int, default=16, help="samples per question")
    args = parser.parse_args()
    skip_absent_tpu()  # libtpu installed, no TPU: the CPU, quietly

    config = smollm2_135m() if args.shape == "smollm2" else ModelConfig.tiny()
    policy = init_policy(config, seed=0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, config.vocab_size, (args.batch, args.prompt_len))
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(policy, path)
        gap = same_maths(policy, path, prompts)
        ours_step = jax_decode(policy, prompts, args.new_tokens, args.decode_chunk)
        ref_step = torch_decode(path, prompts, args.new_tokens)
        timed = paired_by_threads(ours_step, ref_step, args.repeats)
    tokens = args.batch * args.new_tokens
    by_threads = {n: tokens / t[1] for n, t in timed.items()}
    best = fastest_reference(timed)
    ours, reference = tokens / timed[best][0], tokens / timed[best][1]  # one pairing's medians
    roof = matmul_roofline(args.batch, config.hidden_size, config.intermediate_size)
    turns = agent_turns_per_second(qwen2_tokenizer(), args.questions, args.group)

    shape = (
        f"{config.model_type} L={config.num_layers} D={config.hidden_size} "
        f"H={config.num_heads}/{config.num_kv_heads} F={config.intermediate_size} "
        f"V={config.vocab_size}"
    )
    setup = (
        f"{args.shape} ({shape}), batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, T=1 full vocab, f32, CPU, reference torch with {best} "
        f"thread(s) (the faster of {list(timed)}), load {load_average()}; agent loop "
        f"{turns:.0f} turns/s ({args.questions} questions x {args.group} samples x 4 turns, "
        "instant sampler and tools)"
    )
    target = 3.0 if args.shape == "smollm2" else 1.0
    rows = [
        ("model", f"{args.shape}: {shape}"),
        ("same maths: max |logit difference| vs transformers", f"{gap:.1e}"),
        ("decode tokens/s, JaxSampler", f"{ours:,.0f}"),
        *(
            (f"decode tokens/s, transformers generate, {n} thread(s)", f"{tps:,.0f}")
            for n, tps in by_threads.items()
        ),
        (f"ratio (target >= {target:g})", f"{ours / reference:.2f}"),
        (
            f"matmul roofline [{args.batch}x{config.hidden_size}]x[{config.hidden_size}x"
            f"{config.intermediate_size}] GFLOP/s",
            f"jax {roof['jax']:.0f}, torch {roof['torch']:.0f}",
        ),
        ("load average (1/5/15 min)", load_average()),
        ("agent loop turns/s (target >= 500)", f"{turns:,.0f}"),
    ]
    print_table(rows)
    print_summary(
        "sampler_decode",
        round(ours, 1),
        round(reference, 1),
        unit="tokens/s",
        higher_is_better=True,
        setup=setup,
    )


if __name__ == "__main__":
    main()
