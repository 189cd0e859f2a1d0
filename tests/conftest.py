"""Shared fixtures: the `shared/` data folder and the real Qwen2.5 tokenizer, built offline."""

import os
from pathlib import Path

import pytest

# CPU tests: with libtpu installed (the `tpu` extra) JAX would otherwise probe for TPU chips at
# start-up and print libtpu's warnings; the compile-only tests reach libtpu by themselves.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared data folder sits beside the project root")
    return SHARED


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer, built offline once per test session (shared: do not mutate)."""
    from dr_jax.models.tokenizer import qwen2_tokenizer

    return qwen2_tokenizer()
