"""The one retry loop: what it retries, how many times, and how it waits."""

import asyncio
import random

import pytest

from dr_jax.retry import exponential, retry


def flaky(failures: list[Exception]):
    calls = []

    async def call(n: int) -> str:
        calls.append(n)
        if failures:
            raise failures.pop(0)
        return "ok"

    return call, calls


def test_retries_what_is_retryable_until_it_succeeds():
    call, calls = flaky([ConnectionError("a"), ConnectionError("b")])
    waits = []
    result = asyncio.run(retry(call, attempts=3, retryable=lambda e: True,
                               wait=lambda n, e: waits.append((n, str(e))) or 0.0))  # fmt: skip
    assert result == "ok" and calls == [0, 1, 2] and waits == [(0, "a"), (1, "b")]


def test_the_last_attempt_and_a_non_retryable_error_raise_at_once():
    call, calls = flaky([ConnectionError("a"), ConnectionError("b")])
    with pytest.raises(ConnectionError, match="b"):
        asyncio.run(retry(call, attempts=2, retryable=lambda e: True, wait=lambda n, e: 0.0))
    call, calls = flaky([KeyError("bad"), ConnectionError("b")])
    with pytest.raises(KeyError):
        asyncio.run(retry(call, attempts=5, retryable=lambda e: isinstance(e, ConnectionError),
                          wait=lambda n, e: 0.0))  # fmt: skip
    assert calls == [0]


def test_an_awaitable_wait_is_awaited():
    call, _ = flaky([ConnectionError("down")])
    healthy = []

    async def health_check() -> None:
        healthy.append(True)

    asyncio.run(retry(call, attempts=2, retryable=lambda e: True,
                      wait=lambda n, e: health_check()))  # fmt: skip
    assert healthy == [True]


def test_exponential_backoff_doubles_to_its_cap_and_jitters_below_it():
    wait = exponential(0.5, cap=3.0)
    assert [wait(n, None) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = exponential(0.5, cap=3.0, rng=random.Random(0))
    draws = [jittered(3, None) for _ in range(200)]
    assert all(0 <= d <= 3.0 for d in draws) and max(draws) > 2.5 and min(draws) < 0.5
