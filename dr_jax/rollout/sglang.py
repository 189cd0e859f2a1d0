"""SGLang servers as the sampler: token ids over HTTP, and weight sync through the disk.

Requests use SGLang's native `/generate` with `input_ids` (token-in), and tokens come back from
`meta_info.output_token_logprobs` as (log-prob, id) pairs (token-out, aligned by construction).
`no_stop_trim` keeps the stop token, so a sampled turn ends with the chat template's end-of-turn
id exactly as the trainer sees it. Each request carries its `sampling_seed` (the agent derives
one per run seed, step, question, sample and turn), so a server started with
--enable-deterministic-inference samples the same run twice.

Several engines: generation goes round-robin over them (or through an SGLang router, which has
no weight routes), and every weight sync goes to each engine: `pause_generation` ->
`update_weights_from_disk` (weight_version = step) -> `continue_generation`, then `/model_info`
must report that version; every later response must carry it too (an engine that restarted
with its original weights is caught). An engine that refuses connections during a sync is
waited for (health polling, up to sync_timeout) and the sync redone; a 4xx is never retried.

At connect the client reads each engine's `/server_info` (`/get_server_info` on older
releases): the version (at least MIN_VERSION) and `max_req_input_len`, from which each
request's max_new_tokens is clipped so the server never refuses it for its length.

Log-prob parity, on a GPU host (not runnable here): serve a checkpoint in float32 and compare
what the server samples with the trainer's log-probs of the same tokens,

    python -m sglang.launch_server --model-path CKPT --dtype float32 --port 30000 &
    python -m dr_jax.rollout.sglang parity --url http://127.0.0.1:30000 --checkpoint CKPT

which prints the largest |delta| and exits non-zero above --tolerance (1e-4; in bf16 expect
about 1e-2). It samples at T = 1 over the full vocabulary (top_p = 1, top_k = -1), the RL setting.
"""

import asyncio
import dataclasses
import itertools
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from dr_jax.config import SGLangConfig
from dr_jax.retry import exponential, retry
from dr_jax.rollout.sampler import ContextFull, SampleResult, SamplingParams

MIN_VERSION = (0, 5, 5)
"""The oldest SGLang the client drives: `sampling_seed` and `weight_version` arrive in 0.5.5
(0.4.x lacks /pause_generation; 0.5.1-0.5.2 reject sampling_seed)."""

SCHEDULER_MARGIN = 5
"""SGLang's scheduler: max_req_input_len = max_req_len - 5, where max_req_len =
min(context length, KV-cache pool) - 1 (tp_worker.py); it refuses a prompt of max_req_input_len
tokens or more and runs at most max_req_len - prompt - 1 new tokens."""

NAN_FINISH = "NaN happened"
"""The `matched` of the stop SGLang writes when it sampled a NaN or out-of-vocabulary id."""

SYNC_ATTEMPTS = 3
"""Weight syncs of one engine, each after waiting for it to be healthy again."""


class SGLangError(RuntimeError):
    """The server answered, but not with what was asked (4xx, malformed body, stale weights)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnsupportedServer(ValueError):
    """The engine is not an SGLang release this client drives."""


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """What the client reads from one engine at connect."""

    max_input: int
    """max_req_input_len: the scheduler refuses prompts this long or longer."""
    model_info: str
    """The engine's model-info route: /model_info, or /get_model_info on older releases."""


def parse_version(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of an SGLang version string ("0.5.5.post1" -> (0, 5, 5))."""
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def new_token_budget(prompt_len: int, max_new_tokens: int, max_input: int) -> int:
    """max_new_tokens clipped so the server runs the request as asked: prompt + new tokens stays
    strictly below its limit (SGLang 0.5.1-0.5.5 refuse equality with a 400). Raises ContextFull
    when the prompt alone reaches `max_input` (max_req_input_len; see SCHEDULER_MARGIN)."""
    if prompt_len >= max_input:
        raise ContextFull(
            f"the prompt ({prompt_len} tokens) reaches the SGLang server's limit "
            f"(max_req_input_len {max_input}): no room for a new token"
        )
    return min(max_new_tokens, max_input + SCHEDULER_MARGIN - 1 - prompt_len)


class SGLangSampler:
    """`Sampler` over SGLang engines (or a router in front of them); also their health checks
    and weight sync."""

    def __init__(self, config: SGLangConfig | None = None) -> None:
        self.config = config or SGLangConfig()
        self.engines = [url.rstrip("/") for url in self.config.engines]
        self._router = self.config.router.rstrip("/")
        self._next_engine = itertools.cycle(self.engines)
        self._info: dict[str, EngineInfo] = {}
        self.weight_version: str | None = None
        """The version every response must carry (None until the first weight sync)."""
        self._client: httpx.AsyncClient | None = None
        self._connecting: asyncio.Lock | None = None

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
        self._connecting = None  # bound to the loop that used it

    async def __aenter__(self) -> "SGLangSampler":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------- HTTP

    async def _request(self, method: str, url: str, body: dict | None = None) -> httpx.Response:
        """One exchange with bounded retries on refused or dropped connections and 5xx; a 4xx
        raises SGLangError at once; ConnectionError after the last attempt."""

        async def once(attempt: int) -> httpx.Response:
            try:
                response = await self.client.request(method, url, json=body)
            except httpx.TransportError as err:
                raise ConnectionError(f"{type(err).__name__}: {err}") from err
            if response.status_code >= 500:
                raise ConnectionError(f"HTTP {response.status_code}: {response.text[:200]}")
            if response.status_code >= 400:
                raise SGLangError(
                    f"{url} -> HTTP {response.status_code}: {response.text[:500]}",
                    response.status_code,
                )
            return response

        attempts = self.config.retries + 1
        try:
            return await retry(
                once,
                attempts=attempts,
                retryable=lambda e: isinstance(e, ConnectionError),
                wait=exponential(self.config.backoff),
            )
        except ConnectionError as failure:
            raise ConnectionError(
                f"SGLang server {url} failed after {attempts} attempts ({failure}); check that "
                "it is running (start_sglang_server) and the URL"
            ) from None

    async def _json(self, method: str, url: str, body: dict | None = None) -> Any:
        response = await self._request(method, url, body)
        try:
            return response.json()
        except ValueError as err:
            raise SGLangError(f"{url} returned non-JSON: {response.text[:200]!r}") from err

    async def _first_route(self, engine: str, paths: Sequence[str]) -> tuple[str, Any]:
        """(path, JSON) of the first of `paths` the engine serves (routes renamed across
        releases answer 404 where they are absent)."""
        for path in paths:
            try:
                return path, await self._json("GET", engine + path)
            except SGLangError as err:
                if err.status != 404:
                    raise
        raise UnsupportedServer(
            f"{engine} serves none of {list(paths)}: not an SGLang server, or older than "
            f"{'.'.join(map(str, MIN_VERSION))}"
        )

    # ----------------------------------------------------------------------------- connect

    async def connect(self) -> None:
        """Once: waits for every engine to be healthy, checks its version and reads its
        limits. Called by the first request; the launchers call it up front, so that a wrong
        server stops the run before any rollout."""
        if self._info:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._info:
                return
            await self.wait_healthy()
            infos = await asyncio.gather(*(self._engine_info(e) for e in self.engines))
            self._info = dict(zip(self.engines, infos, strict=True))

    async def _engine_info(self, engine: str) -> EngineInfo:
        _, server = await self._first_route(engine, ("/server_info", "/get_server_info"))
        version = str(server.get("version", ""))
        found = parse_version(version)
        if found is None or found < MIN_VERSION:
            minimum = ".".join(map(str, MIN_VERSION))
            raise UnsupportedServer(
                f"SGLang at {engine} is version {version or 'unknown'}; dr_jax needs "
                f"sglang>={minimum} (weight versions, sampling seeds): pip install "
                f"'sglang>={minimum}' on the server host"
            )
        max_input = server.get("max_req_input_len")
        if not isinstance(max_input, int) or max_input < 1:
            raise SGLangError(f"{engine}/server_info has no max_req_input_len: {max_input!r}")
        model_route, _ = await self._first_route(engine, ("/model_info", "/get_model_info"))
        return EngineInfo(max_input, model_route)

    @property
    def max_input(self) -> int:
        """The smallest max_req_input_len of the engines (any of them may serve a request)."""
        return min(info.max_input for info in self._info.values())

    # ---------------------------------------------------------------------------- sampling

    def request_body(self, prompt: Sequence[int], params: SamplingParams, row: int) -> dict:
        """The `/generate` body for one prompt (rl_systems.md §2.2); needs `connect` first."""
        budget = new_token_budget(len(prompt), params.max_new_tokens, self.max_input)
        sampling: dict[str, Any] = {
            "max_new_tokens": budget,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "stop_token_ids": list(params.stop_token_ids),
            "stop": list(params.stop),
            "no_stop_trim": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        if params.seed is not None:
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
        await self.connect()
        return list(
            await asyncio.gather(
                *(self._generate_one(prompt, params, row) for row, prompt in enumerate(prompts))
            )
        )

    async def _generate_one(
        self, prompt: Sequence[int], params: SamplingParams, row: int
    ) -> SampleResult:
        base = self._router or next(self._next_engine)
        out = await self._json("POST", base + "/generate", self.request_body(prompt, params, row))
        return parse_generate_response(out, self.weight_version)

    # ------------------------------------------------------------------ health and weights

    async def health(self, engines: Sequence[str] = ()) -> bool:
        """True when the `/health` of every engine (default: all) answers 200, without retries.
        SGLang answers 503 while it starts and while generation is paused."""
        return all(await asyncio.gather(*(self._healthy(e) for e in engines or self.engines)))

    async def _healthy(self, engine: str) -> bool:
        try:
            response = await self.client.get(engine + "/health", timeout=10.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def wait_healthy(
        self, timeout: float | None = None, interval: float = 1.0, engines: Sequence[str] = ()
    ) -> None:
        """Polls `health(engines)` until it holds (up to `timeout`, default sync_timeout);
        raises TimeoutError naming the engines that did not answer."""
        timeout = self.config.sync_timeout if timeout is None else timeout
        engines = engines or self.engines
        deadline = time.monotonic() + timeout
        while not await self.health(engines):
            if time.monotonic() > deadline:
                down = [e for e in engines if not await self._healthy(e)]
                raise TimeoutError(f"SGLang engines {down} not healthy after {timeout} s")
            await asyncio.sleep(interval)

    def expect_version(self, version: int | str) -> None:
        """Responses must carry `version` from now on (another process pushed it)."""
        self.weight_version = str(version)

    async def update_weights_from_disk(self, model_path: str | Path, version: int | str) -> None:
        """Loads `model_path` into every engine as weight_version `version` (see the module
        doc); raises SGLangError when an engine refuses it or does not report the version."""
        await self.connect()
        version = str(version)
        await asyncio.gather(
            *(self._sync_engine(e, str(model_path), version) for e in self.engines)
        )
        self.weight_version = version

    async def _sync_engine(self, engine: str, model_path: str, version: str) -> None:
        """pause -> update -> continue -> check, redone after the engine is healthy again when
        it refused or dropped the connection (up to SYNC_ATTEMPTS)."""
        await retry(
            lambda attempt: self._load(engine, model_path, version),
            attempts=SYNC_ATTEMPTS,
            retryable=lambda e: isinstance(e, ConnectionError),
            wait=lambda attempt, e: self.wait_healthy(engines=[engine]),
        )

    async def _load(self, engine: str, model_path: str, version: str) -> None:
        await self._json("POST", engine + "/pause_generation", {"mode": self.config.pause_mode})
        try:
            await self._json(
                "POST",
                engine + "/update_weights_from_disk",
                {
                    "model_path": model_path,
                    "weight_version": version,
                    "flush_cache": True,
                    "abort_all_requests": False,
                },
            )
        finally:
            await self._json("POST", engine + "/continue_generation", {})
        info = await self._json("GET", engine + self._info[engine].model_info)
        if info.get("weight_version") != version:
            raise SGLangError(
                f"weight sync of {engine} to version {version} did not take: it reports "
                f"{info.get('weight_version')!r}"
            )

    @staticmethod
    async def write_weights(policy: Any, directory: str | Path) -> Path:
        """`policy` as bf16 HF safetensors in `directory` (overwritten each step), the form the
        server loads; returns the directory. On several processes every one calls it (it
        gathers the parameters) and process 0 writes."""
        import jax.numpy as jnp

        from dr_jax.models import save_pretrained

        return await asyncio.to_thread(save_pretrained, policy, directory, dtype=jnp.bfloat16)

    async def sync_weights(self, policy: Any, directory: str | Path, step: int) -> dict[str, float]:
        """`write_weights`, then loads them into the engines as weight_version = step. Returns
        seconds per phase. One process (several: `write_weights` on all, then
        `update_weights_from_disk` on one)."""
        started = time.perf_counter()
        path = await self.write_weights(policy, directory)
        saved = time.perf_counter()
        await self.update_weights_from_disk(path, step)
        return {"save": saved - started, "load": time.perf_counter() - saved}


def parse_generate_response(out: Any, weight_version: str | None = None) -> SampleResult:
    """A `/generate` response -> SampleResult, from `meta_info.output_token_logprobs`.

    An abort (a pause, a scheduler abort), a missing finish and the stop SGLang writes after a
    NaN all come back as "abort" with no tokens: the infrastructure ended the turn. The log-prob
    list must hold `completion_tokens` entries, and the response must carry `weight_version`
    when one is given (raises SGLangError otherwise)."""
    try:
        meta = out["meta_info"]
        finish = meta["finish_reason"]
        kind = finish.get("type") if isinstance(finish, dict) else None
        if kind not in ("stop", "length") or finish.get("matched") == NAN_FINISH:
            return SampleResult([], [], "abort")
        pairs = meta["output_token_logprobs"]
        token_ids = [int(entry[1]) for entry in pairs]
        logprobs = [float(entry[0]) for entry in pairs]
        completion_tokens = int(meta["completion_tokens"])
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise SGLangError(
            f"malformed /generate response ({type(err).__name__}: {err}); the server must "
            "return meta_info.output_token_logprobs (return_logprob=true)"
        ) from err
    if len(pairs) != completion_tokens:
        raise SGLangError(
            f"/generate returned {len(pairs)} log-probs for {completion_tokens} completion "
            "tokens: tokens and log-probs would not line up"
        )
    if weight_version is not None and meta.get("weight_version") != weight_version:
        raise SGLangError(
            f"/generate answered with weight_version {meta.get('weight_version')!r}, expected "
            f"{weight_version!r}: an engine serves other weights (restarted since the last sync?)"
        )
    return SampleResult(token_ids, logprobs, kind)


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
    async with SGLangSampler(SGLangConfig(engines=(url,))) as sampler:
        return await sampler_logprob_gap(sampler, policy, rows, params)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m dr_jax.rollout.sglang")
    commands = parser.add_subparsers(dest="command", required=True)
    parity = commands.add_parser("parity", help="server vs trainer log-probs (see module doc)")
    parity.add_argument("--url", default=SGLangConfig().engines[0], help="SGLang engine URL")
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
