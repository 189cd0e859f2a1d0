"""Scoring without a model: the final-turn scorer, summaries, and `launch/eval.py score`."""

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_judge import OpenAIStandIn

from dr_jax.data import composition, load_dataset
from dr_jax.eval import render_markdown, summarize
from dr_jax.reward import last_turn_answer, last_turn_scores

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"2wiki", "popqa", "tq", "hotpotqa", "nq", "musique", "Bamboogle"}


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch_eval", ROOT / "launch" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deepresearcher_message(question: str, final_turn: str, tool_turns: int = 1) -> str:
    """A trajectory rendered the way DeepResearcher's `message_str` holds it."""
    text = (
        "<|im_start|>system\nYou are a research assistant. Reply with <think> and <answer> "
        f"tags.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
    )
    for i in range(tool_turns):
        text += (
            f"<|im_start|>assistant\n<think> search {i} </think>\n<tool_call>\n"
            '{"name": "web_search", "arguments": {"query": ["q"]}}\n</tool_call><|im_end|>\n'
            "<|im_start|>user\n<tool_response>\n[{'search_query': 'q', 'web_page_info_list': "
            "[]}]\n</tool_response><|im_end|>\n"
        )
    return text + f"<|im_start|>assistant\n{final_turn}<|im_end|>"


@pytest.mark.parametrize(
    ("final_turn", "prediction", "f1", "em"),
    [
        (
            "<think> found it </think>\n<answer> The Rialto Bridge </answer>",
            "The Rialto Bridge",
            0.8,
            0,
        ),
        ("<think> ok </think>\n<ANSWER>rialto bridge</ANSWER>", "rialto bridge", 1.0, 1),
        ("<think> unclosed\n<answer>Rialto Bridge</answer>", None, 0.0, 0),
        ("<think> no answer tag </think>\nRialto Bridge", None, 0.0, 0),
    ],
)
def test_only_the_final_turn_is_scored_and_format_errors_score_zero(final_turn, prediction, f1, em):
    text = deepresearcher_message("Which bridge?", final_turn)
    assert last_turn_answer(text) == prediction
    assert last_turn_scores(text, ["Rialto Bridge"]) == pytest.approx((f1, em))


def test_an_answer_in_an_earlier_turn_does_not_count():
    early = "<think> a </think>\n<answer>Rialto Bridge</answer>"
    text = deepresearcher_message("Which bridge?", early, tool_turns=0)
    text += "\n<|im_start|>assistant\n<think> more </think>\n<tool_call>\n{}\n</tool_call>"
    assert last_turn_answer(text) is None


def test_summary_is_a_macro_average_in_the_paper_order():
    records = [
        {"data_source": s, "f1": f1, "em": em, "judge": j, "judge_source": "judge", "turns": 2,
         "tool_calls": 1, "tokens": 10}
        for s, f1, em, j in [("popqa", 1.0, 1.0, 1.0), ("nq", 0.5, 0.0, 1.0), ("nq", 0.0, 0.0, 0.0)]
    ]  # fmt: skip
    rows = summarize(records)
    assert list(rows) == ["nq", "popqa", "average"]
    assert rows["nq"]["f1"] == pytest.approx(0.25) and rows["nq"]["judge"] == pytest.approx(0.5)
    assert rows["average"]["f1"] == pytest.approx((0.25 + 1.0) / 2) and rows["average"]["n"] == 3
    table = render_markdown(rows, {"judge_model": "m"})
    assert "| nq | 2 | 25.0 | 0.0 | 50.0 | 2.00 | 1.00 | 10 |" in table
    assert "- judge_model: m" in table


def test_unmeasured_metrics_stay_empty_rather_than_zero():
    records = [{"data_source": "nq", "f1": 1.0, "em": 1.0, "judge": None, "judge_source": None,
                "turns": 1, "tool_calls": 0, "tokens": None}]  # fmt: skip
    row = summarize(records)["average"]
    assert row["judge"] is None and row["tokens"] is None
    assert "| **average** | 1 | 100.0 | 100.0 | — | 1.00 | 0.00 | — |" in render_markdown(
        summarize(records), {}
    )


def test_test_parquet_loads_whole_with_its_seven_sources(data_dir):
    examples = load_dataset(data_dir / "deepresearcher/test.parquet")
    counts = {s: sum(e.data_source == s for e in examples) for s in SOURCES}
    print(composition(examples))
    assert len(examples) == 3197 and len({e.id for e in examples}) == 3197
    assert counts == {**dict.fromkeys(SOURCES - {"Bamboogle"}, 512), "Bamboogle": 125}


@pytest.fixture
def small_test_set(data_dir, tmp_path) -> tuple[Path, list]:
    """The first 12 rows of test.parquet, as its own parquet file, and their examples."""
    table = pq.read_table(data_dir / "deepresearcher/test.parquet").slice(0, 12)
    path = tmp_path / "test12.parquet"
    pq.write_table(pa.Table.from_pylist(table.to_pylist()), path)
    return path, load_dataset(path)


def test_score_command_rescores_a_deepresearcher_rollout_file(small_test_set, tmp_path):
    path, examples = small_test_set
    rows = []
    for i, example in enumerate(examples):  # right, paraphrased, wrong, malformed, in turn
        answer = [example.answers[0], f"maybe {example.answers[0]}", "Nobody", None][i % 4]
        final = (
            "<think> x </think>"
            if answer is None
            else f"<think> x </think>\n<answer>{answer}</answer>"
        )
        rows.append({"idx": i, "question": example.question,
                     "message_str": deepresearcher_message(example.question, final)})  # fmt: skip
    results = tmp_path / "rollout_step_0.json"
    results.write_text(json.dumps(rows))

    with OpenAIStandIn() as judge:
        judge.rule = lambda prompt: "correct" if "maybe" in prompt else "incorrect"
        summary = load_launcher().main(
            ["score", str(results), "--dataset", str(path), "--out-dir", str(tmp_path / "out"),
             "--judge.url", judge.url, "--judge.model", "standin-judge"]
        )  # fmt: skip
    samples = [
        json.loads(line) for line in (tmp_path / "out/samples.jsonl").read_text().splitlines()
    ]
    assert [s["id"] for s in samples] == [e.id for e in examples]
    assert [s["em"] for s in samples] == [1.0, 0.0, 0.0, 0.0] * 3
    assert [s["judge"] for s in samples] == [1.0, 1.0, 0.0, 0.0] * 3
    assert [s["judge_source"] for s in samples[:4]] == [
        "exact_match",
        "judge",
        "judge",
        "no_answer",
    ]
    assert all(s["turns"] == 2 and s["tool_calls"] == 1 for s in samples)
    assert summary["meta"]["judge_model"] == "standin-judge"
    assert summary["datasets"]["average"]["judge"] == pytest.approx(
        sum(summary["datasets"][s]["judge"] for s in summary["datasets"] if s != "average")
        / (len(summary["datasets"]) - 1)
    )
    assert (tmp_path / "out/summary.md").read_text().count("|") > 20


def test_score_refuses_rows_out_of_dataset_order(small_test_set, tmp_path):
    path, examples = small_test_set
    rows = [{"question": e.question, "message_str": "<answer>x</answer>"} for e in examples]
    rows[3], rows[4] = rows[4], rows[3]
    results = tmp_path / "shuffled.json"
    results.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"row 3 .* must follow the dataset.s order"):
        load_launcher().main(["score", str(results), "--dataset", str(path)])
    with pytest.raises(ValueError, match=r"11 rows but .* 12 questions"):
        results.write_text(json.dumps(rows[:11]))
        load_launcher().main(["score", str(results), "--dataset", str(path)])


def test_the_papers_numbers_stand_beside_ours_on_its_benchmarks():
    records = [{"data_source": s, "f1": 0.5, "em": 0.0, "judge": None, "judge_source": None,
                "turns": 1, "tool_calls": 0, "tokens": 5} for s in SOURCES]  # fmt: skip
    table = render_markdown(summarize(records), {})
    assert "| Paper F1 | Paper judge |" in table
    assert "| hotpotqa | 1 | 50.0 | 0.0 | — | 1.00 | 0.00 | 5 | 52.8 | 64.3 |" in table
    assert "| **average** | 7 | 50.0 | 0.0 | — | 1.00 | 0.00 | 5 | 53.9 | 61.8 |" in table
    world_only = [{**records[0], "data_source": "world_1hop"}]
    assert "Paper" not in render_markdown(summarize(world_only), {})
