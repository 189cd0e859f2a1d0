"""Build time and peak memory of the offline world, and the oracle's F1 over all its questions.

Each size is built in a fresh subprocess (generate + BM25 index), so its peak RSS is its own.
The reference is the 10 s build target for the default world on 2 cores. The 100k-page world
takes a few minutes. Usage: python benchmarks/world.py [--large 100000] [--no-oracle]
"""

import argparse
import json
import os
import subprocess
import sys
import time

from report import print_summary

TARGET_SECONDS = 10.0

_CHILD = """
import json, resource, sys, time
import bm25s  # imported before timing: the build is measured, not the imports
from dr_jax.world import World
from dr_jax.world.oracle import search_query
size = sys.argv[1] if not sys.argv[1].isdigit() else int(sys.argv[1])
t0 = time.perf_counter()
world = World.generate(seed=0, size=size)
t1 = time.perf_counter()
world.index
t2 = time.perf_counter()
reads = [r for q in world.questions[:300] for rnd in q.plan for r in rnd]
hits = sum(r.path in [h["url"] for h in world.index.search(search_query(r))] for r in reads)
t3 = time.perf_counter()
print(json.dumps({"recall10": hits / len(reads), "query_ms": 1000 * (t3 - t2) / len(reads),
    "size": sys.argv[1], "pages": len(world.pages), "questions": len(world.questions),
    "generate_s": t1 - t0, "index_s": t2 - t1, "build_s": t2 - t0,
    "page_mb": sum(map(len, world.pages.values())) / 1e6,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(size: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, size], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def oracle_f1() -> dict:
    from dr_jax.world import World
    from dr_jax.world.oracle import demonstrate

    world = World.generate(seed=0)
    started = time.perf_counter()
    demos = demonstrate(world, world.questions)
    by_kind: dict[str, list[float]] = {}
    for d in demos:
        by_kind.setdefault(d.question.data_source, []).append(d.f1)
    return {
        "questions": len(demos),
        "f1": sum(d.f1 for d in demos) / len(demos),
        "max_turns": max(len(d.turns) for d in demos),
        "top10": sum(r is not None for d in demos for r in d.search_ranks)
        / sum(len(d.search_ranks) for d in demos),
        "seconds": time.perf_counter() - started,
        "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", default="100000", help="entity count of the large world")
    parser.add_argument("--no-oracle", action="store_true", help="skip the full oracle run")
    args = parser.parse_args()

    rows = [build("default"), build(args.large)]
    print(f"{'world':>10} {'pages':>8} {'questions':>9} {'generate s':>10} {'index s':>8} "
          f"{'build s':>8} {'HTML MB':>8} {'peak RSS MB':>11} {'recall@10':>9} "
          f"{'query ms':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['size']:>10} {r['pages']:>8} {r['questions']:>9} {r['generate_s']:>10.2f} "
              f"{r['index_s']:>8.2f} {r['build_s']:>8.2f} {r['page_mb']:>8.1f} "
              f"{r['peak_rss_mb']:>11.0f} {r['recall10']:>9.4f} {r['query_ms']:>8.1f}")  # fmt: skip
    print("recall@10: the oracle's queries for the first 300 questions find the page they need")
    setup = (
        f"seed 0, {os.cpu_count()} cores, generate + BM25 index (imports excluded); "
        f"default world {rows[0]['pages']} pages; "
        f"{rows[1]['pages']}-page world built in {rows[1]['build_s']:.0f} s, "
        f"peak RSS {rows[1]['peak_rss_mb']:.0f} MB"
    )
    if not args.no_oracle:
        o = oracle_f1()
        print(f"\noracle on all {o['questions']} default-world questions (real HTTP tools): "
              f"F1 {o['f1']:.4f}, needed pages in top 10: {o['top10']:.4f}, "
              f"max turns {o['max_turns']}, {o['seconds']:.0f} s")  # fmt: skip
        for kind, f1 in o["by_kind"].items():
            print(f"  {kind:<24} F1 {f1:.4f}")
        setup += f"; oracle F1 {o['f1']:.4f} on {o['questions']} questions"
    ours = rows[0]["build_s"]
    print_summary(
        "world_build_default",
        round(ours, 3),
        TARGET_SECONDS,
        unit="s",
        higher_is_better=False,
        setup=setup,
    )


if __name__ == "__main__":
    main()
