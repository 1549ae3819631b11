"""BitLinear (arXiv 2406.02528 §3.1): the quantised forward's integer view, and the straight-through backward
is exactly the STE formula; the float form's gradient check is in the registry (checks/matmulfree.py)."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.matmulfree.bitlinear import BitLinearCache, bitlinear_backward, bitlinear_forward


def make(rng, shape=(2, 5, 8), d_out=6, dtype=np.float64):
    x = rng.standard_normal(shape).astype(dtype)
    w = (0.1 * rng.standard_normal((shape[-1], d_out))).astype(dtype)
    nw = (1 + 0.2 * rng.standard_normal(shape[-1])).astype(dtype)
    return x, w, nw


def rms(x, nw, eps=1e-6):
    r = 1 / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    return x * r * nw, x * r, r


def test_forward_is_int8_times_ternary_then_scales(rng):
    x, w, nw = make(rng)
    y, _ = bitlinear_forward(x, w, nw)
    x_bar = rms(x, nw)[0]
    eta = np.abs(x_bar).max(-1, keepdims=True)
    cx = np.clip(np.rint(x_bar * 127 / eta), -128, 127)            # int8 codes, written out independently
    gamma = np.mean(np.abs(w))
    cw = np.clip(np.rint(w / gamma), -1, 1)
    assert set(np.unique(cw)) <= {-1.0, 0.0, 1.0}
    acc = np.einsum("btk,kn->btn", cx.astype(np.int64), cw.astype(np.int64))   # exact integer product
    np.testing.assert_allclose(y, acc * (eta / 127) * gamma, rtol=1e-13, atol=1e-13)


def test_backward_is_exactly_the_ste_formula(rng):
    x, w, nw = make(rng)
    y, cache = bitlinear_forward(x, w, nw)
    g = rng.standard_normal(y.shape)
    dx, dw, dnw = bitlinear_backward(g, cache)
    x_q, w_q = cache.lin.inner.x, cache.lin.inner.w
    assert len(np.unique(w_q)) <= 3                                 # the cache holds the quantised operands
    x_bar, x_hat, r = rms(x, nw)
    dw_ste = np.einsum("btk,btn->kn", x_q, g)                       # dW = x_q^T g  (latent W gets W_q's gradient)
    dxbar = g @ w_q.T                                               # dx_bar = g W_q^T
    q = dxbar * nw
    dx_ste = r * (q - x_hat * np.mean(q * x_hat, -1, keepdims=True))
    np.testing.assert_allclose(dw, dw_ste, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dnw, np.sum(dxbar * x_hat, axis=(0, 1)), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dx, dx_ste, rtol=1e-13, atol=1e-14)
    # the STE differs from the float layer's gradient (the test would fail if quantisation were skipped)
    _, fcache = bitlinear_forward(x, w, nw, quantize=False)
    assert not np.allclose(bitlinear_backward(g, fcache)[1], dw)


def test_float_form_gradcheck_and_plain_formula(rng):
    x, w, nw = make(rng, shape=(3, 7))
    y, _ = bitlinear_forward(x, w, nw, quantize=False)
    np.testing.assert_allclose(y, rms(x, nw)[0] @ w, rtol=1e-14, atol=1e-14)
    res = gradcheck(lambda x, w, nw: bitlinear_forward(x, w, nw, quantize=False), bitlinear_backward,
                    {"x": x, "w": w, "nw": nw}, wrt=("x", "w", "nw"))
    res.assert_ok()


def test_float32_and_zero_input(rng):
    x, w, nw = make(rng, dtype=np.float32)
    y, cache = bitlinear_forward(x, w, nw)
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in bitlinear_backward(np.ones_like(y), cache))
    y0, _ = bitlinear_forward(np.zeros((2, 8)), np.zeros((8, 3)), np.ones(8))
    assert np.all(y0 == 0)                                          # all-zero token and weights: 0, not NaN


def test_non_finite_policy(rng):
    x, w, nw = make(rng)
    x[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="^x: expected finite"):
        bitlinear_forward(x, w, nw)
    y, _ = bitlinear_forward(x, w, nw, quantize=False)              # the float layer propagates NaN
    assert np.all(np.isnan(y[0, 1])) and np.all(np.isfinite(np.delete(y.reshape(-1, 6), 1, axis=0)))
    x, w, nw = make(rng)
    w[0, 0] = np.inf
    with pytest.raises(ValueError, match="^w: expected finite"):
        bitlinear_forward(x, w, nw)


def test_bad_inputs(rng):
    x, w, nw = make(rng)
    with pytest.raises(ValueError, match="^w: expected shape"):
        bitlinear_forward(x, w[:-1], nw)
    with pytest.raises(ValueError, match="^norm_weight: expected shape"):
        bitlinear_forward(x, w, nw[:-1])
    with pytest.raises(ValueError, match="^w: expected dtype float64"):
        bitlinear_forward(x, w.astype(np.float32), nw)
    with pytest.raises(ValueError, match="^quantize: expected True or False"):
        bitlinear_forward(x, w, nw, quantize="yes")
    y, cache = bitlinear_forward(x, w, nw)
    with pytest.raises(ValueError, match="^dy: expected shape"):
        bitlinear_backward(y[..., :-1], cache)
    with pytest.raises(ValueError, match="^cache: expected a BitLinearCache"):
        bitlinear_backward(y, tuple(cache))
    bad = BitLinearCache(cache.norm, cache.lin._replace(inner=cache.lin.inner._replace(w=w[:-1])), True)
    with pytest.raises(ValueError, match="^cache: expected consistent shapes"):
        bitlinear_backward(y, bad)
