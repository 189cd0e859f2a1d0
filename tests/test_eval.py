"""End-to-end evaluation on the offline world: the pipeline scores what it should.

An oracle that replays known-good turns must score F1 ≈ 1 through the very agent, tools and
scorer a policy goes through; a tiny random policy must score ≈ 0. Runs resume where they stop.
"""

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_eval_score import load_launcher
from test_judge import OpenAIStandIn

from dr_jax.config import PolicyConfig, SamplerConfig
from dr_jax.eval import SAMPLES, EvalConfig, ScoreConfig, evaluate, score_results
from dr_jax.judge import JudgeConfig
from dr_jax.rollout import Sampler
from dr_jax.rollout.prompts import PromptConfig
from dr_jax.runtime import build_policy, build_sampler
from dr_jax.tools import ToolsConfig
from dr_jax.tools.search import build_index
from dr_jax.world import World

TOOLS = ToolsConfig(extract_workers=0)  # extraction in a thread: no process pool per test


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(seed=0, size="tiny")


def samples(out_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / SAMPLES).read_text().splitlines()]


def oracle_config(out_dir: Path, **overrides) -> EvalConfig:
    return EvalConfig(out_dir=str(out_dir), oracle=True, tools=TOOLS, **overrides)


def test_oracle_replayed_through_the_pipeline_scores_f1_one(world, tmp_path):
    with OpenAIStandIn() as judge:
        config = oracle_config(
            tmp_path, limit=12, judge=JudgeConfig(url=judge.url, model="standin-judge")
        )
        summary = asyncio.run(evaluate(config, world))
    rows = summary["datasets"]
    assert set(rows) == {"world_1hop", "world_2hop_bridge", "world_3hop_bridge", "average"}
    assert rows["average"]["f1"] > 0.95 and rows["average"]["em"] > 0.95
    assert rows["average"]["judge"] > 0.95
    # deeper questions need more searching and reading
    assert rows["world_1hop"]["tool_calls"] < rows["world_3hop_bridge"]["tool_calls"]
    records = samples(tmp_path)
    questions = {q.id: q for q in world.split("test")}
    assert [r["id"] for r in records] == [q.id for q in world.split("test")[:12]]
    for r in records:
        assert r["gold"] == questions[r["id"]].answers and r["finish_reason"] == "answer"
        assert r["trajectory"].startswith("<|im_start|>system")
        assert r["trajectory"].count("<tool_response>") == r["tool_calls"] > 0
        assert r["tokens"] < r["context_tokens"]
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["assistant", "tool"] * r["tool_calls"] + ["assistant"]
    assert summary["meta"]["judge_model"] == "standin-judge"
    assert (tmp_path / "summary.md").read_text().count("world_") == 3
    page = (tmp_path / "report.html").read_text()  # the report, written beside the summary
    assert page.count('class="traj"') == 12 and '<div id="eval"><table>' in page
    assert page.count('<details class="obs">') == sum(r["tool_calls"] for r in records)


def test_observations_are_cut_at_the_configured_length(world, tmp_path):
    asyncio.run(evaluate(oracle_config(tmp_path, limit=3, max_observation_chars=200), world))
    observations = [m["content"] for r in samples(tmp_path) for m in r["messages"]
                    if m["role"] == "tool"]  # fmt: skip
    assert observations and all("\n[cut: " in text for text in observations)
    assert all(len(text.split("\n[cut: ")[0]) == 200 for text in observations)
    with pytest.raises(ValueError, match="--max-observation-chars must be >= 1"):
        oracle_config(tmp_path, max_observation_chars=0)


def test_our_samples_rescore_identically_with_the_score_command(world, tmp_path):
    """samples.jsonl is itself a rollout file: one scorer for our runs and DeepResearcher's."""
    asyncio.run(evaluate(oracle_config(tmp_path / "run", limit=4), world))
    dataset = tmp_path / "questions.jsonl"
    rows = [
        {"id": q.id, "question": q.question, "answers": q.answers, "data_source": q.data_source}
        for q in world.split("test")[:4]
    ]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = ScoreConfig(
        results=str(tmp_path / "run" / SAMPLES), dataset=str(dataset), text_field="trajectory"
    )
    asyncio.run(score_results(config))
    rescored = samples(f"{config.results}.scored")
    fields = ("id", "prediction", "f1", "em", "turns", "tool_calls")
    assert [[r[f] for f in fields] for r in rescored] == [
        [r[f] for f in fields] for r in samples(tmp_path / "run")
    ]


def test_a_stopped_run_resumes_without_redoing_finished_questions(world, tmp_path):
    asyncio.run(evaluate(oracle_config(tmp_path, limit=3), world))
    first = (tmp_path / SAMPLES).read_text()
    with (tmp_path / SAMPLES).open("a") as f:
        f.write('{"id": "world0_1hop_3", "f1": 0.')  # killed mid-write
    summary = asyncio.run(evaluate(oracle_config(tmp_path, limit=5, concurrency=2), world))
    text = (tmp_path / SAMPLES).read_text()
    assert text.startswith(first) and len(text.splitlines()) == 5
    assert len({r["id"] for r in samples(tmp_path)}) == 5
    assert summary["datasets"]["average"]["n"] == 5


def test_resuming_with_other_settings_is_refused(world, tmp_path):
    asyncio.run(evaluate(oracle_config(tmp_path, limit=1), world))
    with pytest.raises(ValueError, match=r"different settings.*max_turns"):
        asyncio.run(evaluate(oracle_config(tmp_path, limit=1, max_turns=3), world))


def test_a_prompt_file_replaces_the_system_prompt(world, data_dir, tmp_path):
    prompts = json.loads((data_dir / "deepresearcher/prompts.json").read_text())
    system = tmp_path / "system.txt"
    system.write_text(prompts["system_prompt_online_search"])
    config = oracle_config(
        tmp_path / "run",
        limit=2,
        prompt=PromptConfig(system_file=str(system)),
        today="2025-04-01",
    )
    summary = asyncio.run(evaluate(config, world))
    assert summary["meta"]["prompt"] == str(system)
    for record in samples(tmp_path / "run"):
        assert record["trajectory"].startswith(
            "<|im_start|>system\n## Background information \n* Today is 2025-04-01\n"
        )
        assert record["f1"] == 1.0


def test_unknown_data_sources_name_the_ones_present(world, tmp_path):
    with pytest.raises(ValueError, match=r"no data_source \[.nq.\]; present: \[.world_1hop"):
        asyncio.run(evaluate(oracle_config(tmp_path, datasets=("nq",)), world))


# Sampled at T = 1 as DeepResearcher evaluated (one compiled decoding path for all runs here).
TINY_SAMPLER = SamplerConfig(temperature=1.0, max_new_tokens=12, max_seq_len=1024, max_batch_size=8)


@pytest.fixture(scope="module")
def tiny_sampler(qwen_tokenizer) -> Sampler:
    """The embedded random policy's JaxSampler, compiled once for all runs of this module."""
    policy = build_policy(PolicyConfig())
    return build_sampler(TINY_SAMPLER, policy, qwen_tokenizer)


def tiny_policy_config(out_dir: Path, **overrides) -> EvalConfig:
    """The embedded random policy with short turns, so a CPU run takes seconds."""
    return EvalConfig(
        out_dir=str(out_dir), sampler=TINY_SAMPLER, tools=TOOLS, max_turns=2, **overrides
    )


def test_a_tiny_random_policy_scores_honestly_near_zero(world, tiny_sampler, tmp_path):
    summary = asyncio.run(evaluate(tiny_policy_config(tmp_path, limit=8), world, tiny_sampler))
    average = summary["datasets"]["average"]
    assert average["n"] == 8 and average["f1"] == 0.0 and average["em"] == 0.0
    assert summary["meta"]["decoding"] == "sampled" and summary["meta"]["sampler"] == "jax"
    for r in samples(tmp_path):
        assert r["prediction"] is None and r["tokens"] > 0 and r["turns"] >= 1
        assert r["finish_reason"] in ("length", "format_error", "context_budget")


@pytest.fixture
def local_index(tmp_path) -> Path:
    """A BM25 index over a three-page corpus (the local backend's start-up loads it)."""
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        {"id": "1", "title": "Rialto Bridge", "text": "The oldest bridge across the Grand Canal."},
        {"id": "2", "title": "Popocatépetl", "text": "An active stratovolcano in Mexico."},
        {"id": "3", "title": "Millicent", "text": "Duchess of Sutherland, born 1867."},
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    build_index(corpus, tmp_path / "index")
    return tmp_path / "index"


@pytest.mark.parametrize("backend", ["world", pytest.param("local", marks=pytest.mark.slow)])
def test_limit_20_on_the_deepresearcher_test_set_runs(
    backend, data_dir, local_index, tiny_sampler, tmp_path
):
    """Neither backend holds these answers: the point is that the real benchmark runs."""
    tools = replace(TOOLS, search_backend=backend, local_index=str(local_index))
    config = tiny_policy_config(
        tmp_path / "run", dataset=str(data_dir / "deepresearcher/test.parquet"), limit=20
    )
    config = replace(config, seed=3, tools=tools)
    summary = asyncio.run(evaluate(config, sampler=tiny_sampler))
    assert summary["datasets"]["average"]["n"] == 20
    assert {r["data_source"] for r in samples(tmp_path / "run")} >= {"nq", "tq", "2wiki", "popqa"}
    assert summary["meta"]["decoding"] == "sampled" and summary["meta"]["temperature"] == 1.0
    assert summary["meta"]["search_backend"] == backend


def test_the_launcher_runs_an_evaluation_from_flags(tmp_path, capsys):
    argv = ["run", "--oracle", "--limit", "2", "--world-size", "tiny", "--out-dir", str(tmp_path),
            "--tools.extract-workers", "0", "--datasets", "world_1hop"]  # fmt: skip
    summary = load_launcher().main(argv)
    assert summary["datasets"]["world_1hop"]["n"] == 2
    assert summary["meta"]["dataset"] == "world(seed=0, size=tiny)"
    assert "| world_1hop | 2 | 100.0 | 100.0 |" in capsys.readouterr().out


def test_a_failed_start_leaves_no_run_behind_and_each_evaluation_has_its_own_directory(
    world, tmp_path
):
    from dr_jax.config import PolicyConfig
    from dr_jax.eval.run import default_out_dir

    typo = EvalConfig(out_dir=str(tmp_path / "eval"), limit=1, tools=TOOLS,
                      policy=PolicyConfig(path=str(tmp_path / "no-such-model")))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        asyncio.run(evaluate(typo, world))
    assert not (tmp_path / "eval" / "run.json").exists()
    asyncio.run(evaluate(oracle_config(tmp_path / "eval", limit=1), world))  # the fixed command
    named = default_out_dir(EvalConfig(dataset="tests/data/deepresearcher/test.parquet"))
    assert named.parent == Path("runs/eval") and named.name.startswith("test-test-tiny-20")
