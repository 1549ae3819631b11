"""The baseline transformer: gradient checks, causality, cached decoding, generation, configs, dtypes."""

import dataclasses
import math

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.core.layers import linear_backward, linear_forward
from scratch_transformers.models import transformer as tf
from scratch_transformers.models.transformer import TransformerConfig

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]


def tiny(**kw):
    base = dict(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=12)
    base.update(kw)
    return TransformerConfig(**base)


def noisy_params(config, rng, scale=0.3):
    """init_params plus noise, so biases/norms are not at their trivial init values."""
    p = tf.init_params(config, rng)
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in p.items()}


def _check(config, rng, *, dropout_seed=None, max_entries=None):
    tokens = rng.integers(0, config.vocab_size, size=(2, 5))
    params = noisy_params(config, rng)

    def fwd(**p):
        if dropout_seed is None:
            return tf.forward(p, config, tokens)
        return tf.forward(p, config, tokens, training=True, rng=np.random.default_rng(dropout_seed))

    wrt = [k for k in params if config.positions == "rope" or not k.endswith("attn.bk")]  # without RoPE dL/dbk == 0 exactly
    return gradcheck(fwd, tf.backward, params, wrt=wrt, rng=rng, eps=1e-6, tol=1e-6, max_entries=max_entries)


def test_gradcheck_whole_tiny_transformer_every_entry(rng):
    """V=7, d=8, 2 layers, 2 heads, T=5, learned positions: every parameter entry, float64."""
    res = _check(tiny(max_len=5), rng)
    assert res.passed, str(res)
    assert all(r.n_checked == r.n_total for r in res.reports)


@pytest.mark.parametrize("kw", [dict(positions="sinusoidal", tie_embeddings=True),
                                dict(positions="rope", rope_layout="interleaved", rope_scale=3.0),
                                dict(positions="alibi", alibi_scale=2.0),
                                dict(positions="none", dropout=0.2)])
def test_gradcheck_position_variants(rng, kw):
    config = tiny(**kw)
    res = _check(config, rng, dropout_seed=7 if config.dropout else None, max_entries=12)
    assert res.passed, str(res)


def test_key_bias_gradient_is_real_with_rope(rng):
    """With RoPE each key's bias is rotated by its own angle: the shift is not constant over keys."""
    config = tiny(positions="rope")
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 5))
    logits, cache = tf.forward(params, config, tokens)
    grads = tf.backward(rng.standard_normal(logits.shape), cache)
    assert np.max(np.abs(grads["blocks.0.attn.bk"])) > 1e-3 * np.max(np.abs(grads["blocks.0.attn.bq"]))


def test_key_bias_gradients_are_zero(rng):
    config = tiny()
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 5))
    logits, cache = tf.forward(params, config, tokens)
    grads = tf.backward(rng.standard_normal(logits.shape), cache)
    for i in range(2):
        assert np.max(np.abs(grads[f"blocks.{i}.attn.bk"])) < 1e-12 * np.max(np.abs(grads[f"blocks.{i}.attn.bq"]))


@pytest.mark.parametrize("positions", POSITIONS)
def test_causality_future_token_leaves_earlier_logits_bit_identical(rng, positions):
    config = tiny(positions=positions)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 9))
    logits, _ = tf.forward(params, config, tokens)
    for t in (1, 4, 8):
        changed = tokens.copy()
        changed[:, t] = (changed[:, t] + 3) % 7
        logits2, _ = tf.forward(params, config, changed)
        np.testing.assert_array_equal(logits2[:, :t], logits[:, :t])
        assert np.max(np.abs(logits2[:, t:] - logits[:, t:])) > 1e-6


@pytest.mark.parametrize("positions", POSITIONS)
def test_cached_decoding_equals_full_forward(rng, positions):
    config = tiny(positions=positions, rope_scale=1.5, alibi_scale=0.7)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(3, 10))
    full, _ = tf.forward(params, config, tokens)
    cache = tf.new_kv_cache(config, 3)
    pieces, t0 = [], 0
    for n in (4, 1, 1, 3, 1):
        logits, _ = tf.forward(params, config, tokens[:, t0:t0 + n], kv_cache=cache)
        pieces.append(logits)
        t0 += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-12, atol=1e-12)
    assert all(c.length == 10 for c in cache)


def test_generate_greedy_equals_argmax_of_full_forward(rng):
    config = tiny(positions="rope")
    params = noisy_params(config, rng, scale=0.5)
    prompt = rng.integers(0, 7, size=(2, 3))
    out = tf.generate(params, config, prompt, 6, greedy=True)
    assert out.shape == (2, 9) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :3], prompt)
    seq = prompt.copy()
    for _ in range(6):                                          # no cache: rerun the whole prefix each step
        logits, _ = tf.forward(params, config, seq)
        seq = np.concatenate([seq, np.argmax(logits[:, -1], axis=-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_generate_sampling_top_k_and_temperature(rng):
    config = tiny(positions="alibi")
    params = noisy_params(config, rng, scale=0.5)
    prompt = rng.integers(0, 7, size=(4, 2))
    a = tf.generate(params, config, prompt, 8, rng=np.random.default_rng(1), temperature=1.3, top_k=3)
    b = tf.generate(params, config, prompt, 8, rng=np.random.default_rng(1), temperature=1.3, top_k=3)
    np.testing.assert_array_equal(a, b)                         # same seed, same tokens
    logits, _ = tf.forward(params, config, a[:, :-1])
    for t in range(1, 9):                                       # every sampled token is in its row's top 3
        top3 = np.argsort(logits[:, t], axis=-1)[:, -3:]
        assert all(a[r, t + 1] in top3[r] for r in range(4))
    greedy = tf.generate(params, config, prompt, 8, greedy=True)
    np.testing.assert_array_equal(tf.generate(params, config, prompt, 8, rng=rng, top_k=1), greedy)
    np.testing.assert_array_equal(tf.generate(params, config, prompt, 8, rng=rng, temperature=1e-9), greedy)


def test_sample_logits_frequencies_follow_softmax():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    draws = np.array([tf.sample_logits(logits, rng)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.015)   # ~4.5 standard errors


def test_loss_at_init_is_log_vocab_and_grads_cover_params(rng):
    config = TransformerConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_len=8)
    params = tf.init_params(config, rng)
    inputs = rng.integers(0, 50, size=(4, 8))
    targets = rng.integers(0, 50, size=(4, 8))
    targets[0, :3] = -100
    loss, grads = tf.loss_and_grads(params, config, inputs, targets)
    assert abs(loss - math.log(50)) < 0.05                      # std-0.02 init: near-uniform predictions
    assert set(grads) == set(params)
    assert all(grads[k].shape == params[k].shape for k in params)


def test_init_params_gpt2_scales(rng):
    config = TransformerConfig(vocab_size=300, d_model=64, n_layers=8, n_heads=4)
    p = tf.init_params(config, rng)
    assert set(p) == set(tf.param_shapes(config))
    assert abs(p["tok_emb"].std() - 0.02) < 0.001 and abs(p["blocks.0.mlp.w1"].std() - 0.02) < 0.001
    res = 0.02 / math.sqrt(16)
    assert abs(p["blocks.3.mlp.w2"].std() - res) < 0.05 * res and abs(p["blocks.3.attn.wo"].std() - res) < 0.1 * res
    assert np.all(p["blocks.0.ln1.weight"] == 1) and np.all(p["ln_f.bias"] == 0)
    tied = tf.init_params(dataclasses.replace(config, tie_embeddings=True, positions="rope"), rng)
    assert "lm_head" not in tied and "pos_emb" not in tied


def test_scales_reach_their_limits(rng):
    """alibi_scale -> 0 removes the ALiBi bias; rope_scale -> inf makes every angle 0: both equal "none"."""
    tokens = rng.integers(0, 7, size=(2, 6))
    params = noisy_params(tiny(positions="none"), rng)
    none, _ = tf.forward(params, tiny(positions="none"), tokens)
    alibi0, _ = tf.forward(params, tiny(positions="alibi", alibi_scale=1e-13), tokens)
    rope_inf, _ = tf.forward(params, tiny(positions="rope", rope_scale=1e13), tokens)
    np.testing.assert_allclose(alibi0, none, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rope_inf, none, rtol=1e-9, atol=1e-9)
    rope1, _ = tf.forward(params, tiny(positions="rope"), tokens)
    rope2, _ = tf.forward(params, tiny(positions="rope", rope_scale=2.0), tokens)
    assert np.max(np.abs(rope1 - rope2)) > 1e-4


def test_rope_alibi_none_extrapolate_beyond_max_len(rng):
    for positions in ("rope", "alibi", "none", "sinusoidal"):
        config = tiny(positions=positions, max_len=4)
        logits, _ = tf.forward(tf.init_params(config, rng), config, rng.integers(0, 7, size=(1, 9)))
        assert logits.shape == (1, 9, 7) and np.all(np.isfinite(logits))
    with pytest.raises(ValueError, match="^tokens: expected"):
        config = tiny(positions="learned", max_len=4)
        tf.forward(tf.init_params(config, rng), config, rng.integers(0, 7, size=(1, 9)))


class _Identity:
    """A projection override that computes the plain linear (the LoRA hook with a zero adapter)."""

    def __init__(self, name, bias):
        self.name, self.bias, self.calls = name, bias, 0

    def forward(self, x, params):
        self.calls += 1
        return linear_forward(x, params[self.name], params.get(self.bias))

    def backward(self, dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        out = {self.name + ".via_override": dw}
        if db is not None:
            out[self.bias] = db
        return dx, out


def test_linears_hook_reaches_attention_mlp_and_head(rng):
    config = tiny()
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 5))
    names = {"blocks.0.attn.wq": "blocks.0.attn.bq", "blocks.1.mlp.w2": "blocks.1.mlp.b2", "lm_head": None}
    linears = {n: _Identity(n, b) for n, b in names.items()}
    logits, cache = tf.forward(params, config, tokens, linears=linears)
    ref, ref_cache = tf.forward(params, config, tokens)
    np.testing.assert_array_equal(logits, ref)
    assert all(o.calls == 1 for o in linears.values())
    dlogits = rng.standard_normal(logits.shape)
    grads, ref_grads = tf.backward(dlogits, cache), tf.backward(dlogits, ref_cache)
    for n in names:
        assert n not in grads
        np.testing.assert_allclose(grads[n + ".via_override"], ref_grads[n], rtol=1e-13, atol=1e-13)
    # a frozen weight may be missing from params only when it is overridden
    partial = {k: v for k, v in params.items() if k != "blocks.0.attn.wq"}
    with pytest.raises(ValueError, match="^params: expected"):
        tf.forward(partial, config, tokens)


def test_float32_forward_and_grads(rng):
    config = tiny(positions="rope", dropout=0.1)
    p64 = noisy_params(config, rng)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    tokens = rng.integers(0, 7, size=(2, 6))
    l32, _ = tf.forward(p32, config, tokens)
    l64, _ = tf.forward(p64, config, tokens)
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-4)
    loss, grads = tf.loss_and_grads(p32, config, tokens, tokens, rng=np.random.default_rng(0))
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    out = tf.generate(tf.init_params(config, rng, dtype=np.float32), config, tokens[:, :2], 3, greedy=True)
    assert out.shape == (2, 5)


def test_dropout_is_reproducible_and_active_only_in_training(rng):
    config = tiny(dropout=0.3)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 5))
    a, _ = tf.forward(params, config, tokens, training=True, rng=np.random.default_rng(3))
    b, _ = tf.forward(params, config, tokens, training=True, rng=np.random.default_rng(3))
    c, _ = tf.forward(params, config, tokens, training=True, rng=np.random.default_rng(4))
    e1, _ = tf.forward(params, config, tokens)
    e2, _ = tf.forward(params, config, tokens, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(e1, e2)
    assert np.max(np.abs(a - c)) > 1e-3 and np.max(np.abs(a - e1)) > 1e-3
    with pytest.raises(ValueError, match="^rng: expected"):
        tf.forward(params, config, tokens, training=True)
    with pytest.raises(ValueError, match="^rng: expected"):
        tf.loss_and_grads(params, config, tokens, tokens)


BAD_CONFIGS = {
    "vocab_size": dict(vocab_size=0),
    "n_heads": dict(n_heads=3),
    "d_ff": dict(d_ff=0),
    "positions": dict(positions="relative"),
    "attention": dict(attention="sparse"),
    "dropout": dict(dropout=1.0),
    "rope_layout": dict(rope_layout="split"),
    "rope_scale": dict(rope_scale=0.0),
    "alibi_scale": dict(alibi_scale=-1.0),
    "rope_base": dict(rope_base=1.0),
    "tie_embeddings": dict(tie_embeddings="yes"),
    "max_len": dict(max_len=2.5),
    "d_model": dict(d_model=6, n_heads=2, positions="rope"),     # head dim 3: odd, rope needs pairs
}


@pytest.mark.parametrize("field", list(BAD_CONFIGS))
def test_bad_config_values_raise_value_error(field):
    kw = dict(vocab_size=7, d_model=8, n_heads=2)
    kw.update(BAD_CONFIGS[field])
    with pytest.raises(ValueError, match=rf"^{field}: expected .+, got .+"):
        TransformerConfig(**kw)


def test_bad_forward_inputs_raise_value_error(rng):
    config = tiny()
    params = tf.init_params(config, rng)
    tokens = rng.integers(0, 7, size=(2, 5))
    cases = [
        (lambda: tf.forward(params, config, tokens.astype(np.float64)), "tokens"),
        (lambda: tf.forward(params, config, tokens + 7), "tokens"),
        (lambda: tf.forward(params, config, tokens[0]), "tokens"),
        (lambda: tf.forward(params, "config", tokens), "config"),
        (lambda: tf.forward({**params, "lm_head": params["lm_head"][:, :3]}, config, tokens), r"params\['lm_head'\]"),
        (lambda: tf.forward({**params, "ln_f.bias": params["ln_f.bias"].astype(np.float32)}, config, tokens),
         r"params\['ln_f.bias'\]"),
        (lambda: tf.forward(params, config, tokens, kv_cache=[]), "kv_cache"),
        (lambda: tf.generate(params, config, tokens, 8, greedy=True), "n_new"),
        (lambda: tf.generate(params, config, tokens, 2), "rng"),
        (lambda: tf.generate(params, config, tokens, 2, rng=rng, top_k=0), "top_k"),
        (lambda: tf.generate(params, config, tokens, 2, rng=rng, temperature=0.0), "temperature"),
        (lambda: tf.loss_and_grads(params, config, tokens, tokens[:, :3]), "targets"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}: expected .+, got .+"):
            fn()


def test_backward_refuses_decode_cache(rng):
    config = tiny()
    params = tf.init_params(config, rng)
    logits, cache = tf.forward(params, config, rng.integers(0, 7, size=(1, 3)), kv_cache=tf.new_kv_cache(config, 1))
    with pytest.raises(ValueError, match="^cache: expected"):
        tf.backward(logits, cache)


def test_flash_attention_config_matches_reference(rng):
    ref_cfg = tiny(positions="alibi")
    flash_cfg = dataclasses.replace(ref_cfg, attention="flash")
    params = noisy_params(ref_cfg, rng)
    tokens = rng.integers(0, 7, size=(2, 9))
    l_ref, c_ref = tf.forward(params, ref_cfg, tokens)
    l_fl, c_fl = tf.forward(params, flash_cfg, tokens)
    np.testing.assert_allclose(l_fl, l_ref, rtol=1e-12, atol=1e-12)
    d = rng.standard_normal(l_ref.shape)
    g_ref, g_fl = tf.backward(d, c_ref), tf.backward(d, c_fl)
    for k in g_ref:
        np.testing.assert_allclose(g_fl[k], g_ref[k], rtol=1e-10, atol=1e-12)


def test_dropout_training_step_equal_under_flash_and_reference_cores():
    """With dropout, the model names one counter-based mask per layer by a seed: the flash kernel
    regenerates it per tile (no mask stored), the reference gets it materialised; same loss and grads."""
    results = []
    for core in ("reference", "flash"):
        config = tiny(dropout=0.2, attention=core)
        params = tf.init_params(config, np.random.default_rng(0))
        tokens = np.random.default_rng(1).integers(0, 7, size=(2, 9))
        loss, grads = tf.loss_and_grads(params, config, tokens, np.roll(tokens, -1, axis=1),
                                        rng=np.random.default_rng(2))
        results.append((loss, grads))
        if core == "flash":
            _, cache = tf.forward(params, config, tokens, training=True, rng=np.random.default_rng(2))
            core_cache = cache.blocks[0].attn.core
            assert core_cache.dropout_p == 0.2 and core_cache.dropout_mask is None   # nothing N x N kept
    (l_ref, g_ref), (l_fl, g_fl) = results
    assert abs(l_ref - l_fl) <= 1e-12 * abs(l_ref)
    for key in g_ref:
        np.testing.assert_allclose(g_fl[key], g_ref[key], rtol=1e-10, atol=1e-13, err_msg=key)
