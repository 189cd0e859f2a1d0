"""Question-answer datasets: DeepResearcher parquet, JSONL, the offline world; a resumable iterator.

Accepted rows (parquet or JSONL, one schema per file):
- DeepResearcher: `prompt` = [{"role": "user", "content": question}],
  `reward_model.ground_truth` = aliases joined by `<|answer_split|>` (or a list),
  `data_source`, optional `extra_info.index` as the id;
- flat: `question`, `answers` (list of strings, or one string), optional `data_source`, `id`.

`python -m dr_jax.data PATH [--split test]` prints a dataset's composition.
"""

import collections
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import tyro

from dr_jax import cli
from dr_jax.reward import ANSWER_SPLIT

SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class QAExample:
    """One question with its gold aliases; `data_source` names its benchmark (e.g. "nq")."""

    id: str
    question: str
    answers: tuple[str, ...]
    data_source: str = "unknown"


class DataError(ValueError):
    """A dataset file that cannot be read as questions and answers."""


def _answers(value: Any, where: str, column: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split(ANSWER_SPLIT))
    if isinstance(value, list | tuple) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise DataError(
        f"{where}: column {column!r} must hold a string or a list of strings, "
        f"got {type(value).__name__}"
    )


def _deepresearcher_row(row: dict[str, Any], where: str) -> QAExample:
    prompt = row["prompt"] if isinstance(row["prompt"], list) else []
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[0].get("content"), str):
        raise DataError(f"{where}: column 'prompt' must be a list with a user message")
    reward_model = row["reward_model"]
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise DataError(f"{where}: column 'reward_model' must hold a 'ground_truth' field")
    extra = row.get("extra_info")
    example_id = extra.get("index") if isinstance(extra, dict) else None
    return QAExample(
        id=str(example_id) if example_id is not None else "",
        question=users[0]["content"],
        answers=_answers(reward_model["ground_truth"], where, "reward_model.ground_truth"),
        data_source=str(row.get("data_source") or "unknown"),
    )


def _flat_row(row: dict[str, Any], where: str) -> QAExample:
    if not isinstance(row["question"], str):
        raise DataError(f"{where}: column 'question' must be a string")
    return QAExample(
        id=str(row["id"]) if row.get("id") is not None else "",
        question=row["question"],
        answers=_answers(row["answers"], where, "answers"),
        data_source=str(row.get("data_source") or "unknown"),
    )


def _examples(rows: Iterable[dict[str, Any]], columns: set[str], path: Path) -> list[QAExample]:
    """Rows of one file as examples; ids default to `<file stem>-<row>`."""
    if {"prompt", "reward_model"} <= columns:
        convert = _deepresearcher_row
    elif {"question", "answers"} <= columns:
        convert = _flat_row
    else:
        flat = bool({"question", "answers"} & columns)
        missing = sorted(
            ({"question", "answers"} if flat else {"prompt", "reward_model"}) - columns
        )
        raise DataError(
            f"{path}: missing column(s) {missing}: expected the DeepResearcher schema "
            "(prompt, reward_model.ground_truth, data_source) or question + answers"
        )
    examples = []
    for i, row in enumerate(rows):
        example = convert(row, f"{path} row {i}")
        examples.append(example if example.id else _with_id(example, f"{path.stem}-{i}"))
    return examples


def _with_id(example: QAExample, example_id: str) -> QAExample:
    return QAExample(example_id, example.question, example.answers, example.data_source)


def _read_parquet(path: Path) -> list[QAExample]:
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    return _examples(table.to_pylist(), set(table.column_names), path)


def _read_jsonl(path: Path) -> list[QAExample]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path} line {number}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: each line must be a JSON object")
        rows.append(row)
    columns = set.intersection(*(set(row) for row in rows)) if rows else set()
    return _examples(rows, columns, path) if rows else []


def _resolve(path: Path, split: str | None) -> Path:
    """A file as is; in a directory, `<split>.parquet` or else `<split>.jsonl`."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {path} does not exist")
    available = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)
    if split is None:
        raise DataError(
            f"{path} is a directory: pass split= (--split on the command line; one of its "
            f"files: {available})"
        )
    for suffix in SUFFIXES:
        if (candidate := path / f"{split}{suffix}").is_file():
            return candidate
    raise FileNotFoundError(f"no {split}.parquet or {split}.jsonl in {path} (found {available})")


def load_dataset(
    path: str | Path,
    split: str | None = None,
    data_sources: Sequence[str] | None = None,
) -> list[QAExample]:
    """Examples of a parquet/JSONL file (or `<dir>/<split>.*`), optionally of some sources only.

    The world's `export` directory (train/dev/test .parquet + .jsonl) loads with `split=`.
    """
    file = _resolve(Path(path), split)
    if file.suffix == ".parquet":
        examples = _read_parquet(file)
    elif file.suffix == ".jsonl":
        examples = _read_jsonl(file)
    else:
        raise DataError(f"{file}: unsupported file type {file.suffix!r}: use .parquet or .jsonl")
    if data_sources is None:
        return examples
    present = {e.data_source for e in examples}
    if unknown := sorted(set(data_sources) - present):
        raise DataError(f"{file}: no data_source {unknown}; present: {sorted(present)}")
    wanted = set(data_sources)
    return [e for e in examples if e.data_source in wanted]


def examples_from_questions(questions: Iterable[Any]) -> list[QAExample]:
    """The world's questions (anything with id, question, answers, data_source) as examples."""
    return [QAExample(q.id, q.question, tuple(q.answers), q.data_source) for q in questions]


def composition(examples: Sequence[QAExample]) -> str:
    """A table of rows and gold aliases per data source, in order of first appearance."""
    by_source: dict[str, list[int]] = collections.defaultdict(list)
    for example in examples:
        by_source[example.data_source].append(len(example.answers))
    lines = [f"{'data_source':<24}{'rows':>8}{'aliases (mean)':>16}{'aliases (max)':>15}"]
    for source, counts in by_source.items():
        lines.append(f"{source:<24}{len(counts):>8}{np.mean(counts):>16.1f}{max(counts):>15}")
    lines.append(f"{'total':<24}{len(examples):>8}  ({len(by_source)} sources)")
    return "\n".join(lines)


class DataIterator:
    """Batches of examples, reshuffled every epoch, resumable from `state_dict()`.

    Epoch e visits the examples in the order `permutation(seed, e)` (identity if not
    `shuffle`); a batch that crosses an epoch end continues into the next epoch, so every
    batch is full and the sequence of batches depends only on (examples, seed, batch_size).
    """

    def __init__(
        self, examples: Sequence[QAExample], batch_size: int, seed: int = 0, shuffle: bool = True
    ):
        if not examples:
            raise DataError("DataIterator needs at least one example: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)
        ids = "\x00".join(e.id for e in self.examples)
        self._fingerprint = hashlib.sha256(ids.encode()).hexdigest()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> list[QAExample]:
        """The next `batch_size` examples (crossing into the next epoch when needed)."""
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self.examples):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = min(self.batch_size - len(batch), len(self.examples) - self.position)
            batch += [self.examples[i] for i in self._order[self.position : self.position + take]]
            self.position += take
        return batch

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> list[QAExample]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Position to store in a checkpoint (plain ints and strings)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken (same dataset, seed and shuffle required)."""
        if state["dataset"] != self._fingerprint:
            raise DataError(
                "the saved data position belongs to another dataset (example ids differ): "
                "resume with the same dataset and data_sources filter"
            )
        if (state["seed"], state["shuffle"]) != (self.seed, self.shuffle):
            raise DataError(
                f"the saved data position used seed={state['seed']} shuffle={state['shuffle']}; "
                f"this iterator has seed={self.seed} shuffle={self.shuffle}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)


def main(
    path: tyro.conf.Positional[str],
    split: str | None = None,
    data_sources: list[str] | None = None,
) -> None:
    """Print the composition of a dataset file or exported directory.

    Args:
        path: a .parquet / .jsonl file, or a directory holding <split>.parquet|.jsonl.
        split: file to read in a directory (train, dev, test).
        data_sources: keep only these sources (e.g. nq hotpotqa).
    """
    examples = load_dataset(path, split=split, data_sources=data_sources)
    print(f"{path}{f' [{split}]' if split else ''}: {len(examples)} examples")
    print(composition(examples))


if __name__ == "__main__":
    cli.run(lambda argv: tyro.cli(main, args=argv))
