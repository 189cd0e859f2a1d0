"""The launch builders: checkpoints, the world's tools, and evaluation over an SGLang server."""

import asyncio
import gc
import json

import numpy as np
import pytest
from sglang_standin import StandIn

from dr_jax.config import PolicyConfig, SamplerConfig, SGLangConfig
from dr_jax.eval import EvalConfig, evaluate
from dr_jax.models import ModelConfig, init_policy, save_pretrained
from dr_jax.runtime import build_policy, build_tokenizer, settled_heap, start_world_tools
from dr_jax.tools import ToolsConfig, ToolSession
from dr_jax.tools.calls import ToolCall
from dr_jax.world import World

TOOLS = ToolsConfig(extract_workers=0)


def test_a_checkpoint_directory_gives_its_policy_and_tokenizer(qwen_tokenizer, tmp_path):
    policy = init_policy(ModelConfig.tiny(vocab_size=1024), seed=7)
    save_pretrained(policy, tmp_path)
    qwen_tokenizer.save_pretrained(tmp_path)
    config = PolicyConfig(path=str(tmp_path))
    loaded = build_policy(config)
    assert loaded.config == policy.config
    tokens = np.array([[1, 5, 9, 1000]], np.int32)
    np.testing.assert_allclose(loaded.logits(tokens), policy.logits(tokens), rtol=1e-6)
    text = "<|im_start|>user\nWho founded Hoser Pictures?<|im_end|>"
    assert build_tokenizer(config).encode(text) == qwen_tokenizer.encode(text)


def test_a_directory_without_config_json_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        build_policy(PolicyConfig(path=str(tmp_path)))


def test_the_world_backend_serves_the_world_on_loopback_for_the_tools():
    world = World.generate(seed=0, size="tiny")
    question = world.split("test")[0]
    page = question.plan[0][0]

    async def search() -> tuple[str, str]:
        async with start_world_tools(TOOLS, world) as tools:
            call = ToolCall("web_search", {"query": [page.title]})
            return tools.config.search_url, await tools.execute(
                call, ToolSession(question.question)
            )

    url, observation = asyncio.run(search())
    assert url.startswith("http://127.0.0.1:")
    assert f"{url}{page.path}" in observation


def test_a_settled_heap_is_left_out_of_collections_until_the_block_ends():
    with settled_heap():
        frozen = gc.get_freeze_count()
    assert frozen > 1000 and gc.get_freeze_count() == 0, "frozen in the block, given back after"
    with pytest.raises(KeyError), settled_heap():
        raise KeyError
    assert gc.get_freeze_count() == 0, "given back when the block ends in an error too"


def test_evaluation_over_an_sglang_server_sends_the_agent_prompts(qwen_tokenizer, tmp_path):
    world = World.generate(seed=0, size="tiny")
    with StandIn() as server:
        engines = SGLangConfig(engines=(server.url,))
        sampler = SamplerConfig(kind="sglang", sglang=engines, temperature=0.0, max_new_tokens=8)
        config = EvalConfig(out_dir=str(tmp_path), sampler=sampler, tools=TOOLS, limit=2)
        summary = asyncio.run(evaluate(config, world))
    generate = [body for path, body in server.log if path == "/generate"]
    assert len(generate) == 2  # one turn each: the stand-in's tokens are no valid turn
    prompts = {qwen_tokenizer.decode(body["input_ids"]) for body in generate}
    assert {q.question for q in world.split("test")[:2]} == {
        p.split("<|im_start|>user\n")[1].split("<|im_end|>")[0] for p in prompts
    }
    assert all(body["sampling_params"]["max_new_tokens"] == 8 for body in generate)
    assert summary["meta"]["sampler"] == "sglang" and summary["datasets"]["average"]["f1"] == 0.0
    assert json.loads((tmp_path / "run.json").read_text())["sampler"][0] == "sglang"
