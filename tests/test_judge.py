"""The LLM judge against a real OpenAI-compatible stand-in server on 127.0.0.1."""

import asyncio
import json
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dr_jax.judge import Judge, JudgeConfig, JudgeConfigError, parse_judgement


def chat_completion(content: str) -> str:
    """An OpenAI chat-completions response body carrying `content`."""
    return json.dumps(
        {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    )


def verdict_reply(judgement: str, rationale: str = "stand-in") -> tuple[int, str]:
    return 200, chat_completion(json.dumps({"rationale": rationale, "judgement": judgement}))


class OpenAIStandIn:
    """A loopback `/v1/chat/completions` server.

    Each request pops the next scripted `(status, body)` from `script`; once it is empty the
    server judges by `rule(user_prompt) -> "correct" | "incorrect"`. Every request body and
    its headers are kept in `requests`.
    """

    def __init__(self) -> None:
        self.script: deque[tuple[int, str]] = deque()
        self.rule = lambda prompt: "correct"
        self.requests: list[dict] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                standin.requests.append(request)
                if self.path != "/v1/chat/completions":
                    status, text = 404, '{"error": "not found"}'
                elif standin.script:
                    status, text = standin.script.popleft()
                else:
                    status, text = verdict_reply(standin.rule(body["messages"][-1]["content"]))
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> "OpenAIStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def standin() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as server:
        yield server


def judge_once(config: JudgeConfig, question: str, answers: list[str], prediction: str | None):
    async def run():
        async with Judge(config) as judge:
            return await judge.judge(question, answers, prediction)

    return asyncio.run(run())


def fast_config(standin: OpenAIStandIn, **overrides) -> JudgeConfig:
    return JudgeConfig(url=standin.url, model="standin-judge", backoff_s=0.01, **overrides)


def test_judge_sends_question_gold_and_prediction_to_the_configured_model(standin, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gold = ["William Shakespeare"]
    verdict = judge_once(fast_config(standin), "Who wrote Hamlet?", gold, "the Bard")
    assert verdict.correct is True and verdict.source == "judge" and verdict.attempts == 1
    (request,) = standin.requests
    assert request["body"]["model"] == "standin-judge"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    prompt = request["body"]["messages"][-1]["content"]
    assert "Who wrote Hamlet?" in prompt and '["William Shakespeare"]' in prompt
    assert "the Bard" in prompt


def test_judge_says_incorrect_when_the_model_does(standin):
    standin.rule = lambda prompt: "incorrect"
    verdict = judge_once(fast_config(standin), "Capital of France?", ["Paris"], "Lyon")
    assert verdict.correct is False and verdict.score == 0.0 and verdict.source == "judge"


def test_exact_match_and_missing_answers_cost_no_call(standin):
    config = fast_config(standin)
    exact = judge_once(config, "Capital of France?", ["paris", "Paris, France"], "PARIS.")
    assert (exact.correct, exact.source) == (True, "exact_match")
    missing = judge_once(config, "Capital of France?", ["Paris"], None)
    assert (missing.correct, missing.source) == (False, "no_answer")
    assert standin.requests == []


def test_garbage_and_server_errors_are_retried_until_a_usable_reply(standin):
    standin.script.extend(
        [
            (500, '{"error": "overloaded"}'),
            (200, "this is not json"),
            (200, chat_completion("I think it is probably right.")),
            (200, chat_completion('{"rationale": "hmm", "judgement": "maybe"}')),
            (200, json.dumps({"choices": []})),
        ]
    )
    verdict = judge_once(fast_config(standin, max_attempts=6), "Q?", ["gold"], "guess")
    assert verdict.correct is True and verdict.attempts == 6 and len(standin.requests) == 6


def test_retries_are_bounded_and_end_unjudged(standin):
    standin.script.extend([(200, chat_completion("no verdict here"))] * 10)
    verdict = judge_once(fast_config(standin, max_attempts=3), "Q?", ["gold"], "guess")
    assert verdict.correct is None and verdict.source == "unjudged" and verdict.score == 0.0
    assert len(standin.requests) == 3 and "no verdict here" in verdict.error


def test_a_rejected_request_fails_fast_with_the_fix(standin):
    standin.script.append((401, '{"error": "bad key"}'))
    with pytest.raises(JudgeConfigError, match="OPENAI_API_KEY"):
        judge_once(fast_config(standin), "Q?", ["gold"], "guess")
    assert len(standin.requests) == 1


def test_endpoint_accepts_a_base_url_or_the_full_path():
    base = "http://127.0.0.1:8000/v1"
    full = JudgeConfig(url=base + "/chat/completions")
    assert full.endpoint == JudgeConfig(url=base + "/").endpoint == full.url


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('```json\n{"rationale": "same", "judgement": "correct"}\n```', (True, "same")),
        ('{"rationale": "other city", "judgement": "Incorrect"}', (False, "other city")),
        ("Correct.", (True, "")),
        ('{"judgement": "correct"', None),
        ('["correct"]', None),
        ("The answer is correct because...", None),
        ("", None),
    ],
)
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) == expected
