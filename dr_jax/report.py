"""A run's report as one self-contained HTML page: curves, the evaluation summary, trajectories.

    python -m dr_jax.report runs/default            # writes runs/default/report.html

Reads what a training run writes (`metrics.jsonl`, `sft/metrics.jsonl`, `samples/step_*.jsonl`)
or what an evaluation writes (`summary.json`, `samples.jsonl`). The page needs no server and no
network: the curves are inline SVG (matplotlib), the styles and the filter script are inline.
Training and evaluation write it when they finish.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from dr_jax import cli
from dr_jax.rollout.parse import parse_turn
from dr_jax.train.metrics import read_jsonl

REPORT = "report.html"

CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("train/reward", "val/reward")),
    ("dev F1 / EM", ("val/f1", "val/em")),
    ("format-error rate", ("train/format_error_rate", "val/format_error_rate")),
    ("tool calls per trajectory", ("train/tool_calls_mean", "val/tool_calls_mean")),
    ("response length (tokens)", ("train/response_tokens_mean", "val/response_tokens_mean")),
    ("entropy", ("loss/entropy",)),
    ("KL", ("loss/approx_kl", "loss/kl_loss")),
    ("infrastructure failures", ("train/infra_failures",)),
    ("step time (s)", ("time/step",)),
)
"""(title, metric keys): one plot each, over GRPO steps; a key a run never logged is left out."""

WARM_START_CURVES = (("warm-start NLL", ("sft/nll",)),)


@dataclass
class ReportConfig:
    """Write RUN_DIR/report.html from a training run's or an evaluation's files."""

    run_dir: tyro.conf.Positional[str]
    """A training run directory (metrics.jsonl, samples/) or an evaluation's (samples.jsonl)."""
    per_step: int = 8
    """Trajectories shown per step and split (an evaluation: per data source); the rest stay in
    their JSONL, linked."""
    out: str = ""
    """Where to write the page ("" = RUN_DIR/report.html)."""


# ------------------------------------------------------------------------------------- curves


def svg_plot(title: str, series: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """One small line plot as an inline <svg> element (text kept as text, no XML header)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(3.7, 2.4))
        for name, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def curves(records: Iterable[Mapping[str, Any]], specs: Sequence[tuple[str, Sequence[str]]]):
    """(title, svg) for each spec with at least one finite point."""
    records = list(records)
    out = []
    for title, keys in specs:
        series = {}
        for key in keys:
            points = [
                (r["step"], r[key])
                for r in records
                if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
            ]
            if points:
                series[key] = points
        if series:
            out.append((title, svg_plot(title, series)))
    return out


# ------------------------------------------------------------------------------- trajectories

CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)


def messages_of(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The record's conversation after the question: its `messages`, else the ChatML turns of
    its `trajectory` text (an evaluation of another system's outputs), else that text whole."""
    if record.get("messages"):
        return list(record["messages"])
    text = str(record.get("trajectory") or "")
    turns = CHATML.findall(text)
    if not turns:
        return [{"role": "assistant", "content": text}] if text else []
    first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), -1)
    out = []
    for i, (role, content) in enumerate(turns):
        if role == "system" or i == first_user:
            continue
        out.append({"role": "assistant" if role == "assistant" else "tool", "content": content})
    return out


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_turn(content: str) -> str:
    """An assistant turn: its thinking, then its tool call (pretty JSON) or answer, or the text
    as sampled with the parser's complaint when it is neither."""
    turn = parse_turn(content if "<think>" in content else "<think>" + content)
    parts = []
    if turn.think:
        parts.append(f'<div class="think">{_e(turn.think.strip())}</div>')
    if turn.kind == "answer":
        parts.append(f'<div class="answer">answer: <b>{_e(turn.answer)}</b></div>')
    elif turn.kind == "tool_call":
        call = {"name": turn.tool_call.name, "arguments": turn.tool_call.arguments}
        pretty = json.dumps(call, indent=2, ensure_ascii=False)
        parts.append(f'<pre class="call">{_e(pretty)}</pre>')
    else:
        parts.append(f'<div class="bad">format error: {_e(turn.error)}</div>')
        parts.append(f'<pre class="raw">{_e(content)}</pre>')
    return "".join(parts)


def render_observation(message: Mapping[str, str]) -> str:
    """A tool's observation, collapsed (pretty JSON when it is JSON)."""
    content = message.get("content", "")
    with contextlib.suppress(ValueError, TypeError):
        content = json.dumps(json.loads(content), indent=2, ensure_ascii=False)
    name = message.get("name") or "tool"
    return (
        f'<details class="obs"><summary>{_e(name)} result ({len(content):,} chars)</summary>'
        f"<pre>{_e(content)}</pre></details>"
    )


def render_trajectory(record: Mapping[str, Any], phase: str) -> str:
    """One trajectory card; its data-* attributes are what the filters read. `phase`: "step"
    (a GRPO step's), "untuned" (the validation before the warm start) or "eval"."""
    reward = record.get("reward", record.get("f1"))
    f1 = record.get("f1")
    when, source = labels(record, phase)
    split = record.get("split", "")
    turns = []
    for message in messages_of(record):
        if message.get("role") == "assistant":
            turns.append(f'<div class="turn">{render_turn(message.get("content", ""))}</div>')
        else:
            turns.append(render_observation(message))
    gold = " | ".join(str(g) for g in record.get("gold") or [])
    predicted = record.get("prediction") or "–"
    head = [
        f'<span class="step">{_e(when)}</span>' if when else "",
        f'<span class="tag">{_e(split)}</span>' if split else "",
        f'<span class="tag">{_e(source)}</span>',
        f'<span class="score">reward {_fmt(reward)} · F1 {_fmt(f1)}</span>',
        f'<span class="tag">{_e(record.get("finish_reason", ""))}</span>',
    ]
    return (
        f'<article class="traj" data-step="{_e(when)}" data-source="{_e(source)}"'
        f' data-reward="{_e(reward if reward is not None else "")}">'
        f"<header>{''.join(head)}</header>"
        f'<div class="q">{_e(record.get("question", ""))}</div>'
        f'<div class="gold">gold: {_e(gold)} · predicted: {_e(predicted)}</div>'
        f"{''.join(turns)}</article>"
    )


def labels(record: Mapping[str, Any], phase: str) -> tuple[str, str]:
    """(when, data source): the card's step label and source, as the filters offer them."""
    when = {"step": f"step {record.get('step')}", "eval": ""}.get(phase, phase)
    return when, str(record.get("data_source") or "unknown")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def sample_files(run_dir: Path) -> list[tuple[str, Path]]:
    """(phase, file) of every trajectory file of the run, newest first: the GRPO steps, then
    the untuned model's validation; or an evaluation's samples.jsonl."""
    files = [("step", p) for p in sorted((run_dir / "samples").glob("step_*.jsonl"), reverse=True)]
    files += [("untuned", p) for p in sorted((run_dir / "sft" / "samples").glob("*.jsonl"))]
    if (run_dir / "samples.jsonl").exists():
        files.append(("eval", run_dir / "samples.jsonl"))
    return files


def trajectory_cards(run_dir: Path, per_step: int) -> tuple[list[str], int, list[str], list[str]]:
    """The cards (at most per_step per step and split, or per data source of an evaluation, with
    a link to the rest), how many trajectories the files hold, and the steps and data sources
    the cards show (for the filters)."""
    cards, total, steps, sources = [], 0, {}, set()
    for phase, path in sample_files(run_dir):
        records = read_jsonl(path)
        total += len(records)
        shown: dict[str, int] = {}
        for record in records:
            group = str(record.get("data_source" if phase == "eval" else "split", ""))
            if shown.get(group, 0) < per_step:
                shown[group] = shown.get(group, 0) + 1
                cards.append(render_trajectory(record, phase))
                when, source = labels(record, phase)
                if when:  # an evaluation's cards have no step
                    steps[when] = None
                sources.add(source)
        left = len(records) - sum(shown.values())
        if left:
            rel = path.relative_to(run_dir).as_posix()
            cards.append(f'<p class="more">{left} more in <a href="{_e(rel)}">{_e(rel)}</a></p>')
    return cards, total, list(steps), sorted(sources)


# ------------------------------------------------------------------------------------- page


def eval_table(summary: Mapping[str, Any]) -> str:
    """The evaluation summary, one row per data source (scores in %)."""
    rows = summary.get("datasets", {})
    if not rows:
        return ""
    keys = ("n", "f1", "em", "judge", "unjudged", "turns", "tool_calls", "tokens")
    present = [k for k in keys if any(k in r for r in rows.values())]
    head = "".join(f"<th>{_e(k)}</th>" for k in present)
    body = []
    for source, row in rows.items():
        cells = "".join(f"<td>{_cell(k, row.get(k))}</td>" for k in present)
        body.append(f"<tr><th>{_e(source)}</th>{cells}</tr>")
    return f"<table><tr><th>dataset</th>{head}</tr>{''.join(body)}</table>"


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float) and key in ("f1", "em", "judge"):
        return f"{100 * value:.1f}"
    return _fmt(value) if isinstance(value, float) else _e("" if value is None else value)


def headline(grpo: Sequence[Mapping[str, Any]], sft: Sequence[Mapping[str, Any]]) -> str:
    """Dev F1 untuned -> after the warm start -> after the last GRPO step, as far as measured."""
    points = [("untuned", r["val/f1"]) for r in sft[:1] if "val/f1" in r]
    val = [r for r in grpo if isinstance(r.get("val/f1"), int | float)]
    if val and val[0]["step"] == 0:
        points.append(("before GRPO" if points else "step 0", val[0]["val/f1"]))
    if val and val[-1]["step"] > 0:
        points.append((f"step {val[-1]['step']}", val[-1]["val/f1"]))
    if not points:
        return ""
    chain = " → ".join(f"{value:.3f} ({label})" for label, value in points)
    return f'<p class="headline">dev F1: {_e(chain)}</p>'


def build_report(run_dir: str | Path, per_step: int = 8) -> str:
    """The page's HTML."""
    run_dir = Path(run_dir)
    grpo = read_jsonl(run_dir / "metrics.jsonl")
    sft = read_jsonl(run_dir / "sft" / "metrics.jsonl")
    plots = curves(grpo, CURVES) + curves(sft, WARM_START_CURVES)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    cards, total, steps, sources = trajectory_cards(run_dir, per_step)
    figures = "".join(f'<figure title="{_e(t)}">{svg}</figure>' for t, svg in plots)
    options = lambda values: "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    parts = [
        f"<h1>{_e(run_dir.resolve().name)}</h1>",
        f'<p class="meta">{_e(run_dir.resolve())} · written {time.strftime("%Y-%m-%d %H:%M")}'
        f" · {len(grpo)} metric records · {total} trajectories</p>",
        headline(grpo, sft),
    ]
    if figures:
        parts.append(f'<h2>Curves</h2><div id="curves">{figures}</div>')
    if summary:
        parts.append(f'<h2>Evaluation</h2><div id="eval">{eval_table(summary)}</div>')
    if cards:
        parts.append(
            "<h2>Trajectories</h2>"
            '<div id="filters"><select id="f-step"><option value="">every step</option>'
            f'{options(steps)}</select> <select id="f-source"><option value="">every source'
            f"</option>{options(sources)}</select> "
            '<select id="f-reward"><option value="">any reward</option>'
            '<option value="pos">reward &gt; 0</option><option value="zero">reward = 0</option>'
            '<option value="neg">format error (reward &lt; 0)</option></select> '
            '<input id="f-text" type="search" placeholder="search text"> '
            '<span id="f-count"></span></div>'
            f'<div id="trajectories">{"".join(cards)}</div>'
        )
    return PAGE.format(title=_e(run_dir.resolve().name), body="".join(parts))


def write_report(run_dir: str | Path, per_step: int = 8, out: str | Path = "") -> Path:
    """Write the page (atomically) and return its path."""
    path = Path(out) if out else Path(run_dir) / REPORT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(build_report(run_dir, per_step), encoding="utf-8")
    tmp.replace(path)
    return path


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{margin-bottom:.1em}.meta{color:#666;margin-top:0}.headline{font-size:16px}
#curves{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;border:1px solid #ddd;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
#filters{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd}
.traj{border:1px solid #ccc;border-radius:6px;margin:10px 0;padding:8px 12px}
.traj header span{margin-right:10px}.step{font-weight:600}.tag{color:#555;font-size:12px}
.score{font-family:monospace}.q{font-weight:600;margin:4px 0}.gold{color:#555;font-size:13px}
.turn{border-left:3px solid #4a7ebb;padding-left:8px;margin:6px 0}
.think{color:#555;font-style:italic;white-space:pre-wrap}.answer{color:#155724}
.bad{color:#a00}pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font-size:12px}
.call{background:#f4f7fb}.obs{margin:4px 0 4px 12px}.obs summary{cursor:pointer;color:#555}
.obs pre{background:#f7f7f4;max-height:400px;overflow:auto}.more{color:#666}
"""

SCRIPT = """
const cards = Array.from(document.querySelectorAll('.traj'));
const text = cards.map(c => c.textContent.toLowerCase());
const get = id => document.getElementById(id);
function apply() {
  const step = get('f-step').value, source = get('f-source').value;
  const reward = get('f-reward').value, q = get('f-text').value.trim().toLowerCase();
  let shown = 0;
  cards.forEach((c, i) => {
    const r = parseFloat(c.dataset.reward);
    const ok = (!step || c.dataset.step === step) && (!source || c.dataset.source === source)
      && (!reward || (reward === 'pos' ? r > 0 : reward === 'zero' ? r === 0 : r < 0))
      && (!q || text[i].includes(q));
    c.hidden = !ok; shown += ok;
  });
  get('f-count').textContent = shown + ' of ' + cards.length + ' shown';
}
if (get('filters')) {
  for (const id of ['f-step', 'f-source', 'f-reward', 'f-text'])
    get(id).addEventListener('input', apply);
  apply();
}
"""

PAGE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>{title} · dr_jax report</title><style>"
    + STYLE.replace("{", "{{").replace("}", "}}")
    + "</style></head><body>{body}<script>"
    + SCRIPT.replace("{", "{{").replace("}", "}}")
    + "</script></body></html>"
)


def main(argv: list[str] | None = None) -> Path:
    config = tyro.cli(ReportConfig, args=argv)
    run_dir = Path(config.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(
            f"error: {run_dir} is not a directory: give a run's --run-dir or an "
            "evaluation's --out-dir"
        )
    path = write_report(run_dir, config.per_step, config.out)
    print(path)
    return path


if __name__ == "__main__":
    cli.run(main)
