"""Every attention implementation equals a plain reference: causal + left padding + GQA, f32,
outputs and gradients (splash: the Pallas kernel in interpret mode; cudnn: its wrapper through
jax.nn.dot_product_attention, whose cuDNN backend needs a GPU, so it runs implementation="xla")."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax.models import attention as attn

B, T, H, HKV, DH = 2, 200, 4, 2, 32  # T not a multiple of 128: splash pads the rows
PADS = (0, 37)  # left padding of each row


def reference(q, k, v, valid):
    """softmax(q k^T / sqrt(Dh)) v, each query head reading KV head h // (H / Hkv), key s visible
    to query t when s <= t and s is real."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    length = q.shape[1]
    visible = jnp.tril(jnp.ones((length, length), bool))[None, None] & valid[:, None, None, :]
    scores = jnp.where(visible, scores, -1e30)  # finite: fully padded query rows stay NaN-free
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)


@pytest.fixture(scope="module")
def inputs():
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, T, H, DH), jnp.float32)
    k = jax.random.normal(keys[1], (B, T, HKV, DH), jnp.float32)
    v = jax.random.normal(keys[2], (B, T, HKV, DH), jnp.float32)
    valid = jnp.arange(T)[None, :] >= jnp.array(PADS)[:, None]
    weights = jax.random.normal(keys[3], (B, T, H, DH), jnp.float32) * valid[:, :, None, None]
    return q, k, v, valid, weights


IMPLS = {
    "xla": lambda q, k, v, m: attn.attention(q, k, v, m, impl="xla"),
    "chunked": lambda q, k, v, m: attn.attention(q, k, v, m, chunk=64, impl="chunked"),
    "splash": functools.partial(attn.splash, interpret=True),
    "cudnn": lambda q, k, v, m: attn.dot_product(q, k, v, m, "xla"),
    "xla, full mask": lambda q, k, v, m: attn.attention(q, k, v, attn._full_mask(m, T)),
    "chunked, full mask": lambda q, k, v, m: attn.chunked(
        q, k.swapaxes(1, 2), v.swapaxes(1, 2), attn._full_mask(m, T), 48
    ),
}


def _loss(fn, q, k, v, valid, weights):
    return jnp.sum(fn(q, k, v, valid) * weights)  # padded query rows carry no weight


@pytest.mark.parametrize("name", list(IMPLS))
def test_implementation_equals_the_reference_with_gradients(inputs, name):
    q, k, v, valid, weights = inputs
    real = valid[:, :, None, None]
    want = reference(q, k, v, valid)
    got = jax.jit(IMPLS[name])(q, k, v, valid)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5)
    grad = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)
    for got_g, want_g in zip(
        grad(IMPLS[name], q, k, v, valid, weights),
        grad(reference, q, k, v, valid, weights),
        strict=True,
    ):
        assert float(jnp.abs(want_g).max()) > 0.1  # the gradient is not trivially zero
        np.testing.assert_allclose(got_g, want_g, atol=1e-5)


def test_auto_picks_by_platform_and_bad_names_are_refused():
    assert attn.resolve("auto", "tpu") == "splash"
    assert attn.resolve("auto", "gpu") == "cudnn"
    assert attn.resolve("auto", "cpu") == "xla"
    assert attn.resolve("auto", "cpu", chunk=512) == "chunked"
    assert attn.resolve("xla", "tpu") == "xla"
    with pytest.raises(ValueError, match="use one of"):
        attn.resolve("flash", "cpu")


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from dr_jax.models import attention as attn
from dr_jax.sharding import make_mesh
import test_attention as t

q, k, v, valid, weights = t.inputs.__wrapped__()
mesh = make_mesh("2x2")  # fsdp=2 splits rows, tp=2 splits query and KV heads
rows = NamedSharding(mesh, P(("data", "fsdp")))
heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tp", None))
q, k, v, weights = (jax.device_put(x, heads) for x in (q, k, v, weights))
valid = jax.device_put(valid, rows)
splash = lambda q, k, v, m: attn.splash(q, k, v, m, interpret=True)

def under_mesh(fn):
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced

out = jax.jit(under_mesh(splash))(q, k, v, valid)
grads = jax.jit(under_mesh(jax.grad(lambda *a: t._loss(splash, *a), argnums=(0, 1, 2))))(
    q, k, v, valid, weights)
want = t.reference(q, k, v, valid)
ref_grad = jax.grad(lambda *a: t._loss(t.reference, *a), argnums=(0, 1, 2))
want_grads = ref_grad(q, k, v, valid, weights)
real = np.asarray(valid)[:, :, None, None]
np.testing.assert_allclose(np.where(real, out, 0), np.where(real, want, 0), atol=1e-5)
for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-5)
print("sharded splash ok")
"""


def test_splash_shard_mapped_over_rows_and_heads_equals_the_reference():
    """Under a 2x2 mesh (4 simulated CPU devices) splash runs per shard via shard_map."""
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    done = subprocess.run(
        [sys.executable, "-c", SHARDED],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded splash ok" in done.stdout
