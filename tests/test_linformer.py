"""Linformer (arXiv 2006.04768): the attention core, its gradients, padding, sharing, the multi-head layer."""

import math

import numpy as np
import pytest

from scratch_transformers.attention.multihead import init_mha, mha_backward, mha_forward
from scratch_transformers.attention.reference import attention_backward, attention_forward
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.models import encoder as enc
from scratch_transformers.linformer import (SHARING, init_projection, linformer_attention_backward,
                                            linformer_attention_forward, projection_names, projection_shapes)


def qkv(rng, b=2, h=3, n=9, d=4, dv=5, dtype=np.float64):
    return tuple(rng.standard_normal(s).astype(dtype) for s in ((b, h, n, d), (b, h, n, d), (b, h, n, dv)))


def core_grads(dy, cache):
    g = linformer_attention_backward(dy, cache)
    return {"q": g.dq, "k": g.dk, "v": g.dv, "E": g.dE, "F": g.dF}


def naive(q, k, v, E, F, pad=None):
    """eq. (7) one (batch, head) at a time with explicit loops over the slots: an independent formula."""
    b, h, n, d = q.shape
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    for bi in range(b):
        for hi in range(h):
            e = (E[hi] if E.ndim == 3 else E)[:, :n]
            f = (F[hi] if F.ndim == 3 else F)[:, :n]
            kk, vv = k[bi, hi].copy(), v[bi, hi].copy()
            if pad is not None:
                kk[pad[bi]] = 0.0
                vv[pad[bi]] = 0.0
            kp = np.array([sum(e[s, j] * kk[j] for j in range(n)) for s in range(e.shape[0])])   # (k, d)
            vp = np.array([sum(f[s, j] * vv[j] for j in range(n)) for s in range(f.shape[0])])
            for i in range(n):
                scores = np.array([q[bi, hi, i] @ kp[s] for s in range(kp.shape[0])]) / math.sqrt(d)
                w = np.exp(scores - scores.max())
                out[bi, hi, i] = (w / w.sum()) @ vp
    return out


def test_identity_projection_with_k_equal_n_is_full_attention(rng):
    """k = n and E = F = I: exactly softmax(Q K^T / sqrt d) V, forward and gradients (1e-12)."""
    q, k, v = qkv(rng)
    eye = np.eye(9)
    out, cache = linformer_attention_forward(q, k, v, eye, eye)
    ref, ref_cache = attention_forward(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(out.shape)
    got, want = linformer_attention_backward(dy, cache), attention_backward(dy, ref_cache)
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_head", [False, True])
def test_matches_an_independent_formula_with_random_projections(rng, per_head):
    q, k, v = qkv(rng, n=7)
    shape = (3, 4, 11) if per_head else (4, 11)                  # n = 11 > N = 7: first columns
    E, F = rng.standard_normal(shape), rng.standard_normal(shape)
    pad = np.zeros((2, 7), bool)
    pad[1, [0, 5]] = True
    out, _ = linformer_attention_forward(q, k, v, E, F, key_padding_mask=pad)
    np.testing.assert_allclose(out, naive(q, k, v, E, F, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_head", [False, True])
def test_gradcheck_q_k_v_e_f(rng, per_head):
    q, k, v = qkv(rng, b=2, h=2, n=5, d=3, dv=2)
    shape = (2, 3, 6) if per_head else (3, 6)
    inputs = dict(q=q, k=k, v=v, E=rng.standard_normal(shape), F=rng.standard_normal(shape))
    pad = np.array([[False] * 5, [False, True, False, False, True]])
    res = gradcheck(lambda **a: linformer_attention_forward(**a, key_padding_mask=pad), core_grads, inputs, rng=rng)
    assert res.passed, str(res)


def test_unused_columns_get_zero_gradient_and_shorter_input_uses_first_columns(rng):
    q, k, v = qkv(rng, n=6)
    E, F = rng.standard_normal((4, 10)), rng.standard_normal((4, 10))
    out, cache = linformer_attention_forward(q, k, v, E, F)
    sliced, _ = linformer_attention_forward(q, k, v, E[:, :6].copy(), F[:, :6].copy())
    np.testing.assert_array_equal(out, sliced)
    g = linformer_attention_backward(rng.standard_normal(out.shape), cache)
    assert g.dE.shape == (4, 10) and np.all(g.dE[:, 6:] == 0) and np.all(g.dF[:, 6:] == 0)
    assert np.abs(g.dE[:, :6]).min() > 0


def test_padded_positions_change_nothing(rng):
    """Anything (even NaN) in padded keys/values leaves every output bit-identical; their gradients are 0;
    with padding at the end the result equals the unpadded shorter sequence (first columns, 1e-12)."""
    q, k, v = qkv(rng, n=8)
    E, F = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    pad = np.zeros((2, 8), bool)
    pad[0, 6:] = True
    pad[1, 2] = True
    out, cache = linformer_attention_forward(q, k, v, E, F, key_padding_mask=pad)
    k2, v2 = k.copy(), v.copy()
    k2[0, :, 6:] = rng.standard_normal((3, 2, 4)) * 100
    v2[1, :, 2] = np.nan
    out2, _ = linformer_attention_forward(q, k2, v2, E, F, key_padding_mask=pad)
    np.testing.assert_array_equal(out, out2)
    g = linformer_attention_backward(rng.standard_normal(out.shape), cache)
    assert np.all(g.dk[0, :, 6:] == 0) and np.all(g.dv[1, :, 2] == 0)
    short, _ = linformer_attention_forward(q[:1, :, :6], k[:1, :, :6], v[:1, :, :6], E, F)
    np.testing.assert_allclose(out[:1, :, :6], short, rtol=1e-12, atol=1e-12)


def test_causal_is_refused_with_the_reason(rng):
    q, k, v = qkv(rng, n=4)
    with pytest.raises(ValueError, match="cannot be causal.*future"):
        linformer_attention_forward(q, k, v, np.eye(4), np.eye(4), causal=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_inputs_propagate(rng):
    q, k, v = qkv(rng, n=5)
    E, F = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    q[0, 1, 2, 0] = np.nan
    out, _ = linformer_attention_forward(q, k, v, E, F)
    assert np.all(np.isnan(out[0, 1, 2])) and np.isfinite(np.delete(out.reshape(-1, 5), 5 * 1 + 2, axis=0)).all()
    q[0, 1, 2, 0] = 0.0
    E[1, 3] = np.inf                                             # a key position feeds every slot it enters
    out, _ = linformer_attention_forward(q, k, v, E, F)
    assert np.all(np.isnan(out))


def test_float32(rng):
    q, k, v = qkv(rng, n=6, dtype=np.float32)
    E = rng.standard_normal((3, 6)).astype(np.float32)
    out, cache = linformer_attention_forward(q, k, v, E, E)
    ref, _ = linformer_attention_forward(*(a.astype(np.float64) for a in (q, k, v, E, E)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert all(g.dtype == np.float32 for g in linformer_attention_backward(np.ones_like(out), cache) if g is not None)


def test_bad_inputs(rng):
    q, k, v = qkv(rng, n=6)
    E = rng.standard_normal((3, 6))
    with pytest.raises(ValueError, match="E"):
        linformer_attention_forward(q, k, v, rng.standard_normal((3, 5)), E)          # fewer columns than N
    with pytest.raises(ValueError, match="E"):
        linformer_attention_forward(q, k, v, rng.standard_normal((2, 3, 6)), E)       # 2 heads of E for 3 heads
    with pytest.raises(ValueError, match="F"):
        linformer_attention_forward(q, k, v, E, rng.standard_normal((4, 6)))          # k differs
    with pytest.raises(ValueError, match="E"):
        linformer_attention_forward(q, k, v, E.astype(np.float32), E)
    with pytest.raises(ValueError, match="bias"):
        linformer_attention_forward(q, k, v, E, E, bias=np.zeros((6, 6)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        linformer_attention_forward(q, k, v, E, E, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="cache"):
        linformer_attention_backward(np.zeros((2, 3, 6, 5)), object())
    with pytest.raises(ValueError, match="sharing"):
        projection_names("attn", 0, "heads")


def test_sharing_modes_count_the_papers_matrices():
    """§4: a 12-layer, 12-head model has 24 (headwise), 12 (key-value), 1 (layerwise) distinct projections."""
    counts = {s: len(projection_shapes(12, 12, 256, 512, s)) for s in SHARING}
    assert counts == {"none": 24, "headwise": 24, "kv": 12, "layerwise": 1}
    assert projection_shapes(2, 12, 256, 512, "none")["blocks.0.attn.E"] == (12, 256, 512)  # one per head


def test_init_projection_is_the_jl_matrix(rng):
    r = init_projection(rng, (64, 2000))
    assert abs(r.var() - 1 / 64) < 0.05 / 64 and abs(r.mean()) < 1e-3


def test_plugs_into_the_multi_head_layer_with_kv_sharing(rng):
    """mha_forward(core='linformer') with E = F one parameter: its gradient is dE + dF (gradcheck), and
    with k = n, E = I the layer equals the reference-core layer."""
    params = init_mha(rng, 8, 2, std=0.5)
    x = rng.standard_normal((2, 6, 8))
    params["attn.E"] = np.eye(6)
    y, _ = mha_forward(x, params, n_heads=2, core="linformer", causal=False, core_params={"E": "attn.E", "F": "attn.E"})
    ref, _ = mha_forward(x, params, n_heads=2, core="reference", causal=False)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    params["attn.E"] = rng.standard_normal((3, 6))

    def fwd(x, **p):
        return mha_forward(x, p, n_heads=2, core="linformer", causal=False, core_params={"E": "attn.E", "F": "attn.E"})

    def bwd(dy, cache):
        dx, g = mha_backward(dy, cache)
        return {"x": dx, **g}

    res = gradcheck(fwd, bwd, {"x": x, **params}, wrt=["x", "attn.E", "attn.bk", "attn.wv"], rng=rng)
    assert res.passed, str(res)
    with pytest.raises(ValueError, match="core_params"):
        mha_forward(x, params, n_heads=2, core="linformer", causal=False)
    with pytest.raises(ValueError, match="cannot be causal"):
        mha_forward(x, params, n_heads=2, core="linformer", causal=True, core_params={"E": "attn.E", "F": "attn.E"})


@pytest.mark.parametrize("sharing", SHARING)
def test_encoder_with_linformer_every_sharing_mode(rng, sharing):
    """The masked-LM encoder with attention='linformer': gradients of E/F (and a few weights) under each
    sharing mode, and padded positions changing nothing (padding at the end = the shorter sequence)."""
    config = enc.EncoderConfig(vocab_size=7, mask_id=6, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=7,
                               attention="linformer", proj_k=3, sharing=sharing)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in enc.init_params(config, rng).items()}
    tokens = rng.integers(0, 7, size=(2, 6))
    pad = np.zeros((2, 6), bool)
    pad[1, 4:] = True
    wrt = [k for k in params if k.endswith((".E", ".F"))] + ["blocks.1.attn.bk", "tok_emb"]
    res = gradcheck(lambda **p: enc.forward(p, config, tokens, padding_mask=pad), enc.backward, params,
                    wrt=wrt, rng=rng, max_entries=15)
    assert res.passed, str(res)
    out, _ = enc.forward(params, config, tokens, padding_mask=pad)
    short, _ = enc.forward(params, config, tokens[1:, :4])
    np.testing.assert_allclose(out[1, :4], short[0], rtol=1e-12, atol=1e-12)
