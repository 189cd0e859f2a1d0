"""`python -m dr_jax.world serve|export`: serve the world on loopback, or write it to disk."""

import argparse
import contextlib
import sys
import threading

from dr_jax.world.server import WorldServer
from dr_jax.world.world import World


def _size(text: str) -> str | int:
    return int(text) if text.isdigit() else text


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
    args = parser.parse_args(argv)

    world = World.generate(seed=args.seed, size=args.size)
    if args.command == "export":
        out = world.export(args.out)
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
    sys.exit(main())
