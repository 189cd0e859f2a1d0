"""How fast the run report opens with 100 GRPO steps, in a real headless Chromium.

The run is the one tests/test_report.py writes through the training loop's writers (100 steps,
16 trajectories per step, 50 validation ones every 10 steps; 8 shown per step and split). The
reference is the issue's target: the page opens (navigation to load event) in under 2 s.

    python benchmarks/run_report.py [--repeats 5]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import Browser
from report import print_summary, print_table
from test_report import STEPS, write_run

from dr_jax.report import write_report

TARGET_S = 2.0


async def open_times(page: Path, repeats: int) -> list[float]:
    """Navigation-to-load seconds, each in a fresh browser (nothing cached)."""
    times = []
    for _ in range(repeats):
        async with Browser() as browser:
            times.append(await browser.open(page))
            if browser.errors:
                raise RuntimeError(f"the page reported errors: {browser.errors}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        write_run(run_dir)
        started = time.perf_counter()
        page = write_report(run_dir)
        write_s = time.perf_counter() - started
        times = open_times(page, args.repeats)
        times = asyncio.run(times)
        size = page.stat().st_size
    median = statistics.median(times)
    print_table([
        ("steps", str(STEPS)),
        ("page size", f"{size / 1e6:.2f} MB"),
        ("write the page (python -m dr_jax.report)", f"{write_s:.2f} s"),
        (f"open in Chromium, median of {args.repeats}", f"{median:.2f} s"),
        ("target", f"< {TARGET_S:.0f} s"),
        ("ours / target", f"{median / TARGET_S:.2f}"),
    ])  # fmt: skip
    print_summary(
        "run_report_open", median, TARGET_S, unit="s", higher_is_better=False,
        setup=f"{STEPS} steps, headless Chromium, fresh browser per open", write_s=write_s,
        page_bytes=size,
    )  # fmt: skip


if __name__ == "__main__":
    main()
