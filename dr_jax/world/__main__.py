"""`python -m dr_jax.world serve|export|demos`: serve the world on loopback, write it to disk,
or write the oracle's demonstrations."""

import argparse
import contextlib
import json
import sys
import threading
from pathlib import Path

from dr_jax import cli
from dr_jax.world.export import export_world
from dr_jax.world.server import WorldServer
from dr_jax.world.world import World


def _size(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _write_demos(world: World, split: str, out: Path) -> int:
    from dr_jax.world.oracle import demonstrate

    demos = demonstrate(world, world.split(split))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for demo in demos:
            f.write(json.dumps(demo.to_json(), ensure_ascii=False) + "\n")
    f1 = sum(d.f1 for d in demos) / max(1, len(demos))
    print(f"wrote {len(demos)} demonstrations of the {split} split to {out} (oracle F1 {f1:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dr_jax.world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve pages and /search on loopback until Ctrl-C")
    serve.add_argument("--seed", type=int, default=0, help="world seed")
    serve.add_argument("--size", type=_size, default="default", help="tiny|default|N entities")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback)")
    serve.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    export = commands.add_parser("export", help="write pages/*.html and {train,dev,test} files")
    export.add_argument("--seed", type=int, default=0, help="world seed")
    export.add_argument("--size", type=_size, default="default", help="tiny|default|N entities")
    export.add_argument("--out", required=True, help="output directory")
    demos = commands.add_parser("demos", help="write oracle demonstrations (JSONL) of a split")
    demos.add_argument("--seed", type=int, default=0, help="world seed")
    demos.add_argument("--size", type=_size, default="default", help="tiny|default|N entities")
    demos.add_argument("--split", default="train", help="train|dev|test")
    demos.add_argument("--out", required=True, help="output .jsonl file")
    args = parser.parse_args(argv)

    world = World.generate(seed=args.seed, size=args.size)
    if args.command == "demos":
        return _write_demos(world, args.split, Path(args.out))
    if args.command == "export":
        out = export_world(world, args.out)
        counts = ", ".join(f"{s}={len(world.split(s))}" for s in ("train", "dev", "test"))
        print(f"wrote {len(world.pages)} pages and questions ({counts}) to {out}")
        return 0
    with WorldServer(world, host=args.host, port=args.port) as server:
        print(f"world seed={args.seed}: {len(world.pages)} pages at {server.url}", flush=True)
        print(f"search: {server.url}/search?q=QUERY&format=json", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
