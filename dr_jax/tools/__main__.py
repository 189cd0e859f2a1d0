"""Command line: search, browse and build a local index, printing the JSON the agent would see."""

import argparse
import asyncio
import json
import os
import sys

from dr_jax.tools.calls import ToolCall
from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.errors import ToolsSetupError
from dr_jax.tools.executor import BROWSE_TOOL, SEARCH_TOOL, ToolExecutor
from dr_jax.tools.search import build_index
from dr_jax.tools.session import ToolSession

DESCRIPTION = """\
Search and browse the way a dr_jax agent does, printing JSON.

  python -m dr_jax.tools search "QUERY" [QUERY ...] [--backend world|searxng|serper|local]
  python -m dr_jax.tools browse URL [URL ...] [--question Q] [--allow-host 127.0.0.1:8080]
  python -m dr_jax.tools index CORPUS.jsonl OUT_DIR

Search backends:
  world    the offline research world (`python -m dr_jax.world serve`); --url is its address
  searxng  a SearXNG instance's JSON API (free, self-hosted; enable `json` in search.formats)
  serper   Google through serper.dev; the key is read from $SERPER_API_KEY, never printed
  local    a BM25 index over a JSONL corpus {id, title, text, url?}; build it with `index`

Environment variables:
  DR_JAX_SEARCH_URL   default --url for world/searxng
  SERPER_API_KEY      Serper key (backend serper)
  OPENAI_API_KEY      key for the reader LLM endpoint (--reader llm), if it needs one

Addresses that are not globally routable (loopback, private, link-local, shared, cloud
metadata) are refused unless --allow-host names their host:port.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dr_jax.tools",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache", help="cache shared by runs: a SQLite file, or redis://host:6379/0 for hosts"
    )
    common.add_argument("--replay", action="store_true", help="serve only from --cache")
    common.add_argument(
        "--format",
        choices=("json", "deepresearcher"),
        default="json",
        help="observation rendering (deepresearcher: the original's Python repr)",
    )

    search = commands.add_parser("search", parents=[common], help="run web searches")
    search.add_argument("queries", nargs="+", metavar="QUERY")
    search.add_argument(
        "--backend",
        choices=("world", "searxng", "serper", "local"),
        help="default: local with --index, else world",
    )
    search.add_argument(
        "--url",
        default=os.environ.get("DR_JAX_SEARCH_URL"),
        help="world/SearXNG base URL, or the Serper endpoint (default $DR_JAX_SEARCH_URL)",
    )
    search.add_argument("--index", help="BM25 index directory (backend local)")
    search.add_argument("--top-k", type=int, default=10, help="results per query")
    search.add_argument("--max-queries", type=int, default=3, help="queries run per call")

    browse = commands.add_parser("browse", parents=[common], help="read web pages")
    browse.add_argument("urls", nargs="+", metavar="URL")
    browse.add_argument("--question", default="", help="question the reader LLM reads for")
    browse.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="host:port exempt from the refusal of non-global addresses (repeatable)",
    )
    browse.add_argument("--reader", choices=("none", "llm"), default="none")
    browse.add_argument("--reader-url", help="OpenAI-compatible base URL, e.g. .../v1")
    browse.add_argument("--reader-model", help="model name sent to the reader endpoint")
    browse.add_argument("--window-chars", type=int, default=40_960, help="characters per window")
    browse.add_argument("--page-budget", type=int, default=4, help="windows read per URL")
    browse.add_argument("--text-format", choices=("markdown", "text"), default="markdown")

    index = commands.add_parser("index", help="build a BM25 index from a JSONL corpus")
    index.add_argument("corpus", help="JSONL file, one {id, title, text, url?} per line")
    index.add_argument("out_dir")
    return parser


def _config(args: argparse.Namespace) -> ToolsConfig:
    shared = dict(cache_url=args.cache, replay=args.replay, observation_format=args.format)
    if args.command == "search":
        backend = args.backend or ("local" if args.index else "world")
        return ToolsConfig(
            search_backend=backend,
            search_url=args.url,
            local_index=args.index,
            top_k=args.top_k,
            max_queries=args.max_queries,
            extract_workers=0,
            **shared,
        )
    return ToolsConfig(
        allow_hosts=tuple(args.allow_host),
        reader=args.reader,
        reader_url=args.reader_url,
        reader_model=args.reader_model,
        window_chars=args.window_chars,
        page_budget=args.page_budget,
        text_format=args.text_format,
        extract_workers=0,
        **shared,
    )


async def _run(args: argparse.Namespace) -> str:
    config = _config(args)
    if args.command == "search":
        call = ToolCall(SEARCH_TOOL, {"query": args.queries})
    else:
        call = ToolCall(BROWSE_TOOL, {"url_list": args.urls})
    async with ToolExecutor(config, search=args.command == "search") as tools:
        return await tools.execute(call, ToolSession(question=getattr(args, "question", "")))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "index":
        count = build_index(args.corpus, args.out_dir)
        print(json.dumps({"index": args.out_dir, "documents": count}))
        return 0
    try:
        text = asyncio.run(_run(args))
    except (ToolsSetupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format != "json":
        print(text)
        return 0
    pages = json.loads(text)
    print(json.dumps(pages, indent=2, ensure_ascii=False))
    every_url_failed = all(isinstance(p, dict) and p.get("error") for p in pages)
    return 1 if args.command == "browse" and pages and every_url_failed else 0


if __name__ == "__main__":
    sys.exit(main())
