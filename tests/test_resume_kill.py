"""`kill -9` in the middle of a run, then the same command: the run continues where its last
checkpoint left it — no question seen twice, none skipped, metrics continuing step by step — and
ends with the metrics of the same command run without interruption (timings aside)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dr_jax.data import DataIterator
from dr_jax.train.config import DataConfig
from dr_jax.train.metrics import read_jsonl
from dr_jax.train.run import load_questions
from dr_jax.world import World

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def command(run_dir: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "launch" / "train.py"),
        "--run-dir", str(run_dir),
        "--data.world-size", "tiny",
        "--sft.steps", "0",
        "--grpo.steps", str(STEPS),
        "--grpo.questions-per-step", "2",
        "--grpo.group-size", "2",
        "--grpo.micro-batch-size", "0",
        "--grpo.no-validate-at-start",
        "--grpo.validate-every", "0",
        "--grpo.val-questions", "2",
        "--sampler.max-new-tokens", "8",
        "--max-turns", "2",
        "--metrics.no-progress-bar",
    ]  # fmt: skip


@pytest.mark.slow  # three fresh processes, each compiling sampler and learner (~2-6 min each)
def test_kill_9_then_the_same_command_resumes_with_the_same_data_position(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    run = subprocess.Popen(
        command(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not any(r["step"] == 2 for r in read_jsonl(metrics)):
        assert run.poll() is None, run.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "step 2 never finished"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # mid-run: step 3 is under way, maybe a save too
    run.wait()
    killed_at = max(r["step"] for r in read_jsonl(metrics))

    done = subprocess.run(command(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    records = read_jsonl(metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), (
        f"killed after step {killed_at}: every step appears exactly once, in order"
    )
    times = [r["time"] for r in records]
    assert times == sorted(times)
    seen = [q for r in records for q in r["data/question_ids"]]
    train_examples, _ = load_questions(
        DataConfig(world_size="tiny", data_sources=("world_1hop",)), World.generate(0, "tiny")
    )
    expected = DataIterator(train_examples, 2, seed=0)
    assert seen == [e.id for _ in range(STEPS) for e in expected.next_batch()]
    assert len(set(seen)) == len(seen), "no question seen twice"

    # the same command never interrupted: the same run, metric for metric (timings aside)
    straight = tmp_path / "straight"
    done = subprocess.run(command(straight), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert comparable(read_jsonl(straight / "metrics.jsonl")) == comparable(records)


def comparable(records: list[dict]) -> list[dict]:
    """The records without what depends on the machine's speed (wall times, rates, latencies)."""
    timed = ("time", "perf/", "tools/latency_s/", "train/sampling_time_share",
             "train/tools_time_share", "val/sampling_time_share",
             "val/tools_time_share")  # fmt: skip
    return [{k: v for k, v in r.items() if not k.startswith(timed)} for r in records]
