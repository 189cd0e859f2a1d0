"""SGLangSampler against a loopback stand-in speaking SGLang's native JSON (rl_systems.md §2.2).

The stand-in is a real HTTP server on 127.0.0.1: `/generate` answers deterministically from the
request (and trims the stop token unless `no_stop_trim`, as SGLang does), the weight endpoints
keep a version and check what they are given. Nothing here claims more about SGLang than the
documented shapes; the log-prob parity check needs a GPU host (see dr_jax/rollout/sglang.py).
"""

import asyncio
import json
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dr_jax.rollout import SamplingParams
from dr_jax.rollout.sglang import (
    SGLangConfig,
    SGLangError,
    SGLangSampler,
    main,
    sglang_server_command,
    start_sglang_server,
)

STOP_AT = 2  # the stand-in emits the first stop id as its third token


def standin_tokens(input_ids: list[int], n: int) -> list[int]:
    return [(sum(input_ids) + 7 * i) % 1000 + 1000 for i in range(n)]


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.log: list[tuple[str, dict | None]] = []
        self.weight_version = "default"
        self.paused = False
        self.drop = 0  # the next N POSTs get the connection closed, no response
        self.status = []  # status codes to answer the next POSTs with
        self.update_ok = True
        self.apply_version = True
        self.malformed = False

    def __enter__(self) -> "StandIn":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.log]


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:
        pass

    def reply(self, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.log.append((self.path, None))
        if self.path == "/health":
            self.reply({})
        elif self.path == "/get_model_info":
            self.reply(
                {
                    "model_path": "/models/x",
                    "tokenizer_path": "/models/x",
                    "is_generation": True,
                    "preferred_sampling_params": None,
                    "weight_version": self.server.weight_version,
                }
            )
        else:
            self.reply({"detail": "Not Found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.log.append((self.path, body))
        if server.drop:
            server.drop -= 1
            self.close_connection = True
            return
        if server.status:
            self.reply({"error": "injected"}, server.status.pop(0))
            return
        handler = {
            "/generate": self.generate,
            "/pause_generation": self.pause,
            "/continue_generation": self.resume,
            "/update_weights_from_disk": self.update,
        }.get(self.path)
        if handler is None:
            self.reply({"detail": "Not Found"}, 404)
        else:
            handler(body)

    def generate(self, body: dict) -> None:
        sp = body["sampling_params"]
        tokens = standin_tokens(body["input_ids"], sp["max_new_tokens"])
        finish: dict = {"type": "length", "length": sp["max_new_tokens"]}
        if sp.get("stop_token_ids") and len(tokens) > STOP_AT:
            tokens = [*tokens[:STOP_AT], sp["stop_token_ids"][0]]
            finish = {"type": "stop", "matched": tokens[-1]}
            if not sp.get("no_stop_trim", False):
                tokens = tokens[:-1]
        pairs = [[-(i + 1) / 10, t, None] for i, t in enumerate(tokens)]
        meta = {
            "id": "r",
            "finish_reason": finish,
            "prompt_tokens": len(body["input_ids"]),
            "completion_tokens": len(tokens),
            "cached_tokens": 0,
            "weight_version": self.server.weight_version,
            "output_token_logprobs": pairs,
        }
        if self.server.malformed:
            del meta["output_token_logprobs"]
        self.reply({"text": "", "output_ids": tokens, "meta_info": meta})

    def pause(self, body: dict) -> None:
        self.server.paused = True
        self.reply({"message": "paused", "status": "ok"})

    def resume(self, body: dict) -> None:
        self.server.paused = False
        self.reply({"message": "continued", "status": "ok"})

    def update(self, body: dict) -> None:
        path = Path(body["model_path"])
        shards = sorted(path.glob("*.safetensors"))
        problem = None
        if not self.server.paused:
            problem = "generation is not paused"
        elif not (path / "config.json").is_file() or not shards:
            problem = f"no HF checkpoint at {path}"
        elif not self.server.update_ok:
            problem = "injected failure"
        if problem:
            self.reply({"success": False, "message": problem, "num_paused_requests": 0}, 400)
            return
        if self.server.apply_version:
            self.server.weight_version = body["weight_version"]
        self.reply({"success": True, "message": "ok", "num_paused_requests": 0})


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes in a safetensors header (8-byte length, then JSON)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def fast(url: str, **overrides) -> SGLangSampler:
    return SGLangSampler(url, SGLangConfig(backoff=0.01, **overrides))


async def using(sampler: SGLangSampler, coro):
    async with sampler:
        return await coro


def test_generate_is_token_in_token_out_with_logprobs_from_meta_info():
    prompts = [[1, 2, 3], [40, 50]]
    params = SamplingParams(temperature=0.6, top_p=0.9, top_k=20, max_new_tokens=5, seed=11)
    with StandIn() as server:
        sampler = fast(server.url)
        results = asyncio.run(using(sampler, sampler.generate(prompts, params)))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == standin_tokens(prompt, 5)
        assert result.logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
        assert result.finish_reason == "length"
    bodies = sorted((b for p, b in server.log if p == "/generate"), key=lambda b: b["input_ids"])
    assert [b["input_ids"] for b in bodies] == sorted(prompts)
    body = bodies[0]
    assert body["return_logprob"] is True and body["logprob_start_len"] == -1
    sp = body["sampling_params"]
    assert (sp["temperature"], sp["top_p"], sp["top_k"], sp["max_new_tokens"]) == (0.6, 0.9, 20, 5)
    assert sp["no_stop_trim"] is True and sp["skip_special_tokens"] is False
    assert "sampling_seed" not in sp  # only with send_seed (needs a deterministic server)


def test_stop_token_is_kept_in_the_output():
    params = SamplingParams(max_new_tokens=10, stop_token_ids=(151645,))
    with StandIn() as server:
        sampler = fast(server.url)
        [result] = asyncio.run(using(sampler, sampler.generate([[5]], params)))
    assert result.token_ids == [*standin_tokens([5], STOP_AT), 151645]
    assert len(result.logprobs) == 3 and result.finish_reason == "stop"


def test_seeds_are_sent_per_row_when_enabled():
    params = SamplingParams(max_new_tokens=2, seed=100)
    with StandIn() as server:
        sampler = fast(server.url, send_seed=True)
        asyncio.run(using(sampler, sampler.generate([[1], [2]], params)))
    seeds = {b["input_ids"][0]: b["sampling_params"]["sampling_seed"] for _, b in server.log}
    assert seeds == {1: 100, 2: 101}


def test_dropped_connections_are_retried():
    with StandIn() as server:
        server.drop = 2
        sampler = fast(server.url, retries=3)
        [result] = asyncio.run(
            using(sampler, sampler.generate([[9]], SamplingParams(max_new_tokens=3)))
        )
    assert result.token_ids == standin_tokens([9], 3)
    assert server.paths() == ["/generate"] * 3


def test_retries_are_bounded_then_a_clear_error():
    with StandIn() as server:
        server.drop = 10
        sampler = fast(server.url, retries=2)
        with pytest.raises(ConnectionError, match="after 3 attempts"):
            asyncio.run(using(sampler, sampler.generate([[9]], SamplingParams(max_new_tokens=3))))
    assert server.paths() == ["/generate"] * 3


def test_server_errors_are_retried_but_client_errors_are_not():
    with StandIn() as server:
        server.status = [503, 502]
        sampler = fast(server.url, retries=2)
        [result] = asyncio.run(
            using(sampler, sampler.generate([[3]], SamplingParams(max_new_tokens=2)))
        )
        assert result.token_ids == standin_tokens([3], 2)
        server.log.clear()
        server.status = [400]
        sampler = fast(server.url, retries=2)
        with pytest.raises(SGLangError, match="HTTP 400"):
            asyncio.run(using(sampler, sampler.generate([[3]], SamplingParams(max_new_tokens=2))))
        assert server.paths() == ["/generate"]


def test_a_response_without_output_token_logprobs_is_rejected():
    with StandIn() as server:
        server.malformed = True
        sampler = fast(server.url)
        with pytest.raises(SGLangError, match="output_token_logprobs"):
            asyncio.run(using(sampler, sampler.generate([[3]], SamplingParams(max_new_tokens=2))))


def test_health_check():
    with StandIn() as server:
        sampler = fast(server.url)
        assert asyncio.run(using(sampler, sampler.health())) is True
        url = server.url
    sampler = fast(url)
    assert asyncio.run(using(sampler, sampler.health())) is False
    with pytest.raises(TimeoutError, match=url):
        asyncio.run(using(sampler, sampler.wait_healthy(timeout=0.2, interval=0.05)))


@pytest.fixture(scope="module")
def tiny_policy():
    from dr_jax.models import ModelConfig, init_policy

    return init_policy(ModelConfig.tiny(vocab_size=512), seed=0)


def test_weight_sync_writes_bf16_then_pause_update_continue_and_verifies(tiny_policy, tmp_path):
    with StandIn() as server:
        sampler = fast(server.url)
        timings = asyncio.run(using(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=7)))
        assert server.weight_version == "7"
    assert server.paths() == [
        "/pause_generation",
        "/update_weights_from_disk",
        "/continue_generation",
        "/get_model_info",
    ]
    update = server.log[1][1]
    assert update["model_path"] == str(tmp_path) and update["weight_version"] == "7"
    assert update["abort_all_requests"] is False
    shards = list(tmp_path.glob("*.safetensors"))
    assert shards and all(safetensors_dtypes(s) == {"BF16"} for s in shards)
    assert set(timings) == {"save", "load"}


def test_failed_update_raises_and_still_resumes_generation(tiny_policy, tmp_path):
    with StandIn() as server:
        server.update_ok = False
        sampler = fast(server.url)
        with pytest.raises(SGLangError, match="injected failure"):
            asyncio.run(using(sampler, sampler.sync_weights(tiny_policy, tmp_path, step=1)))
        assert not server.paused and server.weight_version == "default"
    assert server.paths()[-1] == "/continue_generation"


def test_an_update_that_did_not_take_is_detected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with StandIn() as server:
        server.apply_version = False
        sampler = fast(server.url)
        with pytest.raises(SGLangError, match="did not take"):
            asyncio.run(using(sampler, sampler.update_weights_from_disk(tmp_path, 3)))


def test_server_command_has_the_rollout_flags():
    command = sglang_server_command("/ckpt", port=31000, tp=2, deterministic=True)
    assert command[1:3] == ["-m", "sglang.launch_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model-path"] == "/ckpt" and flags["--port"] == "31000"
    assert flags["--tp-size"] == "2" and flags["--dtype"] == "bfloat16"
    assert "--enable-deterministic-inference" in command


def test_parity_check_flags_a_server_whose_logprobs_are_not_the_policys(tmp_path, capsys):
    """The stand-in's log-probs are made up, so the GPU-host parity command must fail on it."""
    from dr_jax.models import ModelConfig, init_policy, save_pretrained

    save_pretrained(init_policy(ModelConfig.tiny(vocab_size=2048), seed=0), tmp_path)
    with StandIn() as server:
        argv = ["parity", "--url", server.url, "--checkpoint", str(tmp_path), "--prompts", "2"]
        code = main([*argv, "--max-new-tokens", "4"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["ok"] and report["max_abs_logprob_gap"] > 1.0
    assert len([p for p in server.paths() if p == "/generate"]) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_server_waits_until_healthy_and_reports_early_exit(tmp_path):
    port = free_port()
    process = start_sglang_server([sys.executable, __file__, str(port)], f"http://127.0.0.1:{port}")
    try:
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait()
    log = tmp_path / "server.log"
    crash = [sys.executable, "-c", "import sys; print('no GPU found'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)code 3.*no GPU found"):
        start_sglang_server(crash, f"http://127.0.0.1:{free_port()}", log_path=log)


if __name__ == "__main__":  # the stand-in as a process, for start_sglang_server
    with StandIn(int(sys.argv[1])) as standin:
        threading.Event().wait()
