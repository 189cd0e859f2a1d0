"""Three GRPO steps of the real loop (dr_jax/train/run.py) rolled out on the SGLang stand-in
through an outage and a 10% abort rate: the run waits the outage out, the aborted trajectories
are counted as infrastructure failures and left out, and every request carries its seed."""

import asyncio
import dataclasses

import pytest
from sglang_standin import StandIn
from test_train_e2e import tiny_config

from dr_jax.config import PolicyConfig, SamplerConfig, SGLangConfig
from dr_jax.models import save_pretrained
from dr_jax.runtime import build_policy
from dr_jax.train.metrics import read_jsonl
from dr_jax.train.run import train


@pytest.mark.slow  # the whole training loop on CPU: 1-1.5 min on 2 cores
def test_three_steps_through_an_outage_and_aborts(tmp_path):
    served = save_pretrained(build_policy(PolicyConfig()), tmp_path / "served")  # the start policy
    config = tiny_config(tmp_path / "run")
    grpo = dataclasses.replace(config.grpo, steps=3)  # 2 questions x 2 rollouts a step
    with StandIn(served, start_seconds=0.5, abort_rate=0.1) as engine:
        # the step-1 weight sync (the second update) loses its connection and the port refuses
        # for 2 s, longer than the client's own retries; the engine comes back with its
        # original weights, starting
        engine.outage_at("/update_weights_from_disk", 2, seconds=2.0)
        sglang = SGLangConfig(engines=(engine.url,), retries=1, backoff=0.05, sync_timeout=60)
        sampler = SamplerConfig(kind="sglang", max_new_tokens=8, sglang=sglang)
        sft = dataclasses.replace(config.sft, steps=0)
        loss = dataclasses.replace(config.loss, kl_coef=0.0)  # no reference pass: quicker
        config = config.replace(sampler=sampler, grpo=grpo, sft=sft, loss=loss)
        asyncio.run(train(config))

    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    generated = [body for path, body in engine.log if path == "/generate"]
    assert len(generated) == 3 * 4 + 2, "one turn each (the stand-in's tokens are no valid turn)"
    lost = sum(r["train/infra_failures"] + r.get("val/infra_failures", 0) for r in records)
    assert lost == engine.aborted == len(generated) // 10 == 1
    updates = [body["weight_version"] for path, body in engine.log
               if path == "/update_weights_from_disk"]  # fmt: skip
    assert updates == ["0", "1", "1", "2", "3"], "the dropped step-1 sync was redone"
    assert engine.weight_version == "3"
    seeds = {body["sampling_params"]["sampling_seed"] for body in generated}
    assert len(seeds) == len(generated), "each trajectory's turn has its own seed"
