"""Trajectories -> padded training arrays, and the metrics writer's resume semantics."""

import json

import numpy as np
import pytest

from dr_jax.train.batching import minibatch_indices, pad_sequences
from dr_jax.train.metrics import MetricsConfig, MetricsWriter, metrics_table, read_jsonl

PAD = 7


def test_rows_are_left_padded_and_token_exact():
    seqs = pad_sequences(
        prompts=[[1, 2, 3], [4]],
        responses=[[10, 11, 12, 13], [20, 21]],
        response_masks=[[1, 1, 0, 1], [1, 1]],
        response_logprobs=[[-0.1, -0.2, -9.0, -0.4], [-1.0, -2.0]],
        pad_id=PAD,
        multiple=4,
    )
    assert seqs.tokens.shape == (2, 8)
    np.testing.assert_array_equal(seqs.tokens[0], [PAD, 1, 2, 3, 10, 11, 12, 13])
    np.testing.assert_array_equal(seqs.tokens[1], [PAD, PAD, PAD, PAD, PAD, 4, 20, 21])
    np.testing.assert_array_equal(seqs.attention_mask[1], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(seqs.loss_mask[0], [0, 0, 0, 0, 1, 1, 0, 1])
    # sampler log-probs sit on the sampled tokens only (masked observation token gets 0)
    np.testing.assert_allclose(seqs.sampler_logprobs[0], [0, 0, 0, 0, -0.1, -0.2, 0, -0.4])
    np.testing.assert_allclose(seqs.sampler_logprobs[1, -2:], [-1.0, -2.0])


def test_too_long_rows_are_cut_at_max_len():
    seqs = pad_sequences([[1] * 5], [[2] * 10], [[1] * 10], pad_id=PAD, multiple=8, max_len=8)
    assert seqs.tokens.shape == (1, 8)
    assert seqs.loss_mask.sum() == 3


def test_mask_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="loss-mask"):
        pad_sequences([[1]], [[2, 3]], [[1]], pad_id=PAD)


def test_minibatches_partition_the_rows():
    parts = minibatch_indices(8, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))
    with pytest.raises(ValueError, match="mini_batches"):
        minibatch_indices(6, 4, None)


def test_resumed_metrics_drop_records_after_the_checkpoint(tmp_path):
    cfg = MetricsConfig(progress_bar=False)
    w = MetricsWriter(tmp_path, cfg, total_steps=5)
    for step in (1, 2, 3):
        w.log(step, {"train/reward": 0.1 * step})
    w.close()
    w = MetricsWriter(tmp_path, cfg, total_steps=5, start_step=2)
    w.log(3, {"train/reward": 0.9})
    w.close()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["train/reward"] == pytest.approx(0.9)
    assert list((tmp_path / "tb").iterdir()), "TensorBoard event files are written"


def test_torn_last_line_is_ignored_and_table_renders(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "val/reward": -1.0}) + "\n" + '{"step": 2, "val/re')
    records = read_jsonl(path)
    table = metrics_table(records, ["val/reward"])
    assert table.splitlines()[-1] == "| 1 | -1.000 |"
