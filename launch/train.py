"""Train a deep-research policy with GRPO.

    python launch/train.py                      # embedded default: SmolLM2, offline world, CPU
    python launch/train.py --grpo.steps 20      # any field of TrainConfig (see --help)
    python launch/train.py --preset deepresearcher --policy.path Qwen/Qwen2.5-7B-Instruct-dir \\
        --data.source data/ --tools.reader-url URL --tools.reader-model qwen-plus --mesh 4x4
    python launch/train.py --preset deepresearcher --policy.path DIR --mesh 4x4 \\
        --compile-only v5p:2x2x4                # does it fit? (DIR needs only config.json)

Running the same command again resumes from the run directory's latest checkpoint.
"""

import argparse
import asyncio
import sys

import tyro

from dr_jax import cli
from dr_jax.aot import compile_train
from dr_jax.train.config import TrainConfig, deepresearcher_preset, embedded_preset
from dr_jax.train.metrics import run_summary
from dr_jax.train.run import train

PRESETS = {
    "default": embedded_preset,
    "smoke": TrainConfig,
    "deepresearcher": deepresearcher_preset,
}


def parse(argv: list[str]) -> tuple[TrainConfig, str | None]:
    """`--preset NAME` picks the defaults; every other flag overrides a field of them.
    `--compile-only TOPOLOGY` compiles the run for a TPU topology instead of running it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="default")
    pre.add_argument("--compile-only", metavar="TOPOLOGY", default=None)
    known, rest = pre.parse_known_args(argv)
    config = tyro.cli(
        TrainConfig,
        default=PRESETS[known.preset](),
        args=rest,
        description=f"{__doc__.splitlines()[0]} Preset: {known.preset} (--preset "
        f"{{{','.join(sorted(PRESETS))}}}: the defaults shown below are that preset's). "
        "--compile-only TOPOLOGY (e.g. v5p:2x2x4): compile every program for that TPU "
        "topology and report its memory (last line JSON); exits 1 if one does not fit.",
    )
    return config, known.compile_only


def main(argv: list[str] | None = None) -> dict:
    """Parse, train (or resume), print the run's metrics tables; returns the last record."""
    config, topology = parse(sys.argv[1:] if argv is None else argv)
    if topology:
        sys.exit(compile_train(config, topology))
    record = asyncio.run(train(config))
    print(run_summary(config.run_dir))
    return record


if __name__ == "__main__":
    cli.run(main)
