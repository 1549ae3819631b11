"""Norms of rows whose squares overflow (issue 17): every finite row has the right output.

The references are computed with Python's decimal module (1500 significant digits, unbounded
exponent range), so they do not share the float arithmetic under test.
"""

from decimal import Decimal, getcontext

import numpy as np
import pytest

from scratch_transformers.core import layers as Lr

getcontext().prec = 1500   # enough digits to hold 1e308 + 1 exactly


def _layer_norm_ref(row, eps):
    xs = [Decimal(float(v)) for v in row]
    mu = sum(xs) / len(xs)
    var = sum((v - mu) ** 2 for v in xs) / len(xs)
    rstd = 1 / (var + Decimal(eps)).sqrt()
    return np.array([float((v - mu) * rstd) for v in xs])


def _rms_norm_ref(row, eps):
    xs = [Decimal(float(v)) for v in row]
    inv = 1 / (sum(v * v for v in xs) / len(xs) + Decimal(eps)).sqrt()
    return np.array([float(v * inv) for v in xs])


HUGE64 = [[1e200, -1e200, 0.0, 1.0], [1.7e308, 1.7e308, -1.7e308, 3.0], [1e160, 2e160, 3e160, 4e160],
          [3e154, 1.0, -2.0, 5.0]]
HUGE32 = [[1e20, -1e20, 0.0, 1.0], [3e38, 3e38, -3e38, 1.0], [2e19, 1.0, 2.0, 3.0]]


@pytest.mark.parametrize("dtype,rows,rtol", [(np.float64, HUGE64, 1e-13), (np.float32, HUGE32, 2e-6)])
def test_layer_norm_of_rows_whose_squares_overflow(dtype, rows, rtol):
    x = np.array(rows, dtype=dtype)
    d = x.shape[-1]
    y, cache = Lr.layer_norm_forward(x, np.ones(d, dtype), np.zeros(d, dtype))
    assert y.dtype == dtype and np.all(np.isfinite(y))
    for row, got in zip(x, y):
        np.testing.assert_allclose(got, _layer_norm_ref(row, 1e-5), rtol=rtol, atol=1e-300)
    dx, dw, db = Lr.layer_norm_backward(np.ones_like(y), cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


@pytest.mark.parametrize("dtype,rows,rtol", [(np.float64, HUGE64, 1e-13), (np.float32, HUGE32, 2e-6)])
def test_rms_norm_of_rows_whose_squares_overflow(dtype, rows, rtol):
    x = np.array(rows, dtype=dtype)
    d = x.shape[-1]
    y, cache = Lr.rms_norm_forward(x, np.ones(d, dtype))
    assert y.dtype == dtype and np.all(np.isfinite(y))
    for row, got in zip(x, y):
        np.testing.assert_allclose(got, _rms_norm_ref(row, 1e-6), rtol=rtol, atol=1e-300)
    dx, dw = Lr.rms_norm_backward(np.ones_like(y), cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


@pytest.mark.parametrize("k", [520, 700, 1000])
def test_norms_are_scale_equivariant_past_overflow(rng, k):
    """y(x 2^k, eps) = y(x, eps 2^-2k) and dx(x 2^k) = dx(x) 2^-k: forward and backward of a row
    far past overflow agree with the same row at ordinary size (powers of two: exact scaling)."""
    x = rng.standard_normal((3, 7))
    w, b, dy = rng.standard_normal(7), rng.standard_normal(7), rng.standard_normal((3, 7))
    big = np.ldexp(x, k)
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(big * big))                      # the naive variance overflows
    eps_small = np.ldexp(1e-5, -2 * k)
    y_big, c_big = Lr.layer_norm_forward(big, w, b, eps=1e-5)
    y_ref, c_ref = Lr.layer_norm_forward(x, w, b, eps=max(eps_small, 1e-300))
    np.testing.assert_allclose(y_big, y_ref, rtol=1e-13, atol=1e-13)
    g_big, g_ref = Lr.layer_norm_backward(dy, c_big), Lr.layer_norm_backward(dy, c_ref)
    np.testing.assert_allclose(np.ldexp(g_big[0], k), g_ref[0], rtol=1e-12, atol=1e-12)
    for a, r in zip(g_big[1:], g_ref[1:]):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)
    y_big, c_big = Lr.rms_norm_forward(big, w, eps=1e-6)
    y_ref, c_ref = Lr.rms_norm_forward(x, w, eps=max(np.ldexp(1e-6, -2 * k), 1e-300))
    np.testing.assert_allclose(y_big, y_ref, rtol=1e-13, atol=1e-13)
    g_big, g_ref = Lr.rms_norm_backward(dy, c_big), Lr.rms_norm_backward(dy, c_ref)
    np.testing.assert_allclose(np.ldexp(g_big[0], k), g_ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_big[1], g_ref[1], rtol=1e-12, atol=1e-12)


def test_constant_huge_row_gives_the_bias(rng):
    """A constant row has x - mu = 0: the output is the bias, however large the row."""
    b = rng.standard_normal(5)
    for v in (1e200, -1.5e308, 7.0):
        y, _ = Lr.layer_norm_forward(np.full((1, 5), v), np.ones(5), b)
        np.testing.assert_allclose(y[0], b, rtol=0, atol=1e-9)


def test_ordinary_rows_are_unchanged_bit_for_bit(rng):
    """The overflow path touches only rows whose variance overflowed: ordinary float64 rows give the
    same bits as the textbook formula written out here."""
    x = rng.standard_normal((4, 6, 9)) * 5 + 1
    x[0, 0] = np.ldexp(x[0, 0], 900)                                  # one huge row in the batch
    w, b = rng.standard_normal(9), rng.standard_normal(9)
    y, _ = Lr.layer_norm_forward(x, w, b)
    mu = np.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    with np.errstate(over="ignore", invalid="ignore"):
        rstd = 1.0 / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + 1e-5)
    want = xc * rstd * w + b
    assert np.array_equal(y.reshape(-1, 9)[1:], want.reshape(-1, 9)[1:])
    y, _ = Lr.rms_norm_forward(x, w)
    with np.errstate(over="ignore"):
        want = x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)) * w
    assert np.array_equal(y.reshape(-1, 9)[1:], want.reshape(-1, 9)[1:])


def test_nonfinite_rows_still_propagate_nan():
    x = np.array([[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y, _ = Lr.layer_norm_forward(x, np.ones(3), np.zeros(3))
    assert np.all(np.isnan(y[0])) and np.all(np.isnan(y[1])) and np.all(np.isfinite(y[2]))
    y, _ = Lr.rms_norm_forward(x, np.ones(3))
    assert np.all(np.isnan(y[0])) and np.isnan(y[1, 0]) and np.all(np.isfinite(y[2]))
