"""An SGLang server as the sampler: token ids over HTTP, and weight sync through the disk.

Requests use SGLang's native `/generate` with `input_ids` (token-in), and tokens come back from
`meta_info.output_token_logprobs` as (log-prob, id) pairs (token-out, aligned by construction;
this field exists on every SGLang version). `no_stop_trim` keeps the stop token, so a sampled
turn ends with the chat template's end-of-turn id exactly as the trainer sees it.

Weight sync (disaggregated, any trainer framework): write the policy as HF safetensors in bf16,
then `pause_generation` -> `update_weights_from_disk` (weight_version = step) ->
`continue_generation`, and read `get_model_info` back to check the version took.

Log-prob parity, on a GPU host (not runnable here): serve a checkpoint in float32 and compare
what the server samples with the trainer's log-probs of the same tokens,

    python -m sglang.launch_server --model-path CKPT --dtype float32 --port 30000 &
    python -m dr_jax.rollout.sglang parity --url http://127.0.0.1:30000 --checkpoint CKPT

which prints the largest |delta| and exits non-zero above --tolerance (1e-4; in bf16 expect
about 1e-2). It samples at T = 1 over the full vocabulary (top_p = 1, top_k = -1), the RL setting.
"""

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from dr_jax.retry import exponential, retry
from dr_jax.rollout.sampler import SampleResult, SamplingParams

FINISH_TYPES = {"stop": "stop", "length": "length", "abort": "abort"}


class _Unavailable(Exception):
    """A connection error or a 5xx: worth another attempt."""


class SGLangError(RuntimeError):
    """The server answered, but not with what was asked (4xx, malformed body, failed update)."""


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    """How the client talks to one SGLang server."""

    url: str = "http://127.0.0.1:30000"
    """Base URL of the server (or of an sglang router in front of several)."""
    timeout: float = 600.0
    """Seconds for one HTTP exchange (a long generation included)."""
    retries: int = 3
    """Extra attempts after a connection error or a 5xx, with exponential backoff."""
    backoff: float = 0.5
    """First backoff in seconds; doubles each attempt."""
    max_connections: int = 512
    """Requests in flight at once."""
    send_seed: bool = False
    """Send SamplingParams.seed as `sampling_seed` (reproducible only with the server flag
    --enable-deterministic-inference; older servers reject the field)."""
    pause_mode: str = "abort"
    """`pause_generation` mode before a weight update: abort | retract | in_place."""


class SGLangSampler:
    """`Sampler` over an SGLang server; also its health check and weight sync."""

    def __init__(self, url: str | None = None, config: SGLangConfig | None = None) -> None:
        config = config or SGLangConfig()
        self.config = config if url is None else dataclasses.replace(config, url=url)
        self._base = self.config.url.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Created lazily, inside the event loop that will use it.
        if self._client is None:
            limit = self.config.max_connections
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout,
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> "SGLangSampler":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------- HTTP

    async def _request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One exchange with bounded retries on connection errors and 5xx; raises after."""

        async def once(attempt: int) -> httpx.Response:
            try:
                response = await self.client.request(method, self._base + path, json=body)
            except httpx.TransportError as err:
                raise _Unavailable(f"{type(err).__name__}: {err}") from err
            if response.status_code >= 500:
                raise _Unavailable(f"HTTP {response.status_code}: {response.text[:200]}")
            if response.status_code >= 400:
                raise SGLangError(f"{path} -> HTTP {response.status_code}: {response.text[:500]}")
            return response

        attempts = self.config.retries + 1
        try:
            return await retry(
                once,
                attempts=attempts,
                retryable=lambda e: isinstance(e, _Unavailable),
                wait=exponential(self.config.backoff),
            )
        except _Unavailable as failure:
            raise ConnectionError(
                f"SGLang server {self._base}{path} failed after {attempts} attempts ({failure}); "
                "check that it is running (start_sglang_server) and the URL"
            ) from None

    async def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        response = await self._request(method, path, body)
        try:
            return response.json()
        except ValueError as err:
            raise SGLangError(f"{path} returned non-JSON: {response.text[:200]!r}") from err

    # ---------------------------------------------------------------------------- sampling

    def request_body(self, prompt: Sequence[int], params: SamplingParams, row: int) -> dict:
        """The `/generate` body for one prompt (rl_systems.md §2.2)."""
        sampling: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "stop_token_ids": list(params.stop_token_ids),
            "stop": list(params.stop),
            "no_stop_trim": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if self.config.send_seed and params.seed is not None:
            sampling["sampling_seed"] = params.seed + row
        return {
            "input_ids": list(prompt),
            "sampling_params": sampling,
            "return_logprob": True,
            "logprob_start_len": -1,
        }

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[SampleResult]:
        """One `/generate` request per prompt, all in flight at once."""
        return list(
            await asyncio.gather(
                *(self._generate_one(prompt, params, row) for row, prompt in enumerate(prompts))
            )
        )

    async def _generate_one(
        self, prompt: Sequence[int], params: SamplingParams, row: int
    ) -> SampleResult:
        out = await self._json("POST", "/generate", self.request_body(prompt, params, row))
        return parse_generate_response(out)

    # ------------------------------------------------------------------ health and weights

    async def health(self) -> bool:
        """True when `/health` answers 200 (no retries)."""
        try:
            response = await self.client.get(self._base + "/health", timeout=10.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def wait_healthy(self, timeout: float = 600.0, interval: float = 1.0) -> None:
        """Polls `/health` until it answers; raises TimeoutError naming the URL."""
        deadline = time.monotonic() + timeout
        while not await self.health():
            if time.monotonic() > deadline:
                raise TimeoutError(f"SGLang server at {self._base} not healthy after {timeout} s")
            await asyncio.sleep(interval)

    async def model_info(self) -> dict:
        return await self._json("GET", "/get_model_info")

    async def update_weights_from_disk(self, model_path: str | Path, version: int | str) -> None:
        """pause -> load `model_path` as weight_version `version` -> continue, then check
        `get_model_info` reports that version (raises SGLangError otherwise)."""
        version = str(version)
        await self._json("POST", "/pause_generation", {"mode": self.config.pause_mode})
        try:
            out = await self._json(
                "POST",
                "/update_weights_from_disk",
                {
                    "model_path": str(model_path),
                    "weight_version": version,
                    "flush_cache": True,
                    "abort_all_requests": False,
                },
            )
        finally:
            await self._json("POST", "/continue_generation", {})
        if not out.get("success", False):
            raise SGLangError(f"update_weights_from_disk failed: {out.get('message', out)}")
        reported = (await self.model_info()).get("weight_version")
        if reported != version:
            raise SGLangError(f"weight sync to version {version} did not take: server {reported}")

    @staticmethod
    async def write_weights(policy: Any, directory: str | Path) -> Path:
        """`policy` as bf16 HF safetensors in `directory` (overwritten each step), the form the
        server loads; returns the directory. On several processes every one calls it (it
        gathers the parameters) and process 0 writes."""
        import jax.numpy as jnp

        from dr_jax.models import save_pretrained

        return await asyncio.to_thread(save_pretrained, policy, directory, dtype=jnp.bfloat16)

    async def sync_weights(self, policy: Any, directory: str | Path, step: int) -> dict[str, float]:
        """`write_weights`, then loads them into the server as weight_version = step. Returns
        seconds per phase. One process (several: `write_weights` on all, then
        `update_weights_from_disk` on one)."""
        started = time.perf_counter()
        path = await self.write_weights(policy, directory)
        saved = time.perf_counter()
        await self.update_weights_from_disk(path, step)
        return {"save": saved - started, "load": time.perf_counter() - saved}


def parse_generate_response(out: Any) -> SampleResult:
    """A `/generate` response -> SampleResult, from `meta_info.output_token_logprobs`."""
    try:
        meta = out["meta_info"]
        pairs = meta["output_token_logprobs"]
        finish = meta["finish_reason"]
        token_ids = [int(entry[1]) for entry in pairs]
        logprobs = [float(entry[0]) for entry in pairs]
        kind = finish["type"] if isinstance(finish, dict) else "abort"
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise SGLangError(
            f"malformed /generate response ({type(err).__name__}: {err}); the server must "
            "return meta_info.output_token_logprobs (return_logprob=true)"
        ) from err
    return SampleResult(token_ids, logprobs, FINISH_TYPES.get(kind, "abort"))


def sglang_server_command(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    tp: int = 1,
    dp: int = 1,
    dtype: str = "bfloat16",
    mem_fraction: float = 0.8,
    context_length: int | None = None,
    deterministic: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The `python -m sglang.launch_server` command line for an RL rollout server.

    bf16 weights by default (as the sync writes them); `--mem-fraction-static` leaves room for a
    colocated trainer; `--enable-deterministic-inference` makes seeded sampling reproducible
    and log-probs batch-invariant, at some speed cost.
    """
    command = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(model_path),
        "--host", host,
        "--port", str(port),
        "--tp-size", str(tp),
        "--dp-size", str(dp),
        "--dtype", dtype,
        "--mem-fraction-static", str(mem_fraction),
    ]  # fmt: skip
    if context_length is not None:
        command += ["--context-length", str(context_length)]
    if deterministic:
        command.append("--enable-deterministic-inference")
    return command + list(extra)


def start_sglang_server(
    command: Sequence[str], url: str, timeout: float = 900.0, log_path: str | Path | None = None
) -> subprocess.Popen:
    """Starts `command` (see `sglang_server_command`; needs a GPU host with the [sglang] extra)
    and blocks until `url`/health answers. Raises RuntimeError with the log tail if the process
    exits first, TimeoutError after `timeout` seconds (the process is then killed)."""
    if log_path:
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
    else:
        process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL)  # stderr: ours
    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/health"
    while True:
        if process.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(
                f"SGLang server exited with code {process.returncode} before it was healthy"
                + (f":\n{tail}" if tail else " (pass log_path to see why)")
            )
        try:
            if httpx.get(health, timeout=5.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"SGLang server not healthy at {url} after {timeout} s")
        time.sleep(0.5)


async def logprob_parity(
    url: str, checkpoint: str | Path, prompts: int, max_new_tokens: int, seed: int = 0
) -> float:
    """Largest |server log-prob - trainer log-prob| over `prompts` random-token prompts."""
    import numpy as np

    from dr_jax.models import load_pretrained
    from dr_jax.rollout.sampler import sampler_logprob_gap

    policy = load_pretrained(checkpoint)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, policy.config.vocab_size, (prompts, 32)).tolist()
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    async with SGLangSampler(url) as sampler:
        return await sampler_logprob_gap(sampler, policy, rows, params)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m dr_jax.rollout.sglang")
    commands = parser.add_subparsers(dest="command", required=True)
    parity = commands.add_parser("parity", help="server vs trainer log-probs (see module doc)")
    parity.add_argument("--url", default=SGLangConfig.url, help="SGLang server base URL")
    parity.add_argument("--checkpoint", required=True, help="the HF dir the server serves")
    parity.add_argument("--prompts", type=int, default=8, help="random 32-token prompts")
    parity.add_argument("--max-new-tokens", type=int, default=64)
    parity.add_argument("--tolerance", type=float, default=1e-4, help="largest |delta| allowed")
    args = parser.parse_args(argv)
    gap = asyncio.run(logprob_parity(args.url, args.checkpoint, args.prompts, args.max_new_tokens))
    ok = gap <= args.tolerance
    print(json.dumps({"max_abs_logprob_gap": gap, "tolerance": args.tolerance, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
