"""Materialised attention vs explicit per-(i, j) Python loops, its gradient, and the hard cases."""

import math
import warnings

import numpy as np
import pytest

from scratch_transformers.attention.reference import attention_backward, attention_forward
from scratch_transformers.core.gradcheck import gradcheck


def loop_attention(q, k, v, *, scale=None, causal=False, alignment="top_left", bias=None, pad=None,
                   dropout_p=0.0, keep=None):
    """Independent reference: one score at a time, in Python floats (no vectorised softmax)."""
    b_, h_, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    full = (b_, h_, n_q, n_k)
    bias = None if bias is None else np.broadcast_to(bias, full)
    keep = None if keep is None else np.broadcast_to(keep, full)
    out = np.zeros((b_, h_, n_q, d_v))
    lse = np.zeros((b_, h_, n_q))
    for b in range(b_):
        for h in range(h_):
            for i in range(n_q):
                scores = {}
                for j in range(n_k):
                    if causal:
                        limit = i if alignment == "top_left" else i + n_k - n_q
                        if j > limit:
                            continue
                    if pad is not None and pad[b, j]:
                        continue
                    s = scale * sum(float(q[b, h, i, t]) * float(k[b, h, j, t]) for t in range(d))
                    if bias is not None:
                        s += float(bias[b, h, i, j])
                    if s == -math.inf:
                        continue
                    scores[j] = s
                if not scores:
                    lse[b, h, i] = -math.inf
                    continue
                m = max(scores.values())
                total = sum(math.exp(s - m) for s in scores.values())
                lse[b, h, i] = m + math.log(total)
                for j, s in scores.items():
                    w = math.exp(s - m) / total
                    if keep is not None:
                        w = w * float(keep[b, h, i, j]) / (1.0 - dropout_p)
                    out[b, h, i] += w * v[b, h, j]
    return out, lse


def _qkv(rng, b=2, h=2, n_q=4, n_k=4, d=3, d_v=None, scale=1.0):
    d_v = d if d_v is None else d_v
    return (scale * rng.standard_normal((b, h, n_q, d)), scale * rng.standard_normal((b, h, n_k, d)),
            rng.standard_normal((b, h, n_k, d_v)))


CASES = {
    "plain": dict(),
    "causal_square": dict(causal=True),
    "top_left_nq_lt_nk": dict(causal=True, alignment="top_left", n_q=3, n_k=6),
    "bottom_right_nq_lt_nk": dict(causal=True, alignment="bottom_right", n_q=3, n_k=6),
    "top_left_nq_gt_nk": dict(causal=True, alignment="top_left", n_q=6, n_k=3),
    "bottom_right_nq_gt_nk": dict(causal=True, alignment="bottom_right", n_q=6, n_k=3),  # rows 0-2 see nothing
    "bias_full": dict(bias_shape=(2, 2, 4, 4)),
    "bias_heads": dict(bias_shape=(2, 1, 4), causal=True),
    "bias_2d": dict(bias_shape=(4, 4)),
    "bias_keys": dict(bias_shape=(1, 2, 1, 4)),
    "padding": dict(pad=True, causal=True),
    "dropout": dict(dropout=True, causal=True, d_v=5),
    "everything": dict(causal=True, alignment="bottom_right", n_q=3, n_k=5, bias_shape=(2, 3, 5), pad=True,
                       dropout=True, scale=0.3),
}


def _build(rng, case):
    n_q, n_k = case.get("n_q", 4), case.get("n_k", 4)
    q, k, v = _qkv(rng, n_q=n_q, n_k=n_k, d_v=case.get("d_v"))
    kw = dict(causal=case.get("causal", False), causal_alignment=case.get("alignment", "top_left"),
              scale=case.get("scale"))
    if "bias_shape" in case:
        kw["bias"] = rng.standard_normal(case["bias_shape"])
    if case.get("pad"):
        pad = rng.random((2, n_k)) < 0.3
        pad[0, :] = False
        pad[1, :n_k // 2] = True        # some rows of batch 1 fully masked when causal
        kw["key_padding_mask"] = pad
    if case.get("dropout"):
        kw["dropout_p"] = 0.25
        kw["dropout_mask"] = rng.random((2, 2, n_q, n_k)) > 0.25
    return q, k, v, kw


def _loop_kwargs(kw):
    return dict(scale=kw.get("scale"), causal=kw["causal"], alignment=kw["causal_alignment"], bias=kw.get("bias"),
                pad=kw.get("key_padding_mask"), dropout_p=kw.get("dropout_p", 0.0), keep=kw.get("dropout_mask"))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_loops_float64(rng, name):
    q, k, v, kw = _build(rng, CASES[name])
    out, cache = attention_forward(q, k, v, **kw)
    want_out, want_lse = loop_attention(q, k, v, **_loop_kwargs(kw))
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.lse, want_lse, rtol=1e-12, atol=1e-12)   # -inf == -inf is accepted
    assert out.dtype == np.float64 and cache.lse.shape == q.shape[:3]


def test_alignments_differ_only_when_lengths_differ(rng):
    q, k, v = _qkv(rng, n_q=4, n_k=4)
    a, _ = attention_forward(q, k, v, causal=True, causal_alignment="top_left")
    b, _ = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right")
    np.testing.assert_array_equal(a, b)
    q, k, v = _qkv(rng, n_q=2, n_k=5)
    a, _ = attention_forward(q, k, v, causal=True, causal_alignment="top_left")
    b, _ = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right")
    assert np.max(np.abs(a - b)) > 1e-3
    # bottom-right: the last query sees every key, i.e. equals non-causal attention for that row
    full, _ = attention_forward(q, k, v)
    np.testing.assert_allclose(b[:, :, -1], full[:, :, -1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["plain", "bottom_right_nq_gt_nk", "bias_heads", "bias_2d", "bias_keys",
                                  "padding", "dropout", "everything"])
def test_backward_gradcheck_float64(rng, name):
    q, k, v, kw = _build(rng, CASES[name])
    bias = kw.pop("bias", None)
    inputs = dict(q=q, k=k, v=v)
    wrt = ["q", "k", "v"]
    if bias is not None:
        inputs["bias"] = bias
        wrt.append("bias")

    def fwd(**x):
        return attention_forward(x["q"], x["k"], x["v"], bias=x.get("bias"), **kw)

    def bwd(dy, cache):
        dq, dk, dv, dbias = attention_backward(dy, cache)
        assert (dbias is None) == (bias is None)
        return dq, dk, dv, *([] if bias is None else [dbias])

    res = gradcheck(fwd, bwd, inputs, wrt=wrt, eps=1e-6, tol=1e-7, rng=rng)
    assert res.passed, str(res)


def test_dbias_has_bias_shape_and_sums_ds(rng):
    q, k, v = _qkv(rng)
    dout = rng.standard_normal(q.shape)
    full_bias = rng.standard_normal((2, 2, 4, 4))
    _, c_full = attention_forward(q, k, v, bias=full_bias)
    _, c_head = attention_forward(q, k, v, bias=np.zeros((2, 1, 1)))
    ds_full = attention_backward(dout, c_full)[3]
    assert ds_full.shape == (2, 2, 4, 4)
    # a zero per-head bias gives the same S as no bias: its gradient is dS summed over (B, Nq, Nk)
    _, c0 = attention_forward(q, k, v, bias=np.zeros((2, 2, 4, 4)))
    ds0 = attention_backward(dout, c0)[3]
    dh = attention_backward(dout, c_head)[3]
    assert dh.shape == (2, 1, 1)
    np.testing.assert_allclose(dh[:, 0, 0], ds0.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    # a row's dS sums to zero (softmax is shift invariant), so a per-query bias gets zero gradient
    _, cq = attention_forward(q, k, v, bias=np.zeros((4, 1)))
    np.testing.assert_allclose(attention_backward(dout, cq)[3], 0.0, atol=1e-12)


def test_fully_masked_rows_zero_output_lse_minus_inf_no_nan(rng):
    q, k, v = _qkv(rng, n_q=3, n_k=3)
    pad = np.array([[False, False, False], [True, True, True]])      # batch 1: every key padded
    dout = rng.standard_normal(q.shape)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out, cache = attention_forward(q, k, v, key_padding_mask=pad, causal=True)
        dq, dk, dv, _ = attention_backward(dout, cache)
    assert np.all(out[1] == 0.0) and np.all(cache.lse[1] == -np.inf)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(cache.lse[0]))
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(g)) and np.all(g[1] == 0.0)
    # the unmasked batch element is unaffected by the other's padding
    out0, _ = attention_forward(q[:1], k[:1], v[:1], causal=True)
    np.testing.assert_array_equal(out[:1], out0)


def test_minus_inf_bias_masks_like_padding(rng):
    q, k, v = _qkv(rng)
    pad = np.array([[False, True, False, False], [False, False, False, True]])
    bias = np.where(pad[:, None, None, :], -np.inf, 0.0)
    a, ca = attention_forward(q, k, v, key_padding_mask=pad)
    b, cb = attention_forward(q, k, v, bias=bias)
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    dout = rng.standard_normal(a.shape)
    for ga, gb in zip(attention_backward(dout, ca)[:3], attention_backward(dout, cb)[:3]):
        np.testing.assert_allclose(ga, gb, rtol=1e-13, atol=1e-13)


def test_logits_of_1e4_are_finite_and_pick_the_argmax(rng):
    q, k, v = _qkv(rng, d=4)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True) * 200.0
    k = k / np.linalg.norm(k, axis=-1, keepdims=True) * 200.0          # scores up to 4e4 / sqrt(4) = 2e4
    out, cache = attention_forward(q, k, v, causal=True)
    s = np.einsum("bhid,bhjd->bhij", q, k) / 2.0
    assert np.max(np.abs(s)) > 1e4
    s = np.where(np.tril(np.ones((4, 4), dtype=bool)), s, -np.inf)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(cache.lse))
    np.testing.assert_allclose(cache.lse, s.max(-1), rtol=1e-12)       # the gap between scores is >> 40
    pick = np.take_along_axis(v, s.argmax(-1)[..., None], axis=2)
    np.testing.assert_allclose(out, pick, rtol=1e-9, atol=1e-9)
    grads = attention_backward(rng.standard_normal(out.shape), cache)
    assert all(np.all(np.isfinite(g)) for g in grads[:3])
    want_out, _ = loop_attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)


def test_length_one(rng):
    q, k, v = _qkv(rng, n_q=1, n_k=1)
    out, cache = attention_forward(q, k, v, causal=True)
    np.testing.assert_array_equal(out, v)                                # softmax over one key is 1
    np.testing.assert_allclose(cache.lse, np.sum(q * k, -1) / np.sqrt(3), rtol=1e-14)
    dq, dk, dv, _ = attention_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dv, np.ones_like(v))
    np.testing.assert_allclose(dq, 0.0, atol=1e-14)                      # dS = P (dP - D) = 1 * (x - x)
    np.testing.assert_allclose(dk, 0.0, atol=1e-14)


def test_float32_in_float32_out(rng):
    q, k, v, kw = _build(rng, CASES["everything"])
    kw["bias"] = kw["bias"].astype(np.float32)
    q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
    out, cache = attention_forward(q32, k32, v32, **kw)
    dout = rng.standard_normal(out.shape)
    grads = attention_backward(dout.astype(np.float32), cache)
    assert out.dtype == np.float32 and cache.lse.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
    kw["bias"] = kw["bias"].astype(np.float64)
    out64, c64 = attention_forward(q, k, v, **kw)
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)
    for g32, g64 in zip(grads, attention_backward(dout, c64)):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4)


def test_backward_is_pure(rng):
    q, k, v, kw = _build(rng, CASES["everything"])
    out, cache = attention_forward(q, k, v, **kw)
    dout = rng.standard_normal(out.shape)
    first = attention_backward(dout, cache)
    second = attention_backward(dout, cache)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


BAD = {
    "q 3-d": (lambda q, k, v: attention_forward(q[0], k, v), "q"),
    "q int": (lambda q, k, v: attention_forward(q.astype(np.int64), k, v), "q"),
    "k head dim": (lambda q, k, v: attention_forward(q, k[..., :2], v), "k"),
    "k batch": (lambda q, k, v: attention_forward(q, k[:1], v), "k"),
    "k dtype": (lambda q, k, v: attention_forward(q, k.astype(np.float32), v), "k"),
    "v length": (lambda q, k, v: attention_forward(q, k, v[:, :, :2]), "v"),
    "no keys": (lambda q, k, v: attention_forward(q, k[:, :, :0], v[:, :, :0]), "k"),
    "scale": (lambda q, k, v: attention_forward(q, k, v, scale=-1.0), "scale"),
    "causal": (lambda q, k, v: attention_forward(q, k, v, causal="yes"), "causal"),
    "alignment": (lambda q, k, v: attention_forward(q, k, v, causal=True, causal_alignment="diagonal"),
                  "causal_alignment"),
    "bias shape": (lambda q, k, v: attention_forward(q, k, v, bias=np.zeros((3, 4, 4))), "bias"),
    "bias dtype": (lambda q, k, v: attention_forward(q, k, v, bias=np.zeros((4, 4), np.float32)), "bias"),
    "bias nan": (lambda q, k, v: attention_forward(q, k, v, bias=np.full((4, 4), np.nan)), "bias"),
    "pad dtype": (lambda q, k, v: attention_forward(q, k, v, key_padding_mask=np.zeros((2, 4))), "key_padding_mask"),
    "pad shape": (lambda q, k, v: attention_forward(q, k, v, key_padding_mask=np.zeros((2, 3), bool)),
                  "key_padding_mask"),
    "dropout no mask": (lambda q, k, v: attention_forward(q, k, v, dropout_p=0.1), "dropout_mask"),
    "dropout p": (lambda q, k, v: attention_forward(q, k, v, dropout_p=1.0, dropout_mask=np.ones((4, 4), bool)),
                  "dropout_p"),
    "dropout mask shape": (lambda q, k, v: attention_forward(q, k, v, dropout_p=0.1,
                                                             dropout_mask=np.ones((3, 4), bool)), "dropout_mask"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_raise_value_error(rng, name):
    fn, argname = BAD[name]
    q, k, v = _qkv(rng)
    with pytest.raises(ValueError, match=rf"^{argname}: expected .+, got .+"):
        fn(q, k, v)


def test_backward_bad_inputs(rng):
    q, k, v = _qkv(rng)
    out, cache = attention_forward(q, k, v)
    with pytest.raises(ValueError, match="^dout: expected"):
        attention_backward(out[:, :, :2], cache)
    with pytest.raises(ValueError, match="^dout: expected"):
        attention_backward(out.astype(np.float32), cache)
    with pytest.raises(ValueError, match="^cache: expected"):
        attention_backward(out, (q, k, v))


def test_flash_and_reference_reject_bad_options_identically():
    """Both cores validate through attention.reference.check_attention_args: same errors."""
    from scratch_transformers.attention.flash import flash_attention_forward

    q = np.zeros((1, 2, 3, 4))
    bad = [dict(k=np.zeros((1, 2, 3, 5))), dict(causal_alignment="middle"), dict(causal=1),
           dict(bias=np.zeros((2, 2))), dict(key_padding_mask=np.zeros((1, 3))), dict(scale=-1.0),
           dict(v=np.zeros((1, 2, 3, 0)))]
    for kw in bad:
        args = dict(q=q, k=np.zeros((1, 2, 3, 4)), v=np.zeros((1, 2, 3, 4)))
        args.update(kw)
        msgs = []
        for fn in (attention_forward, flash_attention_forward):
            with pytest.raises(ValueError) as exc:
                fn(**args)
            msgs.append(str(exc.value))
        assert msgs[0] == msgs[1], (kw, msgs)
