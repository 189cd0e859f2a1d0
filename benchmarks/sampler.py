"""Rollout speed: JaxSampler decode vs transformers `generate`, and the agent loop's own cost.

1. Decode throughput: the same tiny Qwen2 config and weights (real 151,665-token vocabulary),
   batch 16, 256 new tokens each, temperature 1 over the full vocabulary, no early stop.
   Ours: `JaxSampler.generate` (KV cache, `decode_chunk` steps per jitted call); reference:
   transformers `generate` on torch CPU with its KV cache. One timed run each, after a warm-up
   (compilation for us, a short generate for torch).
2. Agent-loop overhead: model turns per second when the sampler and the tools answer at once
   (canned turns, real tokenizer, parser and chat-template observations), i.e. the ceiling the
   orchestration puts on a rollout. Target: >= 500 turns/s on 2 cores.

    python benchmarks/sampler.py [--batch 16] [--new-tokens 256] [--questions 16 --group 16]

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
from report import print_summary, print_table
from transformers import AutoModelForCausalLM

from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.models.tokenizer import qwen2_tokenizer
from dr_jax.rollout import Agent, AgentConfig, JaxSampler, SampleResult, SamplingParams


def jax_decode(policy, prompts: np.ndarray, new_tokens: int, chunk: int) -> float:
    """Tokens/s of one JaxSampler.generate of all rows (after a compiling warm-up)."""
    batch, length = prompts.shape
    sampler = JaxSampler(
        policy, max_batch_size=batch, max_seq_len=length + new_tokens, decode_chunk=chunk
    )
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    rows = prompts.tolist()
    asyncio.run(sampler.generate(rows, params))  # compiles prefill and decode
    started = time.perf_counter()
    results = asyncio.run(sampler.generate(rows, params))
    elapsed = time.perf_counter() - started
    assert all(len(r.token_ids) == new_tokens for r in results)
    return batch * new_tokens / elapsed


def torch_decode(path: str, prompts: np.ndarray, new_tokens: int) -> float:
    """Tokens/s of transformers generate (sampling, KV cache) on the same weights."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inputs = torch.from_numpy(prompts.astype(np.int64))
    kwargs = dict(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, use_cache=True,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    with torch.inference_mode():
        model.generate(inputs, max_new_tokens=8, min_new_tokens=8, **kwargs)
        started = time.perf_counter()
        out = model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        elapsed = time.perf_counter() - started
    assert out.shape[1] == prompts.shape[1] + new_tokens
    return prompts.shape[0] * new_tokens / elapsed


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
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--decode-chunk", type=int, default=16)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--group", type=int, default=16, help="samples per question")
    args = parser.parse_args()

    config = ModelConfig.tiny()
    policy = init_policy(config, seed=0)
    prompts = np.random.default_rng(0).integers(0, 150_000, (args.batch, args.prompt_len))
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(policy, path)
        reference = torch_decode(path, prompts, args.new_tokens)
    ours = jax_decode(policy, prompts, args.new_tokens, args.decode_chunk)
    turns = agent_turns_per_second(qwen2_tokenizer(), args.questions, args.group)

    setup = (
        f"tiny Qwen2 (2 layers, hidden 64, vocab {config.vocab_size}), batch {args.batch}, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, T=1 full vocab, CPU "
        f"{torch.get_num_threads()} threads; agent loop {turns:.0f} turns/s "
        f"({args.questions} questions x {args.group} samples x 4 turns, instant sampler and tools)"
    )
    rows = [
        ("decode tokens/s, JaxSampler", f"{ours:,.0f}"),
        ("decode tokens/s, transformers generate", f"{reference:,.0f}"),
        ("ratio (target >= 1.0)", f"{ours / reference:.2f}"),
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
