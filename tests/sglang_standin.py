"""A loopback stand-in for an SGLang engine, held to what the real server checks.

SGLang needs a GPU, so the client's tests talk to this: a real HTTP server on 127.0.0.1 that
speaks SGLang's native JSON and refuses what SGLang refuses, read from its source (0.5.5, the
client's floor; 0.5.23 where said):

- `/generate`: request keys (`GenerateReqInput`'s fields; the real server ignores an unknown
  top-level key, here it is refused), sampling keys (`SamplingParams(**kwargs)`: an unknown one
  is a TypeError, a 500 on 0.5.5 and a 400 "unknown field" on 0.5.23; here a 400), types
  (0.5.23's contract: an int is no float), ranges (`SamplingParams.verify`), input ids inside
  the vocabulary, and the lengths: `TokenizerManager._validate_one_request` refuses
  prompt >= context length and prompt + max_new_tokens >= context length (400, its messages),
  the scheduler refuses prompt >= max_req_input_len (400) and clips max_new_tokens to
  max_req_len - prompt - 1. While paused, a request waits for `/continue_generation`.
- `/health`: 503 while starting and while paused (0.5.5 runs a one-token generation, which
  waits for the pause to end, and answers 503 after 20 s; here at once), else 200.
- `/update_weights_from_disk`: the directory's tensor names and shapes must be the served
  model's (the real loader fails on an unknown name or a shape, and rolls back; it would let a
  missing tensor keep its old value, which is refused here); failure is a 400 with
  `success: false`; success sets `weight_version`.
- `/get_server_info` (version, max_req_input_len, ...) and `/get_model_info` (weight_version);
  with `new_routes` also `/server_info` and `/model_info`, as 0.5.23 serves them.

Its tokens are made up but deterministic: `standin_tokens(input_ids, n, seed)`, the first stop
id as the third token when stop ids are given (kept in the log-probs, trimmed from `output_ids`
unless `no_stop_trim`, as SGLang does). Injections: `refuse(seconds)` and `outage_at(path, n,
seconds)` (the port refuses connections, then the engine restarts with its original weights and
is "starting" for `start_seconds`), `abort_rate` (that share of `/generate` requests finish
with an abort), `drop` and `status` (the next POSTs closed unanswered or answered with a code),
`mangle` (edits each response's meta_info), `apply_version=False` (an update that keeps the old
version). `Router` stands for SGLang's router: it forwards `/generate`, has no weight routes,
and its `/health` is always 200.
"""

from __future__ import annotations

import itertools
import json
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

STOP_AT = 2  # the stand-in emits the first stop id as its third token
DEFAULT_SEED = 42  # SamplingParams.sampling_seed's default
QWEN_VOCAB = 151_936

REQUEST_KEYS = {
    "text", "input_ids", "input_embeds", "image_data", "video_data", "audio_data",
    "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
    "token_ids_logprob", "return_text_in_logprobs", "stream", "log_metrics",
    "return_hidden_states", "modalities", "session_params", "lora_path", "lora_id",
    "custom_logit_processor", "bootstrap_host", "bootstrap_port", "bootstrap_room",
    "bootstrap_pair_key", "validation_time", "data_parallel_rank", "background",
    "conversation_id", "priority", "extra_key", "no_logs", "custom_labels", "return_bytes",
    "return_entropy", "rid", "http_worker_ipc",
}  # fmt: skip
"""GenerateReqInput's fields in SGLang 0.5.5 (managers/io_struct.py)."""

INT, FLOAT, BOOL = (int,), (int, float), (bool,)
STRS = (str, list)
SAMPLING_KEYS: dict[str, tuple[type, ...]] = {
    "max_new_tokens": INT, "stop": STRS, "stop_token_ids": (list,), "stop_regex": STRS,
    "temperature": FLOAT, "top_p": FLOAT, "top_k": INT, "min_p": FLOAT,
    "frequency_penalty": FLOAT, "presence_penalty": FLOAT, "repetition_penalty": FLOAT,
    "min_new_tokens": INT, "n": INT, "json_schema": (str,), "regex": (str,), "ebnf": (str,),
    "structural_tag": (str,), "ignore_eos": BOOL, "skip_special_tokens": BOOL,
    "spaces_between_special_tokens": BOOL, "no_stop_trim": BOOL, "custom_params": (dict,),
    "stream_interval": INT, "logit_bias": (dict,), "sampling_seed": INT,
}  # fmt: skip
"""SamplingParams.__init__'s keywords in SGLang 0.5.5 (sampling/sampling_params.py), with the
JSON types 0.5.23's contract accepts (None is accepted for each, as the defaults)."""

UPDATE_KEYS = {
    "model_path", "load_format", "abort_all_requests", "weight_version", "is_async",
    "torch_empty_cache", "keep_pause", "recapture_cuda_graph", "token_step", "flush_cache",
}  # fmt: skip
"""UpdateWeightFromDiskReqInput's fields (0.5.5; flush_cache from later releases)."""

PAUSE_MODES = ("abort", "retract", "in_place")  # PauseGenerationReqInput.mode (0.5.23)


class BadRequest(ValueError):
    """What SGLang answers with a 400 {"error": {"message": ...}}."""


def standin_tokens(input_ids: Sequence[int], n: int, seed: int = DEFAULT_SEED) -> list[int]:
    return [(sum(input_ids) + seed + 7 * i) % 1000 + 1000 for i in range(n)]


def safetensors_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} over a directory's *.safetensors headers (8-byte length, JSON)."""
    shapes = {}
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def check_sampling(sp: dict) -> None:
    """SamplingParams(**sp) then .verify(), as 0.5.5 builds and checks them (types: 0.5.23)."""
    for key, value in sp.items():
        if key not in SAMPLING_KEYS:
            raise BadRequest(f"unknown field `{key}` in sampling_params")
        kinds = SAMPLING_KEYS[key]
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (wrong_bool or not isinstance(value, kinds)):
            raise BadRequest(f"sampling_params.{key}: expected {kinds[-1].__name__}, got {value!r}")
    get = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "min_new_tokens": 0,
        "max_new_tokens": 128,
        "sampling_seed": DEFAULT_SEED,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
    } | sp
    temperature, top_k = get["temperature"], get["top_k"]
    if 0 <= temperature < 1e-6:  # greedy: top_k = 1
        temperature, top_k = 1.0, 1
    if top_k == -1:
        top_k = 1 << 30
    if temperature < 0.0:
        raise BadRequest(f"temperature must be non-negative, got {temperature}.")
    if not 0.0 < get["top_p"] <= 1.0:
        raise BadRequest(f"top_p must be in (0, 1], got {get['top_p']}.")
    if not 0.0 <= get["min_p"] <= 1.0:
        raise BadRequest(f"min_p must be in [0, 1], got {get['min_p']}.")
    if top_k < 1:
        raise BadRequest(f"top_k must be -1 (disable) or at least 1, got {get['top_k']}.")
    for key, low, high in (("frequency_penalty", -2.0, 2.0), ("presence_penalty", -2.0, 2.0),
                           ("repetition_penalty", 0.0, 2.0)):  # fmt: skip
        if not low <= get[key] <= high:
            raise BadRequest(f"{key} must be in [{low:g}, {high:g}], got {get[key]}.")
    max_new, min_new = get["max_new_tokens"], get["min_new_tokens"]
    if min_new < 0:
        raise BadRequest(f"min_new_tokens must be in [0, max_new_tokens], got {min_new}.")
    if max_new is not None and (max_new < 0 or min_new > max_new):
        raise BadRequest(f"max_new_tokens must be at least 0 and min_new_tokens, got {max_new}.")
    if get["sampling_seed"] is None:
        raise BadRequest("sampling_seed should not be None")


class StandIn:
    """One stand-in SGLang engine on 127.0.0.1; `with StandIn(model_dir) as engine: ...`."""

    def __init__(
        self,
        model: Path | None = None,
        *,
        port: int = 0,
        version: str = "0.5.5",
        context_length: int | None = None,
        kv_tokens: int = 1 << 20,
        start_seconds: float = 0.0,
        abort_rate: float = 0.0,
        new_routes: bool = False,
    ) -> None:
        config = json.loads((model / "config.json").read_text()) if model else {}
        self.model = model
        self.shapes = safetensors_shapes(model) if model else {}
        self.vocab_size = config.get("vocab_size", QWEN_VOCAB)
        self.context_length_arg = context_length  # --context-length (None: the model's)
        self.context_length = context_length or config.get("max_position_embeddings", 32768)
        self.max_total_num_tokens = kv_tokens
        self.max_req_len = min(self.context_length - 1, kv_tokens - 1)
        self.max_req_input_len = self.max_req_len - 5  # tp_worker.py
        self.version = version
        self.start_seconds = start_seconds
        self.abort_rate = abort_rate
        self.new_routes = new_routes
        self.log: list[tuple[str, dict | None]] = []
        self.aborted = 0
        self.drop = 0
        self.status: list[int] = []
        self.mangle: Callable[[dict], None] | None = None
        self.apply_version = True
        self._outage: tuple[str, int, float] | None = None
        self._generated = 0
        self._cond = threading.Condition()
        self._port = port
        self._http: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None
        self._restart()

    # ------------------------------------------------------------------------ life cycle

    def _restart(self) -> None:
        """(Re)start serving on the same port, as a fresh engine: original weights, unpaused,
        starting for `start_seconds`."""
        with self._cond:
            self.weight_version = "default"
            self.model_path = str(self.model or "/models/standin")
            self.paused = False
            self.started = time.monotonic()
            self._cond.notify_all()
        self._http = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._http.standin = self  # type: ignore[attr-defined]
        self._port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def _stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.log]

    def refuse(self, seconds: float) -> None:
        """An outage: connections are refused for `seconds`, then the engine restarts."""
        self._stop()
        self._timer = threading.Timer(seconds, self._restart)
        self._timer.daemon = True
        self._timer.start()

    def outage_at(self, path: str, nth: int, seconds: float) -> None:
        """The `nth` request to `path` (1-based) is dropped and starts a `refuse(seconds)`."""
        self._outage = (path, nth, seconds)

    def outage_starts(self, path: str) -> bool:
        """Whether this request to `path` is the one `outage_at` named (the outage has then
        begun: the port is closed before the client sees its connection dropped)."""
        if self._outage is None or self._outage[0] != path:
            return False
        _, nth, seconds = self._outage
        if self.paths().count(path) != nth:
            return False
        self._outage = None
        self.refuse(seconds)
        return True

    # ------------------------------------------------------------------------- handlers

    def get(self, path: str) -> tuple[int, Any]:
        if path == "/health":
            starting = time.monotonic() - self.started < self.start_seconds
            return (503 if starting or self.paused else 200), None
        if path == "/get_model_info" or (self.new_routes and path == "/model_info"):
            return 200, {
                "model_path": self.model_path,
                "tokenizer_path": self.model_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": self.weight_version,
            }
        if path == "/get_server_info" or (self.new_routes and path == "/server_info"):
            return 200, {
                "model_path": self.model_path,
                "context_length": self.context_length_arg,
                "status": "ready",
                "max_total_num_tokens": self.max_total_num_tokens,
                "max_req_input_len": self.max_req_input_len,
                "weight_version": self.weight_version,
                "version": self.version,
            }
        return 404, {"detail": "Not Found"}

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        handler = {
            "/generate": self.generate,
            "/pause_generation": self.pause,
            "/continue_generation": self.resume,
            "/update_weights_from_disk": self.update,
        }.get(path)
        if handler is None:
            return 404, {"detail": "Not Found"}
        try:
            return 200, handler(body)
        except UpdateFailed as err:
            return 400, {"success": False, "message": str(err), "num_paused_requests": 0}
        except BadRequest as err:
            return 400, {"error": {"message": str(err)}}

    def generate(self, body: dict) -> dict:
        if not isinstance(body, dict) or set(body) - REQUEST_KEYS:
            raise BadRequest(f"unknown request fields {sorted(set(body) - REQUEST_KEYS)}")
        ids = body.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            raise BadRequest("input_ids must be a non-empty list of token ids")
        if not all(0 <= i < self.vocab_size for i in ids):
            raise BadRequest(
                f"The input_ids contains values outside the vocab ({self.vocab_size})."
            )
        sp = body.get("sampling_params") or {}
        n, max_new = len(ids), sp.get("max_new_tokens")  # absent: unchecked here, 128 below
        if n >= self.context_length:  # TokenizerManager._validate_one_request
            raise BadRequest(f"The input ({n} tokens) is longer than the model's context length "
                             f"({self.context_length} tokens).")  # fmt: skip
        if isinstance(max_new, int) and max_new + n >= self.context_length:
            raise BadRequest(
                "Requested token count exceeds the model's maximum context length of "
                f"{self.context_length} tokens. You requested a total of {max_new + n} tokens: "
                f"{n} tokens from the input messages and {max_new} tokens for the completion. "
                "Please reduce the number of tokens in the input messages or the completion to "
                "fit within the limit."
            )
        check_sampling(sp)
        if n >= self.max_req_input_len:  # the scheduler's validate_input_length
            raise BadRequest(
                f"Input length ({n} tokens) exceeds the maximum allowed length "
                f"({self.max_req_input_len} tokens). Use a shorter input or enable "
                "--allow-auto-truncate."
            )
        with self._cond:
            self._cond.wait_for(lambda: not self.paused)
            count = self._generated = self._generated + 1
            abort = int(count * self.abort_rate) > int((count - 1) * self.abort_rate)
            self.aborted += abort
        limit = self.max_req_len - n - 1  # Scheduler.init_req_max_new_tokens
        asked = sp.get("max_new_tokens", 128)
        max_new = limit if asked is None else min(asked, limit)
        tokens = standin_tokens(ids, max_new, sp.get("sampling_seed", DEFAULT_SEED))
        finish: dict = {"type": "length", "length": max_new}
        stops = sp.get("stop_token_ids") or []
        if stops and len(tokens) > STOP_AT:
            tokens = [*tokens[:STOP_AT], stops[0]]
            finish = {"type": "stop", "matched": stops[0]}
        if abort:
            tokens = tokens[:1]
            finish = {"type": "abort", "message": "Abort in waiting queue", "status_code": None,
                      "err_type": None}  # fmt: skip
        pairs = [[-(i + 1) / 10, t, None] for i, t in enumerate(tokens)]
        trimmed = finish["type"] == "stop" and not sp.get("no_stop_trim", False)
        meta = {
            "id": "standin",
            "finish_reason": finish,
            "prompt_tokens": n,
            "weight_version": self.weight_version,
            "total_retractions": 0,
            "completion_tokens": len(tokens),
            "cached_tokens": 0,
        }
        if body.get("return_logprob"):
            meta["output_token_logprobs"] = pairs
        if self.mangle is not None:
            self.mangle(meta)
        return {"text": "", "output_ids": tokens[:-1] if trimmed else tokens, "meta_info": meta}

    def pause(self, body: Any) -> dict:
        mode = body.get("mode", "abort") if isinstance(body, dict) else "abort"
        if mode not in PAUSE_MODES:
            raise BadRequest(f"mode must be one of {PAUSE_MODES}, got {mode!r}")
        with self._cond:
            self.paused = True
        return {"message": "Generation paused successfully.", "status": "ok"}

    def resume(self, body: Any) -> dict:
        with self._cond:
            self.paused = False
            self._cond.notify_all()
        return {"message": "Generation continued successfully.", "status": "ok"}

    def update(self, body: Any) -> dict:
        if not isinstance(body, dict) or set(body) - UPDATE_KEYS:
            raise BadRequest(f"unknown update fields {sorted(set(body) - UPDATE_KEYS)}")
        path, version = body.get("model_path"), body.get("weight_version")
        if not isinstance(path, str) or not (version is None or isinstance(version, str)):
            raise BadRequest("model_path must be a string, weight_version a string or null")
        problem = self.check_weights(Path(path))
        if problem:
            raise UpdateFailed(problem)
        self.model_path = path
        message = "Succeeded to update model weights."
        if version is not None and self.apply_version:
            self.weight_version = version
            message += f" Weight version updated to {version}."
        return {"success": True, "message": message, "num_paused_requests": 0}

    def check_weights(self, directory: Path) -> str | None:
        """Why the directory cannot be loaded as the served model (None: it can)."""
        if self.model is None:
            return "Failed to get weights iterator: the stand-in serves no model (StandIn(model))."
        shapes = safetensors_shapes(directory) if directory.is_dir() else {}
        if not shapes:
            return f"Failed to get weights iterator: no safetensors in {directory}."
        unknown = sorted(set(shapes) - set(self.shapes))
        missing = sorted(set(self.shapes) - set(shapes))
        wrong = sorted(k for k in set(shapes) & set(self.shapes) if shapes[k] != self.shapes[k])
        if unknown or missing or wrong:
            return (f"Failed to update weights: unknown {unknown[:3]}, missing {missing[:3]}, "
                    f"shape mismatch {wrong[:3]}.\nRolling back to original weights.")  # fmt: skip
        return None


class UpdateFailed(BadRequest):
    """A load that failed: 400 {"success": false, "message": ...}."""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    @property
    def standin(self) -> StandIn:
        return self.server.standin  # type: ignore[attr-defined]

    def reply(self, status: int, body: Any) -> None:
        send_json(self, status, b"" if body is None else json.dumps(body).encode())

    def do_GET(self) -> None:
        self.standin.log.append((self.path, None))
        self.reply(*self.standin.get(self.path))

    def do_POST(self) -> None:
        engine = self.standin
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        engine.log.append((self.path, body))
        if engine.outage_starts(self.path):
            self.close_connection = True
            return
        if engine.drop:
            engine.drop -= 1
            self.close_connection = True
            return
        if engine.status:
            self.reply(engine.status.pop(0), {"error": {"message": "injected"}})
            return
        self.reply(*engine.post(self.path, body))


def send_json(handler: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    """One JSON response, with its length (the client keeps the connection alive)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Router:
    """SGLang's router in front of engines: `/generate` is forwarded round-robin, `/health` is
    liveness (always 200), and there are no weight routes (404)."""

    def __init__(self, engines: Sequence[str]) -> None:
        self.engines = itertools.cycle(engines)
        self.log: list[str] = []
        router = self

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                router.log.append(self.path)
                send_json(self, 200 if self.path == "/health" else 404, b"{}")

            def do_POST(self) -> None:
                router.log.append(self.path)
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/generate":
                    send_json(self, 404, b'{"detail": "Not Found"}')
                    return
                out = httpx.post(next(router.engines) + self.path, content=data, timeout=60)
                send_json(self, out.status_code, out.content)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"


if __name__ == "__main__":  # an engine as a process, for start_sglang_server's test
    with StandIn(port=int(sys.argv[1])):
        threading.Event().wait()
