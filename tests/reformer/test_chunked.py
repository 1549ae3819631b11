"""Chunked feed-forward (Reformer eq. 10): bit-identical to the unchunked function, bounded memory."""

import numpy as np
import pytest

from scratch_transformers.checks.reformer import tanh_linear
from scratch_transformers.core.measure import traced_peak
from scratch_transformers.reformer.chunked import chunked_backward, chunked_forward
from scratch_transformers.reformer.reversible import RevFunction


def wide_ff(rng, d=8, d_ff=64):
    """y = relu(x W1) W2: a position-wise feed-forward with a wide intermediate."""
    w1, w2 = rng.standard_normal((d, d_ff)), rng.standard_normal((d_ff, d))

    def forward(x):
        h = np.maximum(x @ w1, 0.0)                                  # (..., T, d_ff)
        return h @ w2, (x, h)

    def backward(dy, cache):
        x, h = cache
        dh = (dy @ w2.T) * (h > 0)
        lead = tuple(range(dy.ndim - 1))
        return dh @ w1.T, {"w1": np.tensordot(x, dh, axes=(lead, lead)), "w2": np.tensordot(h, dy, axes=(lead, lead))}

    return RevFunction(forward, backward)


@pytest.mark.parametrize("chunk", [2, 3, 7, 9, 64, 100])       # 3, 7, 9: 1-row remainders (merged)
def test_chunked_equals_unchunked_bit_for_bit(rng, chunk):
    fn = wide_ff(rng)
    x = rng.standard_normal((3, 64, 8))
    y_full, c_full = fn.forward(x)
    y, cache = chunked_forward(x, fn, chunk_size=chunk)
    assert np.array_equal(y, y_full)
    dy = rng.standard_normal(y.shape)
    dx_full, g_full = fn.backward(dy, c_full)
    dx, g = chunked_backward(dy, cache)
    assert np.array_equal(dx, dx_full)
    for k in g_full:                                                 # sums of partial sums: equal to rounding
        np.testing.assert_allclose(g[k], g_full[k], rtol=1e-13, atol=1e-12)


def test_memory_is_bounded_by_the_chunk(rng):
    fn = wide_ff(rng, d=8, d_ff=512)
    x = rng.standard_normal((1, 2048, 8))                            # full intermediate: 8 MB
    dy = np.ones_like(x)
    full = traced_peak(lambda: fn.backward(dy, fn.forward(x)[1]))[0]

    def chunked():
        _, cache = chunked_forward(x, fn, chunk_size=64)
        return chunked_backward(dy, cache)

    part = traced_peak(chunked)[0]
    assert part < full / 8


def test_bad_inputs(rng):
    params = {"ff.w": rng.standard_normal((4, 4)), "ff.b": np.zeros(4)}
    fn = tanh_linear(params, "ff")
    x = rng.standard_normal((2, 5, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_forward(x, fn, chunk_size=1)
    with pytest.raises(ValueError, match="fn"):
        chunked_forward(x, (fn.forward, fn.backward), chunk_size=2)
    with pytest.raises(ValueError, match="x"):
        chunked_forward(x[0, 0], fn, chunk_size=2)
    y, cache = chunked_forward(x, fn, chunk_size=2)
    with pytest.raises(ValueError, match="dy"):
        chunked_backward(y[:, :3], cache)
    with pytest.raises(ValueError, match="cache"):
        chunked_backward(y, tuple(cache))
