"""The scripted oracle solves world questions through the real tools over loopback HTTP."""

import json

import pytest

from dr_jax.rollout.parse import parse_turn
from dr_jax.tools import ToolsConfig
from dr_jax.world import World
from dr_jax.world.__main__ import main
from dr_jax.world.oracle import demonstrate
from dr_jax.world.questions import KIND_MIX

MAX_TURNS = 10


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(seed=0)


def _per_kind(questions, n):
    return [q for kind in KIND_MIX for q in [q for q in questions if q.data_source == kind][:n]]


def _check_trace(demo) -> None:
    assert 2 <= len(demo.turns) <= MAX_TURNS
    *calls, (final, last_observation) = demo.turns
    assert last_observation is None
    for text, observation in calls:
        turn = parse_turn(text)
        assert turn.kind == "tool_call", turn.error
        assert turn.tool_call.name in ("web_search", "browse_webpage")
        assert observation and "error" not in json.loads(observation)
    answer = parse_turn(final)
    assert answer.kind == "answer" and answer.answer == demo.answer


def test_oracle_answers_every_held_out_question_within_ten_turns_over_http(world):
    demos = demonstrate(world, world.split("dev") + world.split("test"))
    assert {d.question.data_source for d in demos} == set(KIND_MIX)
    for demo in demos:
        _check_trace(demo)
        assert demo.f1 == 1.0, demo.question.question
        assert all(rank is not None and rank <= 10 for rank in demo.search_ranks)
        turns = len(demo.turns)
        assert turns <= 2 * demo.question.hops + 1


def test_trusting_snippets_answers_from_search_results_that_state_the_facts(world):
    demos = demonstrate(world, _per_kind(world.split("dev"), 4), trust_snippets=True)
    from_snippets = [d for d in demos if not any('"browse_webpage"' in t for t, _ in d.turns)]
    assert len(from_snippets) >= len(demos) // 2
    for demo in demos:
        _check_trace(demo)
        assert demo.f1 == 1.0, demo.question.question
    for demo in from_snippets:
        searched = " ".join(observation or "" for _, observation in demo.turns)
        assert all(read.value in searched for reads in demo.question.plan for read in reads)
        assert len(demo.turns) == len(demo.question.plan) + 1  # a search per round, the answer


def test_oracle_pages_down_when_the_fact_is_beyond_the_first_window(world):
    deep = next(
        q
        for q in world.split("train")
        if q.hops == 1
        and world.entities_by_path[q.evidence[0]].deferred == q.plan[0][0].fact
        and 8_000 < world.entities_by_path[q.evidence[0]].long < 20_000
    )
    small = ToolsConfig(window_chars=4_000, page_budget=1, extract_workers=0)
    (demo,) = demonstrate(world, [deep], tools_config=small)
    assert demo.f1 == 1.0
    browses = [t for t, _ in demo.turns if '"browse_webpage"' in t]
    assert len(browses) >= 3  # first window, then paging on
    (wide,) = demonstrate(world, [deep])
    assert len(wide.turns) == 3


def test_oracle_stays_within_the_turn_budget_when_pages_need_paging(world):
    deep = [
        q
        for q in world.split("train")
        if q.hops == 4
        and any(world.entities_by_path[r.path].deferred == r.fact for rnd in q.plan for r in rnd)
    ][:4]
    tiny_windows = ToolsConfig(window_chars=1_000, page_budget=1, extract_workers=0)
    demos = demonstrate(world, deep, tools_config=tiny_windows)
    assert all(len(d.turns) <= MAX_TURNS for d in demos)
    assert {d.answer for d in demos if d.f1 < 1.0} == {"unknown"}


def test_oracle_reads_deepresearcher_observations_too(world):
    questions = _per_kind(world.split("test"), 1)
    compat = ToolsConfig(
        observation_format="deepresearcher", browse_latest_search_only=True, extract_workers=0
    )
    demos = demonstrate(world, questions, tools_config=compat)
    assert [d.f1 for d in demos] == [1.0] * len(questions)
    assert demos[0].turns[0][1].startswith("[{'search_query': ")


def test_demos_cli_writes_one_jsonl_record_per_question(tmp_path):
    out = tmp_path / "demos.jsonl"
    assert main(["demos", "--size", "tiny", "--split", "dev", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [q.id for q in World.generate(0, "tiny").split("dev")]
    assert all(r["f1"] == 1.0 and r["turns"][-1]["observation"] is None for r in records)


def test_oracle_reports_failure_when_the_page_is_missing(world):
    (question,) = _per_kind(world.split("dev"), 1)[:1]
    broken = World(world.seed, world.entities, dict(world.pages), [question])
    del broken.pages[question.evidence[0]]
    (demo,) = demonstrate(broken, [question])
    assert demo.f1 == 0.0 and demo.answer == "unknown"
    assert demo.search_ranks == [None] * len(question.plan[0])
    assert parse_turn(demo.turns[-1][0]).kind == "answer"


@pytest.mark.slow
def test_oracle_solves_every_question_of_every_split(world):
    demos = demonstrate(world, world.questions)
    failed = [d.question.question for d in demos if d.f1 < 1.0]
    assert not failed
    assert max(len(d.turns) for d in demos) <= MAX_TURNS
