"""Tool executor throughput and extraction overhead, measured side by side.

1. Concurrency: 1,000 tool calls (half web_search, half browse_webpage, all distinct so nothing is
   cached or de-duplicated) against a loopback SearXNG-and-pages server, in another process,
   that answers every request after 100 ms; 64 trajectories, each making its next call when its
   last one has returned (64 calls in flight). The ideal is the fastest
   schedule: whole waves of 64 calls, each taking 100 ms (16 waves for 1,000 calls; the
   fluid bound of 64 calls per 100 ms, 2.4% lower, is printed beside it, since no call can be
   split); efficiency = ideal time / measured time (target >= 0.9), the median of
   `--repeats` runs (each with its own URLs and a fresh executor), since other jobs on a
   shared machine can take the CPU away from any one run. Runs with `fast_extraction=True`
   alternate with them, to show what that option buys.
   It also reports where the CPU goes: this process (the executor), the extraction workers and
   the server, whose sum on a 2-core machine bounds how close to the ideal a run can come.
2. Extraction: pages per CPU-second of our extraction (trafilatura + title + windows) against
   calling trafilatura directly on the same real pages, interleaved page by page, best of
   several rounds (target: our time <= 1.2x theirs), and of ours with `fast_extraction`; and
   wall-clock pages/s through the executor's 2 worker processes.

    python benchmarks/tools.py [--calls 1000] [--concurrency 64] [--latency 0.1] [--repeats 3]
"""

import argparse
import asyncio
import contextlib
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import httpx
import trafilatura
from report import print_summary, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loopback import LoopbackServer, Reply, Request

from dr_jax.runtime import settled_heap
from dr_jax.tools import ToolExecutor, ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.tools.extract import extract_document, split_windows
from dr_jax.tools.fetch import Fetched
from dr_jax.tools.workers import Extractor

PAGES_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "pages"


def _children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each child process of this one; Linux /proc, else {}."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cpu = {}
    for task in Path("/proc/self/task").glob("*"):
        for pid in (task / "children").read_text().split() if (task / "children").exists() else ():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def _article(n: int) -> bytes:
    paragraphs = "".join(
        f"<p>Entity {n} fact {i}: founded in {1800 + n % 200}, population {n * 37 + i}.</p>"
        for i in range(8)
    )
    return (
        f"<html><head><title>Entity {n}</title></head><body><nav>Home | Random</nav>"
        f"<article><h1>Entity {n}</h1>{paragraphs}</article></body></html>"
    ).encode()


def _serve(latency: float, pipe) -> None:
    """Child process: a SearXNG-shaped search endpoint and pages, each reply after `latency`.

    It stands in for the remote web, so it runs in its own session (its own scheduling group
    on Linux) instead of sharing the measured process's CPU share on a busy machine.
    """
    os.setsid()
    article = functools.lru_cache(maxsize=None)(_article)

    async def handle(request: Request) -> Reply:
        if request.path == "/search":
            q = request.query["q"]
            results = [
                {"title": f"{q} {i}", "url": f"{server.url}/wiki/{q}-{i}.html", "content": q}
                for i in range(10)
            ]
            body = json.dumps({"query": q, "number_of_results": 10, "results": results})
            return Reply(body=body.encode(), content_type="application/json", delay=latency)
        return Reply(body=article(len(request.path)), delay=latency)

    server = LoopbackServer(handle)
    with server:
        pipe.send(server.url)
        pipe.recv()  # until the parent is done


async def _plain_httpx_run(url: str, calls: int, concurrency: int) -> float:
    """The same requests from one plain httpx.AsyncClient (the obvious way, no executor)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def one(i: int) -> None:
            if i % 2 == 0:
                query = {"q": f"q{i}", "format": "json"}
                (await client.get(f"{url}/search", params=query)).json()
            else:
                (await client.get(f"{url}/wiki/page-{i}.html")).raise_for_status()

        started = time.perf_counter()
        await _in_trajectories(concurrency, [functools.partial(one, i) for i in range(calls)])
        return time.perf_counter() - started


async def _in_trajectories(concurrency: int, work: list) -> list:
    """Run the calls in `work` (coroutine functions) as `concurrency` trajectories do: each
    makes the next call in the list when its last one has returned; the results in order."""
    results = [None] * len(work)
    queue = iter(enumerate(work))

    async def trajectory() -> None:
        for i, call in queue:
            results[i] = await call()

    await asyncio.gather(*(trajectory() for _ in range(concurrency)))
    return results


async def _concurrency_run(
    url: str, calls: int, concurrency: int, tag: str, extract_workers: int = 2, fast: bool = False
) -> tuple[float, float, dict[int, float], dict]:
    """Seconds, executor CPU seconds, CPU seconds of each child process (the workers and the
    server) and metrics of `calls` distinct tool calls (`tag` keeps the URLs of two runs
    distinct, so the second is not served from memory)."""
    config = ToolsConfig(
        extract_workers=extract_workers,
        fast_extraction=fast,
        search_backend="world",
        search_url=url,
        allow_hosts=(url.split("//")[1],),
        concurrency=concurrency,
        per_host=concurrency,
        window_chars=2000,
        page_budget=1,
    )
    tool_calls = [
        ToolCall("web_search", {"query": [f"q{tag}{i}"]})
        if i % 2 == 0
        else ToolCall("browse_webpage", {"url_list": [f"{url}/wiki/page{tag}-{i}.html"]})
        for i in range(calls)
    ]
    async with ToolExecutor(config) as tools:
        work = [
            functools.partial(tools.execute, call, ToolSession(question="benchmark"))
            for call in tool_calls
        ]
        with settled_heap():  # as the launchers run, once assembled
            children = _children_cpu()
            started, cpu = time.perf_counter(), time.process_time()
            texts = await _in_trajectories(concurrency, work)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        children = {pid: t - children.get(pid, 0.0) for pid, t in _children_cpu().items()}
        failures = [t for t in texts if '"error"' in t]
        assert not failures, failures[:3]
        return seconds, cpu, children, tools.metrics()


def _pages() -> list[bytes]:
    """The 12 real pages of the test fixtures (trafilatura's real-world set)."""
    return [p.read_bytes() for p in sorted(PAGES_DIR.glob("*.html"))]


async def _extraction_in_workers(rounds: int, workers: int) -> float:
    """Best-of-`rounds` seconds per pass over the pages through the executor's worker pool."""
    fetched = [Fetched(f"http://x.org/{i}", "text/html", None, b) for i, b in enumerate(_pages())]
    extractor = Extractor(workers)
    await extractor.start()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        await asyncio.gather(*(extractor.extract(f) for f in fetched))
        best = min(best, time.perf_counter() - started)
    await extractor.close()
    return best


def _extraction(rounds: int) -> tuple[float, float, float, int]:
    """CPU seconds for one pass over the real pages: (ours, ours with fast_extraction,
    trafilatura direct, pages).

    Page by page, the three alternate and each keeps its best of `rounds`; CPU time rather
    than wall time, so other jobs on a shared machine do not decide the comparison.
    """
    pages = _pages()
    fetched = [Fetched(f"http://x.org/{i}", "text/html", None, b) for i, b in enumerate(pages)]
    ours, fast, reference = ([float("inf")] * len(pages) for _ in range(3))
    for _ in range(rounds):
        for i, (page, fetch) in enumerate(zip(pages, fetched, strict=True)):
            started = time.process_time()
            trafilatura.extract(
                page, output_format="markdown", include_comments=False, include_tables=True
            )
            reference[i] = min(reference[i], time.process_time() - started)
            for best, skim in ((ours, False), (fast, True)):
                started = time.process_time()
                split_windows(extract_document(fetch, "markdown", fast=skim).text, 40_960)
                best[i] = min(best[i], time.process_time() - started)
    return sum(ours), sum(fast), sum(reference), len(pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extraction-rounds", type=int, default=5)
    args = parser.parse_args()

    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(args.latency, child), daemon=True
    )
    server.start()
    url = parent.recv()
    try:
        load = os.getloadavg()[0]
        plain = asyncio.run(_plain_httpx_run(url, args.calls, args.concurrency))
        runs, fast_runs = [], []
        for i in range(args.repeats):
            for done, fast in ((runs, False), (fast_runs, True)):
                run = _concurrency_run(url, args.calls, args.concurrency, f"r{i}{fast}", fast=fast)
                done.append(asyncio.run(run))
        runs.sort(key=lambda run: run[0])
        measured, cpu, children, metrics = runs[len(runs) // 2]
        fast_measured = sorted(run[0] for run in fast_runs)[len(fast_runs) // 2]
        in_thread, _, _, _ = asyncio.run(
            _concurrency_run(url, args.calls, args.concurrency, "t", extract_workers=0)
        )
    finally:
        parent.send("stop")
        server.join(timeout=10)
    ideal = math.ceil(args.calls / args.concurrency) * args.latency  # whole waves
    fluid = args.calls * args.latency / args.concurrency
    ours_ex, fast_ex, ref_ex, n_pages = _extraction(args.extraction_rounds)
    pooled = asyncio.run(_extraction_in_workers(args.extraction_rounds, workers=2))

    latency = metrics["latency_s"]
    server_cpu = children.pop(server.pid, float("nan"))
    cpu_per_call = {  # ms of CPU per tool call, by process (nan where /proc is missing)
        "executor": round(cpu / args.calls * 1e3, 3),
        "extraction_workers": round(sum(children.values() or [float("nan")]) / args.calls * 1e3, 3),
        "server": round(server_cpu / args.calls * 1e3, 3),
    }
    cores = sum(cpu_per_call.values()) * args.calls / 1e3 / measured
    rows = [
        ("tool calls", f"{args.calls} ({args.concurrency} in flight, {args.latency * 1e3:g} ms)"),
        ("ideal time", f"{ideal:.3f} s ({args.calls / ideal:.0f} calls/s)"),
        ("measured time, median run", f"{measured:.3f} s ({args.calls / measured:.0f} calls/s)"),
        ("efficiency (ideal/measured)", f"{ideal / measured:.3f}   (target >= 0.9)"),
        ("efficiency of each run", ", ".join(f"{ideal / run[0]:.3f}" for run in runs)),
        ("same against the fluid bound", f"{fluid / measured:.3f}   ({fluid:.3f} s)"),
        (
            "same, fast_extraction, median run",
            f"{fast_measured:.3f} s (eff. {ideal / fast_measured:.3f})",
        ),
        ("same, extraction in a thread", f"{in_thread:.3f} s (eff. {ideal / in_thread:.3f})"),
        ("one plain httpx client, same requests", f"{plain:.3f} s (eff. {ideal / plain:.3f})"),
        ("executor CPU per call", f"{cpu / args.calls * 1e3:.2f} ms ({cpu / measured:.0%} core)"),
        ("extraction workers CPU per call", f"{cpu_per_call['extraction_workers']:.2f} ms"),
        ("server CPU per call", f"{cpu_per_call['server']:.2f} ms"),
        ("all three, while measured", f"{cores:.2f} cores busy of {os.cpu_count()}"),
        ("load average before", f"{load:.1f} on {os.cpu_count()} cores"),
        ("search latency p50 / p99", "{p50:.3f} / {p99:.3f} s".format(**latency["web_search"])),
        ("browse latency p50 / p99", "{p50:.3f} / {p99:.3f} s".format(**latency["browse_webpage"])),
        ("extraction, ours", f"{n_pages / ours_ex:.1f} pages per CPU-second"),
        ("extraction, trafilatura direct", f"{n_pages / ref_ex:.1f} pages per CPU-second"),
        ("extraction overhead (ours/direct time)", f"{ours_ex / ref_ex:.3f}x   (target <= 1.2x)"),
        (
            "extraction, ours with fast_extraction",
            f"{n_pages / fast_ex:.1f} pages per CPU-second ({fast_ex / ours_ex:.2f}x the CPU)",
        ),
        ("extraction, ours in 2 worker processes", f"{n_pages / pooled:.1f} pages/s (wall)"),
    ]
    print_table(rows)
    print_summary(
        "tools_concurrency",
        round(args.calls / measured, 2),
        round(args.calls / ideal, 2),
        unit="tool calls/s (reference: ideal at the injected latency)",
        higher_is_better=True,
        setup=(
            f"median of {args.repeats} runs of {args.calls} calls (50% web_search, 50% "
            "browse_webpage), concurrency "
            f"{args.concurrency}, {args.latency * 1e3:g} ms loopback latency, server in "
            f"another process, load average {load:.1f} on {os.cpu_count()} cores, plain "
            f"httpx efficiency {ideal / plain:.3f}; extraction {n_pages / ours_ex:.1f} vs "
            f"trafilatura {n_pages / ref_ex:.1f} pages per "
            f"CPU-second (overhead {ours_ex / ref_ex:.3f}x)"
        ),
        cpu_ms_per_call=cpu_per_call,
        extraction={
            "ours": round(n_pages / ours_ex, 2),
            "reference": round(n_pages / ref_ex, 2),
            "ratio": round(ref_ex / ours_ex, 4),
            "unit": "pages per CPU-second",
            "higher_is_better": True,
        },
        fast_extraction={
            "efficiency": round(ideal / fast_measured, 3),
            "pages_per_cpu_second": round(n_pages / fast_ex, 2),
        },
    )


if __name__ == "__main__":
    main()
