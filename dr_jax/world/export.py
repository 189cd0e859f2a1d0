"""Write a World to disk: its pages as HTML files and its questions as parquet + JSONL.

The parquet files use the DeepResearcher schema (data_source, prompt, ability, reward_model,
extra_info), so any reader of DeepResearcher's dev/test files reads these too.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dr_jax.reward import ANSWER_SPLIT
from dr_jax.world.questions import Question
from dr_jax.world.world import World

ABILITY = "search & question answering"
SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.string()), ("split", pa.string())])),
    ]
)


def deepresearcher_row(q: Question) -> dict:
    return {
        "data_source": q.data_source,
        "prompt": [{"content": q.question, "role": "user"}],
        "ability": ABILITY,
        "reward_model": {"ground_truth": ANSWER_SPLIT.join(q.answers), "style": "unknown"},
        "extra_info": {"index": q.id, "split": q.split},
    }


def jsonl_row(q: Question) -> dict:
    return {
        "id": q.id,
        "question": q.question,
        "answers": q.answers,
        "data_source": q.data_source,
        "split": q.split,
        "hops": q.hops,
        "evidence": q.evidence,
    }


def export_world(world: World, out: str | Path) -> Path:
    """out/pages/<slug>.html, out/{train,dev,test}.parquet and out/{train,dev,test}.jsonl."""
    out = Path(out)
    pages = out / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    for path, page in world.pages.items():
        (pages / Path(path).name).write_text(page, encoding="utf-8")
    for split in ("train", "dev", "test"):
        questions = world.split(split)
        table = pa.Table.from_pylist([deepresearcher_row(q) for q in questions], schema=SCHEMA)
        pq.write_table(table, out / f"{split}.parquet")
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(jsonl_row(q), ensure_ascii=False) + "\n")
    return out
