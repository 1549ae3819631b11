"""GLU channel mixer (arXiv 2406.02528 §3.3): the formula, the width rule, quantised output, bad inputs
(its float gradient check is a registry entry)."""

import numpy as np
import pytest

from scratch_transformers.matmulfree.bitlinear import bitlinear_forward
from scratch_transformers.matmulfree.glu import glu_backward, glu_forward, glu_hidden, glu_init


def rmsn(z, w, eps=1e-6):
    return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + eps) * w


def test_formula_float(rng):
    p = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in glu_init(5, 7, rng).items()}
    x = rng.standard_normal((2, 3, 5))
    y, _ = glu_forward(x, p, quantize=False)
    gu = rmsn(x, p["n_gu"]) @ p["w_gu"]
    g, u = gu[..., :7], gu[..., 7:]                                  # gate first, then up
    want = rmsn(g / (1 + np.exp(-g)) * u, p["n_d"]) @ p["w_d"]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_quantised_is_two_bitlinears(rng):
    p = glu_init(8, 16, rng)
    x = rng.standard_normal((4, 8))
    y, cache = glu_forward(x, p)
    gu, _ = bitlinear_forward(x, p["w_gu"], p["n_gu"])
    g, u = gu[:, :16], gu[:, 16:]
    want, _ = bitlinear_forward(g / (1 + np.exp(-g)) * u, p["w_d"], p["n_d"])
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-15)
    assert len(np.unique(cache.down.lin.inner.w)) <= 3                      # ternary down projection


def test_hidden_width_rule():
    assert glu_hidden(2048, 256) == 5632                            # the reference config (d = 2048 -> I = 5632)
    assert glu_hidden(48) == 128 and glu_hidden(64) == 170
    d = 96
    assert 3 * d * glu_hidden(d) == 8 * d * d                       # 8 d^2 parameters (§3.3)


def test_bad_inputs(rng):
    p = glu_init(4, 6, rng)
    x = rng.standard_normal((2, 4))
    with pytest.raises(ValueError, match=r"^params\['w_gu'\]: expected shape"):
        glu_forward(x, {**p, "w_gu": p["w_gu"][:, :5]})
    with pytest.raises(ValueError, match="^params: expected a dict"):
        glu_forward(x, [1, 2])
    with pytest.raises(ValueError, match="^x: expected finite"):
        glu_forward(np.full((2, 4), np.inf), p)
    y, cache = glu_forward(x, p)
    with pytest.raises(ValueError, match="^cache: expected a GLUCache"):
        glu_backward(y, tuple(cache))
