"""The one retry loop: the tools' HTTP requests, the SGLang client, the judge and the weight
sync all go through `retry`, each saying what is worth retrying and how long to wait."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def retry(
    call: Callable[[int], Awaitable[T]],
    *,
    attempts: int,
    retryable: Callable[[Exception], bool],
    wait: Callable[[int, Exception], float | Awaitable[None]],
) -> T:
    """`await call(n)` for attempt n = 0, 1, ...: its result, or its exception once it is not
    `retryable` or the last of `attempts`. Between attempts `wait(n, error)` returns the seconds
    to sleep, or an awaitable to wait on (a health check)."""
    for n in range(attempts):
        try:
            return await call(n)
        except Exception as error:
            if n == attempts - 1 or not retryable(error):
                raise
            pause = wait(n, error)
            await (asyncio.sleep(pause) if isinstance(pause, int | float) else pause)
    raise ValueError(f"attempts must be >= 1, got {attempts}")


def exponential(base: float, cap: float = float("inf"), rng: random.Random | None = None):
    """wait(n, error) = base * 2**n capped at `cap`; with `rng`, drawn from U(0, that) (full
    jitter: many clients backing off at once spread out)."""

    def wait(n: int, error: Exception) -> float:
        ceiling = min(cap, base * 2**n)
        return rng.uniform(0.0, ceiling) if rng is not None else ceiling

    return wait
