"""Where a training run reports: metrics.jsonl, TensorBoard event files, a progress bar, samples.

Every record is one JSON line `{"step": s, "time": unix_s, "<group>/<name>": value, ...}` and
the same scalars as TensorBoard tags. Resuming from step s rewrites history to the state at s:
JSONL lines and event-file points after s are dropped (`purge_step`), so a run killed between
two checkpoints and resumed reads as one continuous run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorboardX import SummaryWriter
from tqdm import tqdm

from dr_jax.progress import Progress


@dataclass
class MetricsConfig:
    """What a run writes besides checkpoints."""

    tensorboard: bool = True
    """Write TensorBoard event files to <run_dir>/tb."""
    progress_bar: bool = True
    """Show progress over the steps: a bar with an ETA on a terminal, a line every 30 s in a
    log."""
    samples_per_step: int = 16
    """Trajectories written to <run_dir>/samples/step_XXXXXX.jsonl each step, this many of the
    step's training rollouts and as many of its validation's (0 = none); `python -m
    dr_jax.report` shows them."""
    bar_keys: tuple[str, ...] = ("train/reward", "train/format_error_rate", "val/reward")
    """Metrics shown next to the progress bar."""


class MetricsWriter:
    """Appends step records to JSONL + TensorBoard and drives the progress bar."""

    def __init__(
        self,
        run_dir: str | Path,
        config: MetricsConfig,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        desc: str = "grpo",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        """False: every method does nothing (the processes other than 0 of a multi-host run)."""
        self._tb = self._bar = self._lines = None
        self._shown: dict[str, float] = {}
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.jsonl_path, after_step=start_step)
        for path in (self.run_dir / "samples").glob("step_*.jsonl"):
            if int(path.stem.removeprefix("step_")) > start_step:
                path.unlink()
        if config.tensorboard:
            self._tb = SummaryWriter(
                str(self.run_dir / "tb"), purge_step=start_step + 1, flush_secs=10
            )
        if config.progress_bar and sys.stderr.isatty():
            self._bar = tqdm(total=total_steps, initial=max(start_step, 0), desc=desc, unit="step")
        elif config.progress_bar:  # a log file: a plain line now and then, no carriage returns
            self._lines = Progress(total_steps - max(start_step, 0), desc)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one record; non-finite values are kept in JSON as null."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        for key in self.config.bar_keys:
            if key in metrics:
                self._shown[key.removeprefix("train/")] = float(metrics[key])
        if self._bar is not None and self._shown:
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in self._shown.items()}, refresh=True)

    def advance(self) -> None:
        """One step finished."""
        if self._bar is not None:
            self._bar.update(1)
        if self._lines is not None:
            self._lines.done()

    def dump_samples(self, step: int, samples: Sequence[Mapping[str, object]]) -> Path | None:
        """Write one step's trajectory records as JSON lines (atomically: a step redone after a
        resume replaces its file)."""
        if not samples or not self.enabled:
            return None
        out_dir = self.run_dir / "samples"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"step_{step:06d}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"step": step, **s}) + "\n" for s in samples))
        tmp.replace(path)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


PEAK_FLOPS = {  # dense bf16 peak per chip, from the vendors' spec sheets
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def peak_flops_per_device(device: object) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None when unknown (CPU: no MFU is reported)."""
    kind = str(getattr(device, "device_kind", ""))
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name) or name in kind:
            return flops
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl (a torn last line from a kill is ignored)."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_jsonl(path: Path, *, after_step: int) -> None:
    """Keep only records with step <= after_step (atomic rewrite)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= after_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def metrics_table(records: Iterable[Mapping[str, object]], keys: Sequence[str]) -> str:
    """A Markdown table, one row per step that has any of `keys` (records merged by step)."""
    by_step: dict[int, dict] = {}
    for r in records:
        by_step.setdefault(int(r["step"]), {}).update(r)
    rows = [(s, r) for s, r in sorted(by_step.items()) if any(k in r for k in keys)]
    lines = ["| step | " + " | ".join(keys) + " |", "|---:" * (len(keys) + 1) + "|"]
    for step, r in rows:
        cells = [_fmt(r.get(k)) for k in keys]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GRPO_TABLE = (
    "train/reward", "train/format_error_rate", "train/tool_calls_mean", "loss/entropy",
    "loss/grad_norm", "val/reward", "val/f1", "val/format_error_rate", "val/tool_calls_mean",
    "time/step",
)  # fmt: skip
SFT_TABLE = ("sft/nll", "val/reward", "val/format_error_rate", "time/sft")


def run_summary(run_dir: str | Path) -> str:
    """Markdown tables of a run: the warm start (if any), then reward and losses per GRPO step."""
    run_dir = Path(run_dir)
    parts = []
    sft = read_jsonl(run_dir / "sft" / "metrics.jsonl")
    if sft:
        parts.append("Warm start (SFT on oracle traces; step 0 = before it)\n\n")
        parts.append(metrics_table(sft, SFT_TABLE) + "\n\n")
    parts.append("GRPO (step 0 = validation before the first step)\n\n")
    parts.append(metrics_table(read_jsonl(run_dir / "metrics.jsonl"), GRPO_TABLE))
    return "".join(parts)


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value
