"""Evaluate a policy on QA benchmarks (F1 / EM / LLM judge per dataset), or score a result file.

    python launch/eval.py run --oracle                      # pipeline check: F1 = 100 on the world
    python launch/eval.py run --limit 8 --sampler.max-new-tokens 64    # tiny random policy, quick
    python launch/eval.py run --dataset tests/data/deepresearcher/test.parquet \
        --policy.path CKPT --sampler.kind sglang --sampler.sglang.engines http://127.0.0.1:30000 \
        --tools.search-backend serper --judge.url https://api.openai.com/v1
    python launch/eval.py run --policy.path DIR --compile-only v5p:2x2x4   # fits? (config.json)
    python launch/eval.py score rollout_step_0.json --dataset test.parquet   # DeepResearcher output

Results go to --out-dir (samples.jsonl, summary.json, summary.md, report.html; by default a new
runs/eval/<dataset>-<policy>-<time>, printed); rerunning with that --out-dir resumes.
"""

import argparse
import asyncio
import sys
from typing import Annotated

import tyro

from dr_jax import cli
from dr_jax.aot import compile_eval
from dr_jax.eval import EvalConfig, ScoreConfig, evaluate, render_markdown, score_results


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, run it, print the summary table; returns the summary.
    `run --compile-only TOPOLOGY` compiles the sampler for a TPU topology instead."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--compile-only", metavar="TOPOLOGY", default=None)
    known, argv = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = tyro.cli(
        Annotated[EvalConfig, tyro.conf.subcommand("run", description="Evaluate a policy.")]
        | Annotated[
            ScoreConfig, tyro.conf.subcommand("score", description="Score a rollout JSON file.")
        ],
        default=EvalConfig(),
        args=argv,
    )
    if known.compile_only:
        if not isinstance(config, EvalConfig):
            raise SystemExit("--compile-only goes with `run` (the sampler), not `score`")
        sys.exit(compile_eval(config, known.compile_only))
    if isinstance(config, ScoreConfig):
        summary = asyncio.run(score_results(config))
    else:
        summary = asyncio.run(evaluate(config))
    print(render_markdown(summary["datasets"], summary["meta"]))
    return summary


if __name__ == "__main__":
    cli.run(main)
