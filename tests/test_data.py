"""Datasets load as the original files are, and the iterator resumes exactly."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dr_jax.data import (
    DataError,
    DataIterator,
    QAExample,
    composition,
    examples_from_questions,
    load_dataset,
)
from dr_jax.world.export import export_world

TEST_COMPOSITION = {"2wiki": 512, "popqa": 512, "tq": 512, "hotpotqa": 512, "nq": 512,
                    "musique": 512, "Bamboogle": 125}  # fmt: skip


@pytest.fixture(scope="module")
def deepresearcher_dir(data_dir):
    return data_dir / "deepresearcher"


def count_sources(examples):
    counts = {}
    for example in examples:
        counts[example.data_source] = counts.get(example.data_source, 0) + 1
    return counts


def test_deepresearcher_test_set_loads_whole(deepresearcher_dir):
    examples = load_dataset(deepresearcher_dir / "test.parquet")
    print("\n" + composition(examples))
    assert len(examples) == 3197
    assert count_sources(examples) == TEST_COMPOSITION
    assert len({e.id for e in examples}) == 3197
    first = examples[0]
    assert first.id == "2wiki_db6a0c8c0bdd11eba7f7acde48001122"
    assert first.question.startswith("What is the date of birth of Millicent Leveson-Gower")
    assert first.answers == ("20 July 1851",)
    popqa = examples[1]
    assert popqa.answers == ("Bloomsburg", "The Only Town in Pennsylvania", "Eyersburg")
    assert max(len(e.answers) for e in examples if e.data_source == "tq") == 178


def test_deepresearcher_dev_set_and_its_overlap_with_test(deepresearcher_dir):
    dev = load_dataset(deepresearcher_dir, split="dev")
    test = load_dataset(deepresearcher_dir, split="test")
    assert len(dev) == 875 and set(count_sources(dev).values()) == {125}
    assert len({e.id for e in dev} & {e.id for e in test}) == 188  # reference §15


def test_data_source_filter_keeps_order(deepresearcher_dir):
    every = load_dataset(deepresearcher_dir / "test.parquet")
    kept = load_dataset(deepresearcher_dir / "test.parquet", data_sources=["Bamboogle", "nq"])
    assert kept == [e for e in every if e.data_source in ("Bamboogle", "nq")]
    assert len(kept) == 637


def test_unknown_data_source_lists_the_present_ones(deepresearcher_dir):
    with pytest.raises(DataError, match=r"no data_source \['bamboogle'\].*'Bamboogle'"):
        load_dataset(deepresearcher_dir / "test.parquet", data_sources=["bamboogle"])


def test_jsonl_with_list_or_joined_answers(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"question": "Q1?", "answers": ["a", "b"], "data_source": "mine", "id": 7},
        {"question": "Q2?", "answers": "c<|answer_split|>d"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_dataset(path) == [
        QAExample("7", "Q1?", ("a", "b"), "mine"),
        QAExample("qa-1", "Q2?", ("c", "d"), "unknown"),
    ]


def test_world_export_loads_like_its_questions(tmp_path):
    from dr_jax.world import World

    world = World.generate(seed=3, size=40)
    export_world(world, tmp_path)
    for split in ("train", "dev", "test"):
        expected = examples_from_questions(world.split(split))
        assert load_dataset(tmp_path, split=split) == expected
        assert load_dataset(tmp_path / f"{split}.jsonl") == expected


def write_parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_missing_column_is_named(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", {"prompt": [[{"role": "user", "content": "q"}]]})
    with pytest.raises(DataError, match=r"bad\.parquet: missing column\(s\) \['reward_model'\]"):
        load_dataset(path)


def test_bad_ground_truth_type_is_named(tmp_path):
    path = write_parquet(
        tmp_path / "bad.parquet",
        {"prompt": [[{"role": "user", "content": "q"}]], "reward_model": [{"ground_truth": 3}]},
    )
    with pytest.raises(DataError, match=r"row 0: column 'reward_model\.ground_truth'"):
        load_dataset(path)


def test_prompt_without_user_message_is_named(tmp_path):
    path = write_parquet(
        tmp_path / "bad.parquet",
        {"prompt": [[{"role": "system", "content": "s"}]], "reward_model": [{"ground_truth": "a"}]},
    )
    with pytest.raises(DataError, match=r"column 'prompt' must be a list with a user message"):
        load_dataset(path)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "answers": ["a"]}\n{"question": \n')
    with pytest.raises(DataError, match=r"qa\.jsonl line 2: not valid JSON"):
        load_dataset(path)


def test_directory_needs_a_split(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answers": ["a"]}\n')
    with pytest.raises(DataError, match=r"pass split=.*test\.jsonl"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no train\.parquet or train\.jsonl"):
        load_dataset(tmp_path, split="train")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere.parquet")


EXAMPLES = [QAExample(f"id{i}", f"question {i}?", (f"a{i}",)) for i in range(10)]


def ids(batch):
    return [e.id for e in batch]


def test_each_epoch_is_a_permutation_and_batches_cross_epochs():
    it = DataIterator(EXAMPLES, batch_size=4, seed=0)
    seen = [ids(it.next_batch()) for _ in range(5)]  # 20 examples = two epochs
    flat = [i for batch in seen for i in batch]
    assert sorted(flat[:10]) == sorted(flat[10:]) == sorted(ids(EXAMPLES))
    assert flat[:10] != flat[10:]  # reshuffled each epoch
    assert it.epoch == 1 and it.position == 10


def test_shuffle_depends_only_on_the_seed():
    def first_batches(seed):
        it = DataIterator(EXAMPLES, batch_size=3, seed=seed)
        return [ids(it.next_batch()) for _ in range(4)]

    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)


def test_no_shuffle_keeps_file_order():
    it = DataIterator(EXAMPLES, batch_size=6, shuffle=False)
    assert ids(it.next_batch()) + ids(it.next_batch()) == ids(EXAMPLES) + ids(EXAMPLES[:2])


def test_resume_from_state_dict_continues_exactly():
    reference = DataIterator(EXAMPLES, batch_size=3, seed=5)
    expected = [ids(reference.next_batch()) for _ in range(9)]
    first = DataIterator(EXAMPLES, batch_size=3, seed=5)
    for _ in range(4):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = DataIterator(EXAMPLES, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert [ids(resumed.next_batch()) for _ in range(5)] == expected[4:]


def test_resume_refuses_another_dataset_or_seed():
    state = DataIterator(EXAMPLES, batch_size=2, seed=0).state_dict()
    with pytest.raises(DataError, match="another dataset"):
        DataIterator(EXAMPLES[:9], batch_size=2, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="seed=0"):
        DataIterator(EXAMPLES, batch_size=2, seed=1).load_state_dict(state)


def test_empty_dataset_is_refused():
    with pytest.raises(DataError, match="empty"):
        DataIterator([], batch_size=2)


def test_jsonl_row_without_answers_is_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "answers": ["a"]}\n{"question": "r"}\n')
    with pytest.raises(DataError, match=r"missing column\(s\) \['answers'\]"):
        load_dataset(path)


def test_validation_never_runs_on_training_questions(tmp_path):
    """One training file needs --data.dev-source (or no validation); a directory's dev split and
    a dev file are both filtered by --data.data-sources; a directory without dev.* trains when
    validation is off."""
    from dr_jax.train.config import DataConfig
    from dr_jax.train.run import load_questions

    rows = [{"question": f"q{i}", "answers": ["a"], "data_source": ["nq", "tq"][i % 2]}
            for i in range(6)]  # fmt: skip
    for name in ("train", "dev"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_file = DataConfig(source=str(tmp_path / "train.jsonl"))
    with pytest.raises(ValueError, match=r"--data\.dev-source"):
        load_questions(one_file, None)
    train, dev = load_questions(one_file, None, validate=False)
    assert len(train) == 6 and dev == []
    both = DataConfig(source=str(tmp_path / "train.jsonl"), dev_source=str(tmp_path / "dev.jsonl"),
                      data_sources=("nq",))  # fmt: skip
    train, dev = load_questions(both, None)
    assert {e.data_source for e in train + dev} == {"nq"} and len(dev) == 3
    directory = DataConfig(source=str(tmp_path), data_sources=("tq",))
    assert {e.data_source for e in load_questions(directory, None)[1]} == {"tq"}
    (tmp_path / "dev.jsonl").unlink()
    assert len(load_questions(directory, None, validate=False)[0]) == 3
