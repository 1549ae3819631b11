"""Multi-head attention: per-head independent formulation, gradients, KV cache, RoPE/ALiBi wiring,
projection overrides, core lookup by name, bad inputs."""

import numpy as np
import pytest

from scratch_transformers.attention import multihead
from scratch_transformers.attention.multihead import KVCache, init_mha, mha_backward, mha_forward
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.core.layers import linear_backward, linear_forward


def _params(rng, d_model=8, n_heads=2, bias=True, prefix="attn"):
    p = init_mha(rng, d_model, n_heads, bias=bias, prefix=prefix, std=0.5)
    for k in p:
        if k.split(".")[-1].startswith("b"):
            p[k] = 0.1 * rng.standard_normal(p[k].shape)
    return p


def per_head_reference(x, p, n_heads, causal=True, bias=None):
    """Vaswani §3.2.2 written per head with column slices of the weights, no split/merge reshapes."""
    b_, t, d = x.shape
    dh = d // n_heads
    heads = []
    for h in range(n_heads):
        cols = slice(h * dh, (h + 1) * dh)
        q = x @ p["attn.wq"][:, cols] + p["attn.bq"][cols]
        k = x @ p["attn.wk"][:, cols] + p["attn.bk"][cols]
        v = x @ p["attn.wv"][:, cols] + p["attn.bv"][cols]
        s = q @ k.transpose(0, 2, 1) / np.sqrt(dh)                      # (B, T, T)
        if bias is not None:
            s = s + bias[h]
        if causal:
            s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        heads.append((w / w.sum(-1, keepdims=True)) @ v)
    return np.concatenate(heads, axis=-1) @ p["attn.wo"] + p["attn.bo"]


@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_per_head_reference(rng, causal):
    p = _params(rng)
    x = rng.standard_normal((2, 5, 8))
    y, _ = mha_forward(x, p, prefix="attn", n_heads=2, causal=causal)
    np.testing.assert_allclose(y, per_head_reference(x, p, 2, causal=causal), rtol=1e-12, atol=1e-12)


def test_attn_bias_is_added_per_head(rng):
    p = _params(rng)
    x = rng.standard_normal((2, 5, 8))
    bias = rng.standard_normal((2, 5, 5))
    y, _ = mha_forward(x, p, prefix="attn", n_heads=2, attn_bias=bias)
    np.testing.assert_allclose(y, per_head_reference(x, p, 2, bias=bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [dict(causal=False), dict(attn_bias="random"),
                                     dict(rope={"base": 50.0, "layout": "half"})])
def test_gradcheck_float64(rng, options):
    options = dict(options)
    if options.get("attn_bias") == "random":
        options["attn_bias"] = rng.standard_normal((2, 1, 4))
    p = _params(rng, bias="rope" not in options)
    x = rng.standard_normal((2, 4, 8))

    def fwd(x, **params):
        return mha_forward(x, params, prefix="attn", n_heads=2, **options)

    def bwd(dy, cache):
        dx, grads = mha_backward(dy, cache)
        return {"x": dx, **grads}

    wrt = ["x"] + [k for k in p if k != "attn.bk"]
    res = gradcheck(fwd, bwd, {"x": x, **p}, wrt=wrt, rng=rng, tol=1e-7)
    assert res.passed, str(res)


def test_key_bias_gradient_is_zero(rng):
    """q_i . bk shifts every score of row i equally; softmax ignores it (so it is excluded from gradchecks)."""
    p = _params(rng)
    x = rng.standard_normal((2, 4, 8))
    y, cache = mha_forward(x, p, prefix="attn", n_heads=2)
    _, grads = mha_backward(rng.standard_normal(y.shape), cache)
    assert np.max(np.abs(grads["attn.bk"])) < 1e-13 * np.max(np.abs(grads["attn.bq"]))


def test_causality_future_input_leaves_past_outputs_bit_identical(rng):
    p = _params(rng)
    x = rng.standard_normal((1, 6, 8))
    y, _ = mha_forward(x, p, prefix="attn", n_heads=2)
    x2 = x.copy()
    x2[0, 4] += 10.0
    y2, _ = mha_forward(x2, p, prefix="attn", n_heads=2)
    np.testing.assert_array_equal(y[:, :4], y2[:, :4])
    assert np.max(np.abs(y[:, 4:] - y2[:, 4:])) > 1e-3


def _decode(x, p, cache, chunks, **kw):
    outs, t0 = [], 0
    for n in chunks:
        y, _ = mha_forward(x[:, t0:t0 + n], p, prefix="attn", n_heads=2, kv_cache=cache, **kw)
        outs.append(y)
        t0 += n
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("rope", [None, {"base": 100.0, "layout": "interleaved"}])
def test_kv_cache_decoding_equals_full_forward(rng, rope):
    p = _params(rng)
    x = rng.standard_normal((2, 7, 8))
    full, _ = mha_forward(x, p, prefix="attn", n_heads=2, rope=rope)
    cache = KVCache.empty(2, 2, 10, 4)
    got = _decode(x, p, cache, [3, 1, 1, 2], rope=rope)
    assert cache.length == 7
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12)


def test_kv_cache_with_alibi_bias_equals_full_forward(rng):
    from scratch_transformers.positional.alibi import alibi_bias

    p = _params(rng)
    x = rng.standard_normal((1, 6, 8))
    full, _ = mha_forward(x, p, prefix="attn", n_heads=2, attn_bias=alibi_bias(2, 6, 6))
    cache = KVCache.empty(1, 2, 6, 4)
    outs = []
    for t in range(6):
        y, _ = mha_forward(x[:, t:t + 1], p, prefix="attn", n_heads=2, kv_cache=cache,
                           attn_bias=alibi_bias(2, 1, t + 1))
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-12, atol=1e-12)


def test_rope_depends_on_relative_positions_only(rng):
    p = _params(rng)
    x = rng.standard_normal((2, 5, 8))
    rope = {"base": 100.0}
    y0, _ = mha_forward(x, p, prefix="attn", n_heads=2, rope=rope)
    y_shift, _ = mha_forward(x, p, prefix="attn", n_heads=2, rope={**rope, "positions": np.arange(5) + 37.0})
    np.testing.assert_allclose(y_shift, y0, rtol=1e-10, atol=1e-12)
    y_plain, _ = mha_forward(x, p, prefix="attn", n_heads=2)
    y_spread, _ = mha_forward(x, p, prefix="attn", n_heads=2, rope={**rope, "positions": 2.0 * np.arange(5)})
    assert np.max(np.abs(y_plain - y0)) > 1e-3 and np.max(np.abs(y_spread - y0)) > 1e-3


class _Doubled:
    """A projection override: y = x (2 w) + b, as LoRA's object would replace a linear."""

    def __init__(self, name):
        self.name, self.bias = name, name[:-2] + "b" + name[-1]

    def forward(self, x, params):
        return linear_forward(x, 2.0 * params[self.name], params[self.bias])

    def backward(self, dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return dx, {self.name: 2.0 * dw, self.bias: db, self.name + ".calls": np.ones(1)}


def test_linears_override_replaces_a_projection(rng):
    p = _params(rng)
    x = rng.standard_normal((2, 4, 8))
    dy = rng.standard_normal((2, 4, 8))
    y, cache = mha_forward(x, p, prefix="attn", n_heads=2, linears={"attn.wv": _Doubled("attn.wv")})
    p2 = {**p, "attn.wv": 2.0 * p["attn.wv"]}
    y2, cache2 = mha_forward(x, p2, prefix="attn", n_heads=2)
    np.testing.assert_allclose(y, y2, rtol=1e-13, atol=1e-13)
    dx, grads = mha_backward(dy, cache)
    dx2, grads2 = mha_backward(dy, cache2)
    np.testing.assert_allclose(dx, dx2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["attn.wv"], 2.0 * grads2["attn.wv"], rtol=1e-12, atol=1e-12)
    assert "attn.wv.calls" in grads                   # the override's own gradient keys are passed through


def test_core_is_looked_up_by_name(rng, monkeypatch):
    calls = []
    from scratch_transformers.attention import reference

    def spy_forward(*args, **kw):
        calls.append(kw)
        return reference.attention_forward(*args, **kw)

    import types
    import sys
    mod = types.ModuleType("spy_core_module")
    mod.fwd, mod.bwd = spy_forward, reference.attention_backward
    monkeypatch.setitem(sys.modules, "spy_core_module", mod)
    monkeypatch.setitem(multihead.CORES, "spy", ("spy_core_module", "fwd", "bwd"))
    p = _params(rng)
    x = rng.standard_normal((1, 3, 8))
    y, cache = mha_forward(x, p, prefix="attn", n_heads=2, core="spy", core_options={"scale": 0.1})
    y_ref, _ = mha_forward(x, p, prefix="attn", n_heads=2, core_options={"scale": 0.1})
    np.testing.assert_array_equal(y, y_ref)
    assert calls and calls[0]["scale"] == 0.1 and calls[0]["causal"] is True
    mha_backward(np.ones_like(y), cache)


def test_core_dropout_mask_is_forwarded(rng):
    p = _params(rng)
    x = rng.standard_normal((1, 3, 8))
    keep = np.ones((1, 2, 3, 3), dtype=bool)
    keep[0, :, 2, 0] = False
    y, cache = mha_forward(x, p, prefix="attn", n_heads=2, core_options=dict(dropout_p=0.5, dropout_mask=keep))
    y0, _ = mha_forward(x, p, prefix="attn", n_heads=2)
    assert np.max(np.abs(y - y0)) > 1e-3


def test_float32_in_float32_out(rng):
    p = _params(rng)
    x = rng.standard_normal((2, 4, 8))
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    y, cache = mha_forward(x.astype(np.float32), p32, prefix="attn", n_heads=2, attn_bias=np.zeros((2, 4, 4)))
    dx, grads = mha_backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    y64, _ = mha_forward(x, p, prefix="attn", n_heads=2)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-5)


def test_init_mha_shapes_and_scales(rng):
    p = init_mha(rng, 64, 4, prefix="blocks.3.attn", out_std=0.01)
    assert set(p) == {f"blocks.3.attn.{w}{n}" for w in "wb" for n in "qkvo"}
    assert p["blocks.3.attn.wq"].shape == (64, 64) and np.all(p["blocks.3.attn.bo"] == 0)
    assert abs(p["blocks.3.attn.wq"].std() - 0.02) < 0.002 and abs(p["blocks.3.attn.wo"].std() - 0.01) < 0.001
    assert set(init_mha(rng, 8, 2, bias=False)) == {"attn.wq", "attn.wk", "attn.wv", "attn.wo"}


BAD = {
    "x 2-d": (lambda x, p: mha_forward(x[0], p, n_heads=2), "x"),
    "heads": (lambda x, p: mha_forward(x, p, n_heads=3), "n_heads"),
    "missing": (lambda x, p: mha_forward(x, {k: v for k, v in p.items() if k != "attn.wk"}, n_heads=2), "params"),
    "prefix": (lambda x, p: mha_forward(x, p, prefix="blocks.0.attn", n_heads=2), "params"),
    "w shape": (lambda x, p: mha_forward(x, {**p, "attn.wq": p["attn.wq"][:, :4]}, n_heads=2), r"params\['attn.wq'\]"),
    "w dtype": (lambda x, p: mha_forward(x.astype(np.float32), p, n_heads=2), r"params\['attn.wq'\]"),
    "core": (lambda x, p: mha_forward(x, p, n_heads=2, core="nope"), "core"),
    "causal": (lambda x, p: mha_forward(x, p, n_heads=2, causal=1), "causal"),
    "rope": (lambda x, p: mha_forward(x, p, n_heads=2, rope=10000.0), "rope"),
    "bias": (lambda x, p: mha_forward(x, p, n_heads=2, attn_bias=np.zeros((3, 4, 4))), "bias"),
    "cache type": (lambda x, p: mha_forward(x, p, n_heads=2, kv_cache={"k": 1}), "kv_cache"),
    "cache full": (lambda x, p: mha_forward(x, p, n_heads=2, kv_cache=KVCache.empty(2, 2, 3, 4)), "kv_cache"),
    "cache dtype": (lambda x, p: mha_forward(x, p, n_heads=2, kv_cache=KVCache.empty(2, 2, 9, 4, np.float32)),
                    "kv_cache.k"),
    "cache heads": (lambda x, p: mha_forward(x, p, n_heads=2, kv_cache=KVCache.empty(2, 4, 9, 2)), "kv_cache.k"),
    "padding": (lambda x, p: mha_forward(x, p, n_heads=2, key_padding_mask=np.zeros((2, 3), bool)),
                "key_padding_mask"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_raise_value_error(rng, name):
    fn, argname = BAD[name]
    with pytest.raises(ValueError, match=rf"^{argname}: expected .+, got .+"):
        fn(rng.standard_normal((2, 4, 8)), _params(rng))


def test_backward_refuses_decode_caches_and_bad_dy(rng):
    p = _params(rng)
    x = rng.standard_normal((2, 4, 8))
    y, cache = mha_forward(x, p, n_heads=2, kv_cache=KVCache.empty(2, 2, 4, 4))
    with pytest.raises(ValueError, match="^cache: expected"):
        mha_backward(y, cache)
    y, cache = mha_forward(x, p, n_heads=2)
    with pytest.raises(ValueError, match="^dy: expected"):
        mha_backward(y[:, :2], cache)
    with pytest.raises(ValueError, match="^cache: expected"):
        mha_backward(y, None)


def test_flash_core_by_name_equals_reference(rng):
    """The numba FlashAttention core plugs in by name: same outputs and gradients, also with a KV cache."""
    p = _params(rng)
    x = rng.standard_normal((2, 7, 8))
    dy = rng.standard_normal((2, 7, 8))
    bias = rng.standard_normal((2, 7, 7))
    opts = dict(prefix="attn", n_heads=2, attn_bias=bias, rope={"base": 100.0})
    y_ref, c_ref = mha_forward(x, p, **opts)
    y_fl, c_fl = mha_forward(x, p, core="flash", core_options={"block_q": 3, "block_k": 2}, **opts)
    np.testing.assert_allclose(y_fl, y_ref, rtol=1e-12, atol=1e-12)
    (dx_ref, g_ref), (dx_fl, g_fl) = mha_backward(dy, c_ref), mha_backward(dy, c_fl)
    np.testing.assert_allclose(dx_fl, dx_ref, rtol=1e-11, atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g_fl[k], g_ref[k], rtol=1e-11, atol=1e-12)
    cache = KVCache.empty(2, 2, 7, 4)
    got = _decode(x, p, cache, [4, 1, 2], core="flash", rope={"base": 100.0})
    full, _ = mha_forward(x, p, prefix="attn", n_heads=2, rope={"base": 100.0})
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12)
