"""Activations: independent formulations, hard cases, properties, validation, dtypes.

Gradient checks of every backward run from the registry (tests/test_registry.py)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratch_transformers.core import functional as F

FWD_BWD = [
    (F.softmax_forward, F.softmax_backward),
    (F.log_softmax_forward, F.log_softmax_backward),
    (F.sigmoid_forward, F.sigmoid_backward),
    (F.silu_forward, F.silu_backward),
    (F.gelu_forward, F.gelu_backward),
    (lambda x: F.gelu_forward(x, "erf"), F.gelu_backward),
    (F.softplus_forward, F.softplus_backward),
]


# ---------------------------------------------------------------- independent formulations

def test_softmax_matches_naive_formula(rng):
    x = rng.standard_normal((4, 7))
    naive = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(F.softmax(x), naive, rtol=1e-14, atol=0)
    np.testing.assert_allclose(F.softmax(x, axis=0), np.exp(x) / np.exp(x).sum(0), rtol=1e-14)


def test_log_softmax_is_log_of_softmax(rng):
    x = rng.standard_normal((3, 2, 9)) * 4
    np.testing.assert_allclose(F.log_softmax(x, axis=1), np.log(F.softmax(x, axis=1)), rtol=1e-13, atol=1e-13)


def test_softmax_backward_equals_explicit_jacobian(rng):
    x, dy = rng.standard_normal(6), rng.standard_normal(6)
    y, cache = F.softmax_forward(x)
    jac = np.diag(y) - np.outer(y, y)                     # dy_i/dx_j
    np.testing.assert_allclose(F.softmax_backward(dy, cache), jac.T @ dy, rtol=1e-13, atol=1e-15)


def test_sigmoid_silu_softplus_match_naive_on_moderate_inputs(rng):
    x = rng.uniform(-20, 20, size=200)
    np.testing.assert_allclose(F.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(F.silu(x), x / (1 + np.exp(-x)), rtol=1e-13)
    np.testing.assert_allclose(F.softplus(x), np.log1p(np.exp(x)), rtol=1e-13)  # exp(x) fine for x <= 20


def test_erf_matches_math_erf():
    xs = np.concatenate([np.linspace(-7, 7, 4001), np.geomspace(1e-300, 1e-3, 50), [0.0, -0.0, 2.5, -2.5, 30.0]])
    want = np.array([math.erf(v) for v in xs])
    got = F.erf(xs)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-16)
    wantc = np.array([math.erfc(v) for v in xs])
    np.testing.assert_allclose(F.erfc(xs), wantc, rtol=1e-13, atol=1e-300)   # relative, tails included
    big = np.array([-np.inf, np.inf, 1e4, -1e4])
    np.testing.assert_array_equal(F.erf(big), [-1.0, 1.0, 1.0, -1.0])


def test_erfc_tail_relative_accuracy():
    xs = np.linspace(1.0, 26, 500)
    want = np.array([math.erfc(v) for v in xs])
    np.testing.assert_allclose(F.erfc(xs), want, rtol=1e-13)


def test_gelu_erf_matches_math_erf_formula():
    xs = np.linspace(-10, 10, 2001)
    want = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xs])   # = x (1 + erf(x/sqrt2)) / 2
    np.testing.assert_allclose(F.gelu(xs, "erf"), want, rtol=1e-13, atol=1e-15)


def test_gelu_tanh_close_to_exact_and_matches_formula():
    xs = np.linspace(-6, 6, 1201)
    tanh_form = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs ** 3)))
    np.testing.assert_allclose(F.gelu(xs), tanh_form, rtol=1e-14, atol=1e-16)
    assert np.max(np.abs(F.gelu(xs) - F.gelu(xs, "erf"))) < 1e-3   # the approximation is close


# ---------------------------------------------------------------- hard cases

def test_large_inputs_are_finite_and_right():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    np.testing.assert_array_equal(F.sigmoid(x)[[0, 4]], [0.0, 1.0])
    assert F.sigmoid(np.array([-50.0]))[0] == pytest.approx(math.exp(-50) / (1 + math.exp(-50)), rel=1e-14)
    sp = F.softplus(x)
    assert sp[4] == 1e4 and sp[0] == 0.0
    assert F.softplus(np.array([-700.0]))[0] == pytest.approx(math.exp(-700), rel=1e-14)
    assert F.softplus(np.array([0.0]))[0] == pytest.approx(math.log(2), rel=1e-15)
    for fwd, bwd in FWD_BWD:
        y, cache = fwd(x)
        dx = bwd(np.ones_like(y), cache)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), fwd
    np.testing.assert_allclose(F.gelu(x)[[0, 4]], [0.0, 1e4])
    np.testing.assert_allclose(F.gelu(x, "erf")[[0, 4]], [0.0, 1e4])


def test_softmax_large_logits_and_length_one():
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]])
    np.testing.assert_allclose(F.softmax(x), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)
    np.testing.assert_allclose(F.log_softmax(x)[0], [0.0, -1e4, -2e4])
    np.testing.assert_array_equal(F.softmax(np.array([[3.0]])), [[1.0]])
    np.testing.assert_array_equal(F.log_softmax(np.array([[3.0]])), [[0.0]])


def test_fully_masked_rows_give_zero_not_nan():
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]])
    y, cache = F.softmax_forward(x)
    np.testing.assert_array_equal(y, [[0.0, 0.0], [1.0, 0.0]])
    assert np.all(np.isfinite(F.softmax_backward(np.ones_like(x), cache)))
    ls, lcache = F.log_softmax_forward(x)
    assert not np.any(np.isnan(ls)) and ls[1, 0] == 0.0 and np.all(ls[0] == -np.inf)
    dx = F.log_softmax_backward(np.ones_like(x), lcache)
    assert np.all(np.isfinite(dx))


# ---------------------------------------------------------------- properties

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite))
def test_softmax_rows_are_distributions(x):
    y = F.softmax(x)
    assert y.shape == x.shape
    assert np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    ls = F.log_softmax(x)
    assert np.all(ls <= 0) and np.all(np.isfinite(ls))


huge = st.floats(min_value=-1e308, max_value=1e308, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), elements=huge))
def test_softmax_rows_are_distributions_over_the_whole_float_range(x):
    with np.errstate(over="ignore"):   # x - max may overflow to -inf: exp(-inf) = 0 is then exact
        y = F.softmax(x)
        ls = F.log_softmax(x)
    assert np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    assert not np.any(np.isnan(ls)) and np.all(ls <= 0)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6), elements=finite))
def test_elementwise_shapes_and_bounds(x):
    s = F.sigmoid(x)
    assert s.shape == x.shape and np.all((s >= 0) & (s <= 1))
    sp = F.softplus(x)
    assert np.all(sp >= np.maximum(x, 0)) and np.all(np.isfinite(sp))
    for approx in ("tanh", "erf"):
        g = F.gelu(x, approximate=approx)
        assert g.shape == x.shape and np.all(np.isfinite(g))


# ---------------------------------------------------------------- dtypes and validation

@pytest.mark.parametrize("fwd,bwd", FWD_BWD)
def test_float32_in_float32_out(fwd, bwd, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y, cache = fwd(x)
    dx = bwd(np.ones_like(y), cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    y64, _ = fwd(x.astype(np.float64))
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)


def test_plain_forms_keep_float32():
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    for f in (F.softmax, F.log_softmax, F.sigmoid, F.silu, F.gelu, F.softplus, F.erf, F.erfc):
        assert f(x).dtype == np.float32, f


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="x: expected dtype float32 or float64"):
        F.softmax(np.arange(3))
    with pytest.raises(ValueError, match="axis"):
        F.softmax(np.zeros((2, 3)), axis=2)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(np.zeros(3), approximate="fast")
    with pytest.raises(ValueError, match="x: expected a numpy array"):
        F.sigmoid("abc")
    _, cache = F.softmax_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy: expected shape"):
        F.softmax_backward(np.zeros((3, 2)), cache)


def test_backward_is_pure(rng):
    x, dy = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    for fwd, bwd in FWD_BWD:
        _, cache = fwd(x)
        np.testing.assert_array_equal(bwd(dy, cache), bwd(dy, cache))


def test_softmax_and_log_softmax_rows_with_nan_are_all_nan():
    # a NaN makes the whole row's normaliser NaN; no entry of that row may look valid
    x = np.array([[1.0, np.nan, 0.5], [1.0, 2.0, 3.0]])
    for y in (F.softmax(x), F.log_softmax(x)):
        assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1]))
