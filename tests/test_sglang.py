"""SGLangSampler against the loopback stand-in (tests/sglang_standin.py), which refuses what
SGLang refuses: token-in/token-out, the context limit, the version floor, weight sync through
outages and refusals, several engines and a router, per-request seeds, aborts. The log-prob
parity check needs a GPU host (see dr_jax/rollout/sglang.py)."""

import asyncio
import json
import socket
import sys
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from sglang_standin import (
    QWEN_VOCAB,
    STOP_AT,
    Router,
    StandIn,
    safetensors_shapes,
    standin_tokens,
)

from dr_jax.config import SGLangConfig
from dr_jax.rollout import SamplingParams
from dr_jax.rollout.sampler import ContextFull
from dr_jax.rollout.sglang import (
    MIN_VERSION,
    SGLangError,
    SGLangSampler,
    UnsupportedServer,
    main,
    sglang_server_command,
    start_sglang_server,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 2048


@pytest.fixture(scope="module")
def tiny_policy():
    from dr_jax.models import ModelConfig, init_policy

    return init_policy(ModelConfig.tiny(vocab_size=VOCAB), seed=0)


@pytest.fixture(scope="module")
def model_dir(tiny_policy, tmp_path_factory) -> Path:
    """The model the stand-in serves (the tiny policy as an HF directory)."""
    from dr_jax.models import save_pretrained

    return save_pretrained(tiny_policy, tmp_path_factory.mktemp("served"))


def fast(*engines: str, **overrides) -> SGLangSampler:
    return SGLangSampler(SGLangConfig(engines=engines, backoff=0.01, **overrides))


def run(sampler: SGLangSampler, coro):
    async def go():
        async with sampler:
            return await coro

    return asyncio.run(go())


def generate(sampler, prompts, **params):
    return run(sampler, sampler.generate(prompts, SamplingParams(**params)))


def bodies(server: StandIn, path: str = "/generate") -> list[dict]:
    return [body for p, body in server.log if p == path]


# ----------------------------------------------------------------- token-in / token-out


def test_generate_is_token_in_token_out_with_logprobs_and_a_seed_per_row():
    prompts = [[1, 2, 3], [40, 50]]
    params = dict(temperature=0.6, top_p=0.9, top_k=20, max_new_tokens=5, seed=11)
    with StandIn() as server:
        results = generate(fast(server.url), prompts, **params)
    for row, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        assert result.token_ids == standin_tokens(prompt, 5, seed=11 + row)
        assert result.logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
        assert result.finish_reason == "length"
    body = min(bodies(server), key=lambda b: b["input_ids"])
    assert body["return_logprob"] is True and body["logprob_start_len"] == -1
    sp = body["sampling_params"]
    assert (sp["temperature"], sp["top_p"], sp["top_k"], sp["max_new_tokens"]) == (0.6, 0.9, 20, 5)
    assert sp["no_stop_trim"] is True and sp["skip_special_tokens"] is False
    seeds = {tuple(b["input_ids"]): b["sampling_params"]["sampling_seed"] for b in bodies(server)}
    assert seeds == {(1, 2, 3): 11, (40, 50): 12}


def test_the_stop_token_is_kept():
    with StandIn() as server:
        [result] = generate(fast(server.url), [[5]], max_new_tokens=10, stop_token_ids=(1999,))
    assert result.token_ids == [*standin_tokens([5], STOP_AT), 1999]
    assert len(result.logprobs) == 3 and result.finish_reason == "stop"


def test_same_seed_same_request_so_a_deterministic_server_samples_the_same_run():
    with StandIn() as server:
        twice = [generate(fast(server.url), [[7]], max_new_tokens=4, seed=s) for s in (3, 3, 4)]
    assert twice[0] == twice[1] != twice[2]
    assert [b["sampling_params"]["sampling_seed"] for b in bodies(server)] == [3, 3, 4]


# ------------------------------------------------------------ retries and bad responses


def test_dropped_connections_and_5xx_are_retried_but_a_400_is_not():
    with StandIn() as server:
        server.drop, server.status = 1, [503]
        [result] = generate(fast(server.url, retries=2), [[9]], max_new_tokens=3)
        assert result.token_ids == standin_tokens([9], 3)
        assert server.paths().count("/generate") == 3
        server.log.clear()
        with pytest.raises(SGLangError, match=r"HTTP 400.*vocab"):
            generate(fast(server.url, retries=2), [[QWEN_VOCAB]], max_new_tokens=3)
        assert server.paths().count("/generate") == 1


def test_retries_are_bounded_then_a_clear_error():
    with StandIn() as server:
        sampler = fast(server.url, retries=2)
        run(sampler, sampler.connect())
        server.drop = 10
        with pytest.raises(ConnectionError, match="after 3 attempts"):
            run(sampler, sampler.generate([[9]], SamplingParams(max_new_tokens=3)))
    assert server.paths().count("/generate") == 3


def mangled(change) -> list:
    with StandIn() as server:
        server.mangle = change
        return generate(fast(server.url), [[3]], max_new_tokens=4)


def test_logprobs_must_match_completion_tokens():
    with pytest.raises(SGLangError, match="3 log-probs for 4 completion tokens"):
        mangled(lambda meta: meta["output_token_logprobs"].pop())
    with pytest.raises(SGLangError, match="output_token_logprobs"):
        mangled(lambda meta: meta.pop("output_token_logprobs"))


@pytest.mark.parametrize(
    "finish",
    [
        {"type": "stop", "matched": "NaN happened"},
        None,
        {"type": "abort", "message": "Abort in waiting queue", "status_code": None},
    ],
)
def test_a_nan_a_missing_finish_and_an_abort_are_aborts_without_tokens(finish):
    [result] = mangled(lambda meta: meta.update(finish_reason=finish))
    assert (result.token_ids, result.logprobs, result.finish_reason) == ([], [], "abort")


def test_abort_rate_ends_that_share_of_requests_as_aborts():
    with StandIn(abort_rate=0.25) as server:
        results = generate(fast(server.url), [[i] for i in range(1, 9)], max_new_tokens=2)
    assert [r.finish_reason for r in results].count("abort") == 2 == server.aborted


# -------------------------------------------------------------------- the context limit


def test_max_new_tokens_is_clipped_so_prompt_plus_it_stays_below_the_context():
    """context 64: max_req_len 63, max_req_input_len 58; a request may hold 62 tokens."""
    with StandIn(context_length=64) as server:
        sampler = fast(server.url)
        results = generate(sampler, [[1] * 50, [1] * 57], max_new_tokens=2000)
        with pytest.raises(ContextFull, match="58"):
            generate(sampler, [[1] * 58], max_new_tokens=1)
    sent = sorted((len(b["input_ids"]), b["sampling_params"]["max_new_tokens"])
                  for b in bodies(server))  # fmt: skip
    assert sent == [(50, 12), (57, 5)] and all(n + m < 64 for n, m in sent)
    assert [len(r.token_ids) for r in results] == [12, 5]


def test_a_prompt_that_fills_the_servers_context_ends_as_context_budget(qwen_tokenizer):
    """Not an infrastructure failure: the policy's conversation outgrew the server (whose
    context is shorter than the agent's budget); nothing is sent."""
    from dr_jax.rollout import Agent, AgentConfig
    from dr_jax.rollout.trajectory import INFRA_FAILURES
    from dr_jax.runtime import start_world_tools
    from dr_jax.tools import ToolsConfig
    from dr_jax.world import World

    async def rollout(url: str):
        async with start_world_tools(
            ToolsConfig(extract_workers=0), World.generate(0, "tiny")
        ) as tools:
            sampler = fast(url)
            agent = Agent(sampler, qwen_tokenizer, tools, AgentConfig(max_context_tokens=32768))
            async with sampler:
                return await agent.rollout(["Who founded the Tiny Museum?"], seed=1)

    with StandIn(context_length=128) as server:
        [trajectory] = asyncio.run(rollout(server.url))
    assert trajectory.finish_reason == "context_budget" not in INFRA_FAILURES
    assert "/generate" not in server.paths()


def test_the_standin_refuses_what_the_server_refuses_with_its_messages():
    """The requests the client never sends, sent raw: SGLang 0.5.5's 400s."""
    with StandIn(context_length=64) as server:

        def post(input_ids, **sp):
            body = {"input_ids": input_ids, "sampling_params": sp}
            response = httpx.post(server.url + "/generate", json=body)
            assert response.status_code == 400
            return response.json()["error"]["message"]

        assert "You requested a total of 64 tokens" in post([1] * 54, max_new_tokens=10)
        assert "longer than the model's context length (64" in post([1] * 64)
        assert "Input length (58 tokens) exceeds" in post([1] * 58, max_new_tokens=1)
        assert "unknown field `seed`" in post([1], seed=3)
        assert "top_k must be -1 (disable) or at least 1, got 0" in post([1], top_k=0)
        assert "temperature must be non-negative" in post([1], temperature=-0.5)
        assert "expected int" in post([1], top_k=-1.0)
        assert "max_new_tokens must be at least 0" in post([1], max_new_tokens=-1)
        assert "vocab" in post([QWEN_VOCAB])
        body = {"input_ids": [1], "sampling_params": {}, "return_logprobs": True}
        assert httpx.post(server.url + "/generate", json=body).status_code == 400


# ------------------------------------------------------------------ version and routes


def test_connect_refuses_a_server_older_than_the_floor_naming_it():
    with StandIn(version="0.5.4.post3") as server, pytest.raises(UnsupportedServer) as error:
        generate(fast(server.url), [[1]], max_new_tokens=1)
    assert "0.5.4.post3" in str(error.value) and "sglang>=0.5.5" in str(error.value)
    assert "/generate" not in server.paths()


def test_the_extra_asks_for_the_version_the_client_checks():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [requirement] = extra["optional-dependencies"]["sglang"]
    assert requirement == "sglang>=" + ".".join(map(str, MIN_VERSION))


def test_newer_servers_are_read_at_their_current_routes(tiny_policy, model_dir, tmp_path):
    with StandIn(model_dir, version="0.5.23", new_routes=True) as server:
        sampler = fast(server.url)
        run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=1))
    assert "/server_info" in server.paths() and "/model_info" in server.paths()
    assert not {"/get_server_info", "/get_model_info"} & set(server.paths())


# -------------------------------------------------------------------------- health


def test_health_is_503_while_starting_and_while_paused():
    with StandIn(start_seconds=0.6) as server:
        sampler = fast(server.url)
        assert run(sampler, sampler.health()) is False
        run(sampler, sampler.wait_healthy(timeout=5, interval=0.1))
        httpx.post(server.url + "/pause_generation", json={"mode": "abort"})
        assert run(sampler, sampler.health()) is False
        httpx.post(server.url + "/continue_generation", json={})
        assert run(sampler, sampler.health()) is True
        url = server.url
    with pytest.raises(TimeoutError, match=url):
        run(sampler, sampler.wait_healthy(timeout=0.2, interval=0.05))


# -------------------------------------------------------------------------- weights


def test_weight_sync_is_pause_update_continue_checked_then_responses_must_carry_it(
    tiny_policy, model_dir, tmp_path
):
    with StandIn(model_dir) as server:
        sampler = fast(server.url)
        timings = run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=7))
        assert server.weight_version == "7" and sampler.weight_version == "7"
        control = [p for p in server.paths() if p != "/health" and "server_info" not in p]
        assert control[-4:] == ["/pause_generation", "/update_weights_from_disk",
                                "/continue_generation", "/get_model_info"]  # fmt: skip
        [update] = bodies(server, "/update_weights_from_disk")
        assert update["model_path"] == str(tmp_path) and update["weight_version"] == "7"
        assert safetensors_shapes(tmp_path) == server.shapes
        assert set(timings) == {"save", "load"}
        server.refuse(0.3)  # a restart: the engine serves its original weights again
        run(sampler, sampler.wait_healthy(timeout=5, interval=0.1))
        with pytest.raises(SGLangError, match="weight_version 'default', expected '7'"):
            run(sampler, sampler.generate([[1]], SamplingParams(max_new_tokens=1)))


def test_a_refused_update_is_not_retried_and_generation_resumes(model_dir, tmp_path):
    from safetensors.numpy import save_file

    shapes = safetensors_shapes(model_dir)
    shapes["model.norm.weight"] = (32,)  # the served model's is (64,)
    save_file({name: np.zeros(shape, np.float16) for name, shape in shapes.items()},
              tmp_path / "model.safetensors")  # fmt: skip
    with StandIn(model_dir) as server:
        sampler = fast(server.url)
        with pytest.raises(SGLangError, match=r"HTTP 400.*shape mismatch.*Rolling back"):
            run(sampler, sampler.update_weights_from_disk(tmp_path, 1))
        assert not server.paused and server.weight_version == "default"
    assert server.paths().count("/update_weights_from_disk") == 1
    assert server.paths()[-1] == "/continue_generation"


def test_an_update_that_did_not_take_is_detected(tiny_policy, model_dir, tmp_path):
    with StandIn(model_dir) as server:
        server.apply_version = False
        sampler = fast(server.url)
        with pytest.raises(SGLangError, match="did not take"):
            run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=3))


def test_a_sync_waits_out_an_engine_that_refuses_connections(tiny_policy, model_dir, tmp_path):
    """The update drops the connection and the port refuses for 1.5 s (longer than the
    client's own retries): the engine is polled until healthy and the sync redone."""
    with StandIn(model_dir, start_seconds=0.3) as server:
        server.outage_at("/update_weights_from_disk", 1, seconds=1.5)
        sampler = fast(server.url, retries=1, sync_timeout=20)
        run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=2))
        assert server.weight_version == "2"
    assert server.paths().count("/update_weights_from_disk") == 2


# -------------------------------------------------------------- several engines, a router


def test_generation_round_robins_and_every_engine_is_synced(tiny_policy, model_dir, tmp_path):
    with StandIn(model_dir) as a, StandIn(model_dir) as b:
        sampler = fast(a.url, b.url)
        run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=4))
        generate(sampler, [[i] for i in range(1, 7)], max_new_tokens=1)
        assert a.weight_version == b.weight_version == "4"
    assert len(bodies(a)) == len(bodies(b)) == 3
    for engine in (a, b):
        assert [p for p in engine.paths() if p.endswith("generation")] == [
            "/pause_generation", "/continue_generation"]  # fmt: skip


def test_through_a_router_generation_goes_to_it_and_control_to_the_engines(
    tiny_policy, model_dir, tmp_path
):
    with StandIn(model_dir) as a, StandIn(model_dir) as b, Router([a.url, b.url]) as router:
        sampler = fast(a.url, b.url, router=router.url)
        run(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=1))
        generate(sampler, [[1], [2]], max_new_tokens=1)
        assert router.log == ["/generate", "/generate"]
        assert len(bodies(a)) == len(bodies(b)) == 1 and a.weight_version == b.weight_version
        b.refuse(60)
        assert run(sampler, sampler.health()) is False, "an engine down, the router's 200 aside"


# ------------------------------------------------------------------- launching helpers


def test_server_command_has_the_rollout_flags():
    command = sglang_server_command("/ckpt", port=31000, tp=2, deterministic=True)
    assert command[1:3] == ["-m", "sglang.launch_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model-path"] == "/ckpt" and flags["--port"] == "31000"
    assert flags["--tp-size"] == "2" and flags["--dtype"] == "bfloat16"
    assert "--enable-deterministic-inference" in command


def test_parity_check_flags_a_server_whose_logprobs_are_not_the_policys(model_dir, capsys):
    """The stand-in's log-probs are made up, so the GPU-host parity command must fail on it."""
    with StandIn(model_dir) as server:
        argv = ["parity", "--url", server.url, "--checkpoint", str(model_dir), "--prompts", "2"]
        code = main([*argv, "--max-new-tokens", "4"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["ok"] and report["max_abs_logprob_gap"] > 1.0
    assert server.paths().count("/generate") == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_server_waits_until_healthy_and_reports_early_exit(tmp_path):
    port = free_port()
    standin = str(Path(__file__).with_name("sglang_standin.py"))
    process = start_sglang_server([sys.executable, standin, str(port)], f"http://127.0.0.1:{port}")
    try:
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait()
    log = tmp_path / "server.log"
    crash = [sys.executable, "-c", "import sys; print('no GPU found'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)code 3.*no GPU found"):
        start_sglang_server(crash, f"http://127.0.0.1:{free_port()}", log_path=log)
