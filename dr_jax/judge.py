"""LLM judge ("model-based evaluation", the paper's MBE): is a predicted answer correct?

F1 and EM punish paraphrases ("JFK" vs "John F. Kennedy"), so the paper also asks an LLM
whether the prediction means the same as one of the gold aliases, and reports the accuracy.
This judge talks to any OpenAI-compatible `/v1/chat/completions` endpoint with the project's
own prompt. Unlike the original, which re-asked forever on any unusable reply, it makes at
most `max_attempts` calls (exponential backoff) and then records the sample as unjudged.
The prediction is shown as written (the original showed it lower-cased, punctuation blanked).
"""

import asyncio
import json
import os
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import httpx

from dr_jax.retry import exponential, retry
from dr_jax.reward import exact_match

SYSTEM_PROMPT = "You grade answers to factual questions. You reply with one JSON object only."

JUDGE_PROMPT = """\
Decide whether a predicted answer to a question is correct.

Question: {question}
Accepted answers (any one of them is enough): {answers}
Predicted answer: {prediction}

The prediction is correct when, read as an answer to this question, it refers to the same thing \
as at least one accepted answer. Wording, spelling variants, abbreviations and extra harmless \
detail do not matter. It is incorrect when it names something else, is vaguer than the question \
asks for, hedges between several candidates, or does not answer at all.

Reply with a JSON object with two keys: "rationale" (one or two sentences explaining the decision) \
and "judgement" (exactly "correct" or "incorrect")."""

Source = Literal["exact_match", "judge", "no_answer", "unjudged"]


FAILURES = (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError)
"""What a judge call can fail with (transport, status, a malformed or unusable reply): retried."""


class UnusableReply(ValueError):
    """The judge answered, but not with a verdict: asked again."""


class JudgeConfigError(RuntimeError):
    """The endpoint rejected the request itself (bad URL, key or model): retrying cannot help."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge runs and how hard to try."""

    url: str = ""
    """OpenAI-compatible base URL, e.g. https://api.openai.com/v1 ("" = no LLM judge)."""
    model: str = "gpt-4o-mini"
    """Judge model sent with each request (the paper used gpt-4o-mini); kept in the summary."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent as a Bearer token when set)."""
    temperature: float = 0.0
    """Judge sampling temperature (the original used 0.7; 0 makes verdicts repeatable)."""
    max_attempts: int = 4
    """Calls per sample before giving up on garbage replies or server errors."""
    backoff_s: float = 1.0
    """First retry delay in seconds; doubles after each failed attempt."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    concurrency: int = 16
    """Requests in flight at once."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"--judge.max-attempts must be >= 1, got {self.max_attempts}.")
        if self.concurrency < 1:
            raise ValueError(f"--judge.concurrency must be >= 1, got {self.concurrency}.")

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


@dataclass(frozen=True)
class Verdict:
    """One judged sample. `correct` is None when the judge never gave a usable reply."""

    correct: bool | None
    source: Source
    attempts: int = 0
    rationale: str = ""
    error: str = ""

    @property
    def score(self) -> float:
        """1.0 if judged correct, else 0.0 (unjudged samples count as wrong, and are reported)."""
        return 1.0 if self.correct else 0.0


def parse_judgement(reply: str) -> tuple[bool, str] | None:
    """(correct, rationale) from a judge reply, or None when the reply is unusable.

    Accepts the JSON object anywhere in the reply (models like to wrap it in a code fence),
    or a bare "correct"/"incorrect".
    """
    bare = reply.strip().strip(".\"'`").lower()
    if bare in ("correct", "incorrect"):
        return bare == "correct", ""
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if match is None:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    judgement = str(obj.get("judgement", obj.get("judgment", ""))).strip().lower()
    if judgement not in ("correct", "incorrect"):
        return None
    return judgement == "correct", str(obj.get("rationale", ""))


class Judge:
    """Async LLM judge; use as `async with Judge(cfg) as judge: await judge.judge(...)`."""

    def __init__(self, config: JudgeConfig) -> None:
        if not config.enabled:
            raise ValueError("Judge needs --judge.url (an OpenAI-compatible base URL).")
        self.config = config
        self._semaphore = asyncio.Semaphore(config.concurrency)
        key = os.environ.get(config.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(timeout=config.timeout_s, headers=headers)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def judge(self, question: str, answers: list[str], prediction: str | None) -> Verdict:
        """Verdict on `prediction`; an exact match or a missing answer costs no call."""
        if prediction is None or not prediction.strip():
            return Verdict(correct=False, source="no_answer")
        if exact_match(prediction, answers):
            return Verdict(correct=True, source="exact_match")
        gold = json.dumps(answers, ensure_ascii=False)
        prompt = JUDGE_PROMPT.format(question=question, answers=gold, prediction=prediction)

        async def once(attempt: int) -> Verdict:
            reply = await self._ask(prompt)
            parsed = parse_judgement(reply)
            if parsed is None:
                raise UnusableReply(f"unusable reply: {reply[:200]!r}")
            correct, rationale = parsed
            return Verdict(correct, source="judge", attempts=attempt + 1, rationale=rationale)

        attempts = self.config.max_attempts
        try:
            return await retry(once, attempts=attempts, retryable=lambda e: isinstance(e, FAILURES),
                               wait=exponential(self.config.backoff_s))  # fmt: skip
        except FAILURES as e:
            error = str(e) if isinstance(e, UnusableReply) else f"{type(e).__name__}: {e}"
            return Verdict(correct=None, source="unjudged", attempts=attempts, error=error)

    async def _ask(self, prompt: str) -> str:
        body = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            "temperature": self.config.temperature,
        }
        async with self._semaphore:
            response = await self._client.post(self.config.endpoint, json=body)
        if response.status_code in (401, 403, 404):
            raise JudgeConfigError(
                f"judge endpoint {self.config.endpoint} answered {response.status_code}: "
                f"check --judge.url, --judge.model and the key in ${self.config.api_key_env}."
            )
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"message content is {type(content).__name__}, not a string")
        return content
