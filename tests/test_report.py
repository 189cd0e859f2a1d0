"""The run report: built from what training and evaluation write, rendered by a real headless
Chromium (no console errors, curves and whole trajectories shown, the filters work, a
screenshot that is not blank).

The run directory is written through the training loop's own writers: 100 GRPO steps of
metrics, 16 trajectories per step and 50 validation ones every 10 steps.
"""

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from browser import Browser
from PIL import Image, ImageStat

from dr_jax.data import QAExample
from dr_jax.report import main, messages_of, write_report
from dr_jax.rollout.trajectory import Trajectory
from dr_jax.train.grpo import sample_records
from dr_jax.train.metrics import MetricsConfig, MetricsWriter

STEPS, PER_STEP, SHOWN = 100, 16, 8
SOURCES = ("world_1hop", "world_2hop")


def example(step: int, group: int) -> QAExample:
    return QAExample(
        id=f"s{step}g{group}",
        question=f"In which country is Town{step}x{group}?",
        answers=("Heikagei",),
        data_source=SOURCES[group % 2],
    )


def trajectory(question: str, group: int, kind: int) -> tuple[Trajectory, float]:
    """Kinds: 0 searches and answers right, 1 answers wrong, 2 breaks the format."""
    t = Trajectory(question, group, 0, [1, 2, 3])
    search = (
        "<think>I need the country.</think>\n<tool_call>\n"
        '{"name": "web_search", "arguments": {"query": ["' + question + '"]}}\n</tool_call>'
    )
    results = [{"title": "Town", "url": "http://127.0.0.1:1/wiki/Town.html",
                "snippet": "Town lies in the country of Heikagei."}]  # fmt: skip
    t.messages = [
        {"role": "assistant", "content": search},
        {"role": "tool", "name": "web_search", "content": json.dumps(results)},
    ]
    if kind == 2:
        t.messages.append({"role": "assistant", "content": "<think>hmm <answer>Heik"})
        t.finish_reason = "format_error"
        return t, -1.0
    answer = "Heikagei" if kind == 0 else "Gobor"
    t.messages.append(
        {"role": "assistant", "content": f"<think>So.</think>\n<answer>{answer}</answer>"}
    )
    t.answer, t.finish_reason = answer, "answer"
    t.num_turns, t.num_tool_calls = 2, 1
    return t, 1.0 if kind == 0 else 0.0


def write_run(run_dir: Path) -> None:
    metrics = MetricsWriter(run_dir, MetricsConfig(tensorboard=False, progress_bar=False),
                            total_steps=STEPS)  # fmt: skip
    rng = np.random.default_rng(0)
    for step in range(1, STEPS + 1):
        examples = [example(step, g) for g in range(PER_STEP)]
        made = [trajectory(e.question, g, g % 3) for g, e in enumerate(examples)]
        rewards = np.array([r for _, r in made], np.float32)
        samples = sample_records([t for t, _ in made], rewards, examples, "train", PER_STEP)
        record = {
            "train/reward": float(rewards.mean()),
            "loss/entropy": rng.uniform(0.1, 1),
            "loss/approx_kl": rng.uniform(0, 0.01),
            "train/tool_calls_mean": 1.0,
            "train/response_tokens_mean": rng.uniform(100, 400),
            "time/step": 120.0,
        }
        if step % 10 == 0:
            dev = [example(-step, g) for g in range(50)]
            made = [trajectory(e.question, g, 0) for g, e in enumerate(dev)]
            rewards = np.ones(50, np.float32)
            samples += sample_records([t for t, _ in made], rewards, dev, "dev", 50)
            record.update({"val/reward": 1.0, "val/f1": 1.0})
        metrics.log(step, record)  # fmt: skip
        metrics.dump_samples(step, samples)
    metrics.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    write_run(path)
    write_report(path, per_step=SHOWN)
    return path


def test_the_page_renders_in_chromium_and_its_filters_work(run_dir, tmp_path):
    async def look():
        async with Browser() as browser:
            await browser.open(run_dir / "report.html")
            counts = await browser.evaluate(
                "({plots: document.querySelectorAll('#curves svg').length,"
                " cards: document.querySelectorAll('.traj').length,"
                " shown: document.getElementById('f-count').textContent})"
            )
            first = await browser.evaluate(
                "(() => { const c = document.querySelector('.traj');"
                " return {calls: Array.from(c.querySelectorAll('.call')).map(e => e.textContent),"
                " obs: c.querySelectorAll('details.obs').length,"
                " answer: c.querySelector('.answer').textContent,"
                " height: c.getBoundingClientRect().height}; })()"
            )

            async def visible(select: str, value: str) -> int:
                return await browser.evaluate(
                    f"(() => {{ for (const id of ['f-step','f-source','f-reward','f-text'])"
                    f" document.getElementById(id).value = '';"
                    f" const e = document.getElementById({select!r}); e.value = {value!r};"
                    f" e.dispatchEvent(new Event('input'));"
                    f" return document.querySelectorAll('.traj:not([hidden])').length; }})()"
                )

            filtered = {
                "step 7": await visible("f-step", "step 7"),
                "step 10": await visible("f-step", "step 10"),
                "2hop": await visible("f-source", "world_2hop"),
                "format errors": await visible("f-reward", "neg"),
                "positive": await visible("f-reward", "pos"),
                "text": await visible("f-text", "town42x5?"),
                "nothing": await visible("f-text", "no such text anywhere"),
            }
            await visible("f-text", "")
            png = await browser.screenshot()
            return counts, first, filtered, png, list(browser.errors)

    counts, first, filtered, png, errors = asyncio.run(look())
    assert errors == []
    # reward, dev F1, tool calls, response length, entropy, KL, step time
    assert counts["plots"] == 7
    train_cards, dev_cards = STEPS * SHOWN, STEPS // 10 * SHOWN
    assert counts["cards"] == train_cards + dev_cards
    assert counts["shown"] == f"{counts['cards']} of {counts['cards']} shown"
    assert (
        '"name": "web_search"' in first["calls"][0] and "Town100x0" in first["calls"][0]
    )  # newest
    assert first["obs"] == 1 and first["answer"] == "answer: Heikagei" and first["height"] > 100
    # each step shows 8 of 16 training rollouts (kinds 0,1,2,0,1,2,0,1) and 8 of 50 dev ones
    assert filtered["step 7"] == SHOWN and filtered["step 10"] == 2 * SHOWN
    assert filtered["2hop"] == STEPS * SHOWN // 2 + dev_cards // 2
    assert filtered["format errors"] == STEPS * 2
    assert filtered["positive"] == STEPS * 3 + dev_cards
    assert filtered["text"] == 1 and filtered["nothing"] == 0
    image = Image.open(io.BytesIO(png)).convert("RGB")
    (tmp_path / "report.png").write_bytes(png)
    assert image.size == (1280, 900)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50, "a blank or flat screenshot"
    assert max(ImageStat.Stat(image).stddev) > 20


def test_the_rest_of_each_step_is_linked_from_its_jsonl(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.count(">8 more in ") == STEPS - STEPS // 10
    assert page.count(">50 more in ") == STEPS // 10, "8 + 42 left of a step that validated"
    assert '<a href="samples/step_000042.jsonl">' in page
    assert (run_dir / "samples" / "step_000042.jsonl").exists()


def test_the_harness_sees_a_page_with_errors(tmp_path):
    """What makes `errors == []` above mean something."""
    page = tmp_path / "bad.html"
    page.write_text("<script>console.error('boom'); notDefined();</script>")

    async def look():
        async with Browser() as browser:
            await browser.open(page)
            await asyncio.sleep(0.2)
            return list(browser.errors)

    errors = asyncio.run(look())
    assert any("boom" in e for e in errors) and any("notDefined" in e for e in errors)


def test_text_from_the_run_is_shown_as_text_never_as_markup(tmp_path):
    evil = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"
    metrics = MetricsWriter(tmp_path, MetricsConfig(tensorboard=False, progress_bar=False),
                            total_steps=1)  # fmt: skip
    t, _ = trajectory(evil, 0, 0)
    metrics.dump_samples(1, sample_records([t], np.ones(1), [example(1, 0)], "train", 1))
    metrics.close()
    page = write_report(tmp_path)

    async def look():
        async with Browser() as browser:
            await browser.open(page)
            return await browser.evaluate(
                "({title: document.title, imgs: document.querySelectorAll('img').length,"
                " text: document.querySelector('.traj .call').textContent})"
            ), list(browser.errors)

    seen, errors = asyncio.run(look())
    assert seen["title"] != "owned" and seen["imgs"] == 0 and evil in seen["text"]
    assert errors == []


def test_a_chatml_trajectory_without_messages_is_split_into_turns():
    """An evaluation of DeepResearcher's own outputs keeps only the text of each conversation."""
    text = (
        "<|im_start|>system\nYou research.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n"
        "<|im_start|>assistant\n<think>a</think><tool_call>{}</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>[1]</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>b</think><answer>X</answer><|im_end|>"
    )
    assert messages_of({"trajectory": text}) == [
        {"role": "assistant", "content": "<think>a</think><tool_call>{}</tool_call>"},
        {"role": "tool", "content": "<tool_response>[1]</tool_response>"},
        {"role": "assistant", "content": "<think>b</think><answer>X</answer>"},
    ]
    assert messages_of({"trajectory": "plain"}) == [{"role": "assistant", "content": "plain"}]


def test_the_command_line_writes_the_page_and_refuses_a_missing_directory(tmp_path, capsys):
    config = MetricsConfig(tensorboard=False, progress_bar=False)
    sft = MetricsWriter(tmp_path / "sft", config, total_steps=1, start_step=-1)
    sft.log(0, {"val/f1": 0.01})
    sft.log(1, {"sft/nll": 2.5})
    sft.close()
    grpo = MetricsWriter(tmp_path, config, total_steps=2)
    grpo.log(0, {"val/f1": 0.4})
    grpo.log(1, {"train/reward": 0.5})
    grpo.log(2, {"train/reward": 0.7, "val/f1": 0.55})
    grpo.close()
    assert main([str(tmp_path)]) == tmp_path / "report.html"
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 3, "reward, dev F1 and the warm start's NLL"
    assert "dev F1: 0.010 (untuned) → 0.400 (before GRPO) → 0.550 (step 2)" in page
    with pytest.raises(SystemExit, match="not a directory"):
        main([str(tmp_path / "missing")])
