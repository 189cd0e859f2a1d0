"""dr_jax.models is numerically the transformers Qwen2 / Qwen3 model, in f32, bf16 and decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_reference import CONFIGS, hf_logits, left_padded_batch, random_hf_model, save_hf

from dr_jax.models import KVCache, ModelConfig, init_policy, load_pretrained
from dr_jax.models.flops import learner_flops, matmul_params, training_flops_per_token

LENGTHS = [7, 12, 3]  # a left-padded batch: rows of 7, 12 and 3 real tokens


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers model, dr_jax policy loaded from its saved safetensors)."""
    model = random_hf_model(request.param)
    directory = save_hf(model, tmp_path_factory.mktemp(request.param))
    return model, load_pretrained(directory)


@pytest.fixture(scope="module")
def qwen3_pair(tmp_path_factory):
    model = random_hf_model("qwen3-headdim24-gqa2")
    return model, load_pretrained(save_hf(model, tmp_path_factory.mktemp("qwen3")))


def test_logits_match_transformers_on_left_padded_batch(pair):
    model, policy = pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    ours = np.asarray(policy.logits(tokens, mask))
    ref = hf_logits(model, tokens, mask)
    real = mask.astype(bool)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref)[real].max() <= 1e-4


def test_padded_query_rows_are_finite(qwen3_pair):
    _, policy = qwen3_pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    assert np.isfinite(np.asarray(policy.logits(tokens, mask))).all()


def test_padding_tokens_do_not_change_real_logits(qwen3_pair):
    _, policy = qwen3_pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    other = np.where(mask == 1, tokens, (tokens + 17) % policy.config.vocab_size)
    real = mask.astype(bool)
    a, b = np.asarray(policy.logits(tokens, mask)), np.asarray(policy.logits(other, mask))
    np.testing.assert_allclose(a[real], b[real], atol=1e-5)


def test_hidden_states_then_unembed_equal_logits(qwen3_pair):
    _, policy = qwen3_pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    hidden = jax.jit(lambda p: policy.apply(p, tokens, mask, return_hidden=True))(policy.params)
    assert hidden.shape == (*tokens.shape, policy.config.hidden_size)
    logits = jax.jit(policy.unembed)(policy.params, hidden)
    np.testing.assert_allclose(logits, policy.logits(tokens, mask), atol=1e-5)


def test_bf16_compute_stays_within_documented_tolerance(qwen3_pair):
    """bf16 compute (f32 master params, f32 logits): |Δlogits| <= 0.05 + 0.02 * max|logits|."""
    _, policy = qwen3_pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    ref = np.asarray(policy.logits(tokens, mask))
    bf16 = policy.replace(dtype=jnp.bfloat16)
    ours = bf16.logits(tokens, mask)
    assert ours.dtype == jnp.float32
    assert jax.tree.leaves(bf16.params)[0].dtype == jnp.float32
    error = np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max()
    assert error <= 0.05 + 0.02 * np.abs(ref).max()


@pytest.fixture(scope="module")
def gradients(qwen3_pair):
    """Loss and gradients of the plain, rematerialised and chunked-attention runs (one compile)."""
    _, policy = qwen3_pair
    tokens, mask = left_padded_batch(policy.config.vocab_size, LENGTHS)
    variants = {
        "plain": policy,
        "remat": policy.replace(remat=True),
        "remat matmuls": policy.replace(remat="matmuls"),  # projections kept, the rest redone
        "chunked": policy.replace(attention_chunk=5),  # 12 queries: blocks of 5, 5, 2 + padding
    }

    def loss(params, pol):
        logits = pol.apply(params, tokens, mask)
        return jnp.sum(jnp.where(mask[..., None] == 1, logits, 0.0)[..., :8] ** 2)

    run = jax.jit(lambda p: {k: jax.value_and_grad(loss)(p, v) for k, v in variants.items()})
    return run(policy.params)


@pytest.mark.parametrize("variant", ["remat", "remat matmuls", "chunked"])
def test_remat_and_attention_chunks_give_the_same_loss_and_gradients(gradients, variant):
    (plain_loss, plain), (loss, grads) = gradients["plain"], gradients[variant]
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


WIDTH, PREFILL, SLOTS = 12, 6, 16  # shared shapes, so every test reuses the compiled programs


def _full_logits(policy, sequences):
    """Each sequence's logits from one left-padded full forward: list of f32[len, V]."""
    tokens = np.zeros((len(sequences), WIDTH), np.int32)
    mask = np.zeros_like(tokens)
    for b, seq in enumerate(sequences):
        tokens[b, WIDTH - len(seq) :], mask[b, WIDTH - len(seq) :] = seq, 1
    logits = np.asarray(policy.logits(tokens, mask))
    return [logits[b, WIDTH - len(seq) :] for b, seq in enumerate(sequences)]


def _decode(policy, cache, rows):
    """Prefill each row's prompt (right-padded, one call), then feed the rest 1 token per step
    (rows that are done sit idle with num_new 0).

    rows: list of (tokens, prompt length). Returns each row's logits per fed position.
    """
    prompt = np.zeros((len(rows), PREFILL), np.int32)
    for b, (toks, p) in enumerate(rows):
        prompt[b, :p] = toks[:p]
    num_new = np.array([p for _, p in rows], np.int32)
    logits, cache = policy.extend(policy.params, cache, prompt, num_new)
    outputs = [[np.asarray(logits[b])] for b in range(len(rows))]
    for step in range(max(len(t) - p for t, p in rows)):
        next_tokens = np.zeros((len(rows), 1), np.int32)
        num_new = np.zeros(len(rows), np.int32)
        for b, (toks, p) in enumerate(rows):
            if p + step < len(toks):
                next_tokens[b, 0], num_new[b] = toks[p + step], 1
        logits, cache = policy.extend(policy.params, cache, next_tokens, num_new)
        for b in np.flatnonzero(num_new):
            outputs[b].append(np.asarray(logits[b]))
    return outputs, cache


@pytest.fixture(scope="module", params=["qwen2-gqa2-untied", "qwen3-headdim24-gqa2"])
def decode_policy(request, tmp_path_factory):
    model = random_hf_model(request.param)
    return load_pretrained(save_hf(model, tmp_path_factory.mktemp(request.param)))


def test_prefill_then_decode_matches_full_forward(decode_policy):
    """Rows of different prompt and total lengths decode like the full forward of each."""
    policy = decode_policy
    rng = np.random.default_rng(1)
    rows = [(rng.integers(0, 256, n).tolist(), p) for n, p in [(9, 4), (6, 6), (12, 2)]]
    outputs, cache = _decode(policy, policy.init_cache(len(rows), SLOTS), rows)
    assert isinstance(cache, KVCache)
    np.testing.assert_array_equal(cache.lengths, [9, 6, 12])
    full = _full_logits(policy, [toks for toks, _ in rows])
    for (_, p), got, ref in zip(rows, outputs, full, strict=True):
        np.testing.assert_allclose(np.stack(got), ref[p - 1 :], atol=1e-4)


def test_reset_row_is_reused_for_a_new_sequence(qwen3_pair):
    _, policy = qwen3_pair
    rng = np.random.default_rng(2)
    rows = [(rng.integers(0, 256, n).tolist(), min(n, PREFILL)) for n in (8, 5, 7)]
    _, cache = _decode(policy, policy.init_cache(3, SLOTS), rows)
    cache = cache.reset(np.array([True, False, False]))
    np.testing.assert_array_equal(cache.lengths, [0, 5, 7])
    new = rng.integers(0, 256, 3).astype(np.int32)
    tokens = np.zeros((3, PREFILL), np.int32)
    tokens[0, :3] = new
    logits, cache = policy.extend(policy.params, cache, tokens, np.array([3, 0, 0], np.int32))
    np.testing.assert_allclose(logits[0], _full_logits(policy, [new])[0][-1], atol=1e-4)
    np.testing.assert_array_equal(cache.lengths, [3, 5, 7])


def test_writes_past_the_cache_end_are_dropped(qwen3_pair):
    _, policy = qwen3_pair
    cache = policy.init_cache(3, SLOTS)
    cache = KVCache(cache.k, cache.v, np.array([SLOTS - 2, 0, 0], np.int32))
    tokens = np.ones((3, PREFILL), np.int32)
    logits, after = policy.extend(policy.params, cache, tokens, np.array([PREFILL, 0, 0]))
    assert np.isfinite(np.asarray(logits)).all()
    written = np.abs(np.asarray(after.k)).sum(axis=(0, 2, 4))  # [B, S]
    assert (written[0, SLOTS - 2 :] > 0).all()
    assert (written[0, : SLOTS - 2] == 0).all() and (written[1:] == 0).all()


def test_logical_axes_name_every_dimension_of_every_param(qwen3_pair):
    _, policy = qwen3_pair
    axes = jax.tree.leaves(policy.logical_axes(), is_leaf=lambda x: isinstance(x, tuple))
    params = jax.tree.leaves(policy.params)
    assert len(axes) == len(params)
    for names, array in zip(axes, params, strict=True):
        assert len(names) == array.ndim
    known = {None, "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
    assert {n for names in axes for n in names} <= known


def test_tiny_default_uses_the_real_qwen_vocab_and_runs():
    config = ModelConfig.tiny()
    assert config.vocab_size == 151_665
    policy = init_policy(config, seed=0)
    logits = policy.logits(np.array([[151644, 872, 198]], np.int32))
    assert logits.shape == (1, 3, 151_665)
    count = sum(x.size for x in jax.tree.leaves(policy.params))
    assert count < 12_000_000


def test_init_is_deterministic_in_the_seed():
    config = ModelConfig.tiny()
    a, b, c = (init_policy(config, seed=s).params for s in (0, 0, 1))
    flat = lambda state: np.concatenate([np.ravel(x) for x in jax.tree.leaves(state)])
    np.testing.assert_array_equal(flat(a), flat(b))
    assert not np.array_equal(flat(a), flat(c))
    assert isinstance(a, nnx.State)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"num_experts": 8}, "num_experts"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "mistral"}, "mistral"),
    ],
)
def test_unsupported_hf_options_raise_naming_the_option(change, named):
    hf = ModelConfig.tiny(vocab_size=64).to_hf()
    hf.update(change)
    with pytest.raises(ValueError, match=named):
        ModelConfig.from_hf(hf)


def test_config_survives_hf_round_trip():
    for config in (ModelConfig.tiny(), ModelConfig.tiny(model_type="qwen3", qkv_bias=False,
                                                       qk_norm=True, head_dim=32)):  # fmt: skip
        assert ModelConfig.from_hf(config.to_hf()) == config


def test_flops_count_every_matmul_weight_and_causal_attention(qwen3_pair):
    _, policy = qwen3_pair
    config = policy.config
    kernels = sum(
        v.get_value().size for path, v in nnx.to_flat_state(policy.params) if path[-1] == "kernel"
    )
    lm_head = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    assert matmul_params(config) == kernels + lm_head
    per_key = 6 * config.num_layers * config.num_heads * config.head_dim
    flops = training_flops_per_token(config, 100)
    assert flops == 6 * (kernels + lm_head) + per_key * 100
    assert training_flops_per_token(config, 100, causal=False) == flops + per_key * 100
    # the learner: layers on every token, the LM head on the 30 trained ones of 200
    head = 2 * config.hidden_size * config.vocab_size
    assert learner_flops(config, 100, 200, 30, updates=1, forward_passes=1) == pytest.approx(
        4 * ((flops / 3 - head) * 200 + head * 30)
    )
    assert learner_flops(config, 100, 200, 200, updates=1, forward_passes=0) == pytest.approx(
        200 * flops
    )


QWEN25_7B_INSTRUCT = {  # config.json as released (transformers 4.x field names)
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 152064,
}  # fmt: skip
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 12288, "max_position_embeddings": 40960, "max_window_layers": 36,
    "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


def test_released_qwen_configs_are_read():
    qwen25 = ModelConfig.from_hf(QWEN25_7B_INSTRUCT)
    assert (qwen25.head_dim, qwen25.num_kv_heads, qwen25.rope_theta) == (128, 4, 1e6)
    assert qwen25.qkv_bias and not qwen25.qk_norm and not qwen25.tie_word_embeddings
    qwen3 = ModelConfig.from_hf(QWEN3_8B)
    assert (qwen3.head_dim, qwen3.num_layers, qwen3.model_type) == (128, 36, "qwen3")
    assert qwen3.qk_norm and not qwen3.qkv_bias


def test_flops_of_qwen25_7b_match_its_published_size():
    """Qwen2.5-7B has 6.53B non-embedding parameters; the LM head adds 3584 x 152064."""
    config = ModelConfig.from_hf(QWEN25_7B_INSTRUCT)
    assert abs(matmul_params(config) - (6.53e9 + 3584 * 152064)) / 7.07e9 < 0.005
