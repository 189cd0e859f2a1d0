"""Shared fixtures: the real Qwen2.5 tokenizer, built offline. Vendored test data: `tests/data/`."""

import os
from pathlib import Path

import pytest

# CPU tests: with libtpu installed (the `tpu` extra) JAX would otherwise probe for TPU chips at
# start-up and print libtpu's warnings; the compile-only tests reach libtpu by themselves.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`tests/data/`: upstream files the tests read, vendored with their licences (README.md)."""
    return Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer, built offline once per test session (shared: do not mutate)."""
    from dr_jax.models.tokenizer import qwen2_tokenizer

    return qwen2_tokenizer()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server on loopback for the session (tests/redis_server.py)."""
    from redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
