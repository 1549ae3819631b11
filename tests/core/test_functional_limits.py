"""Infinite inputs whose limit is finite give that limit, not NaN (issue 17); NaN still propagates.

softmax(x) as one entry x_i -> +inf tends to the one-hot of i; gelu(x), silu(x) -> 0 as x -> -inf,
and their derivatives tend to 0 (x -> -inf) and 1 (x -> +inf). Each limit is checked against the
function at a large finite argument, so the test does not hard-code the answer.
"""

import numpy as np
import pytest

from scratch_transformers.core import functional as F


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_of_a_row_with_one_plus_inf_is_its_limit(dtype):
    x = np.array([[np.inf, 1.0, -2.0, -np.inf], [0.5, 1.0, np.inf, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    big = np.where(np.isposinf(x), dtype(1e4), x)                      # +inf replaced by a large finite value
    y, cache = F.softmax_forward(x)
    np.testing.assert_array_equal(y, F.softmax(big))
    lx = F.log_softmax(x)                                              # limit: 0 at the +inf entry, -inf elsewhere
    np.testing.assert_array_equal(lx[:2], np.where(np.isposinf(x[:2]), 0, -np.inf))
    np.testing.assert_array_equal(lx[2], F.log_softmax(x[2]))
    dy = np.arange(12, dtype=dtype).reshape(3, 4)
    dx = F.softmax_backward(dy, cache)
    np.testing.assert_array_equal(dx[:2], 0)                           # saturated: no gradient
    assert np.all(np.isfinite(dx))
    y, cache = F.log_softmax_forward(x)
    assert np.all(np.isfinite(F.log_softmax_backward(dy, cache)))
    assert y[0, 0] == 0 and y[1, 2] == 0


def test_softmax_along_axis_0_with_plus_inf():
    x = np.array([[np.inf, 0.0], [1.0, 2.0]])
    np.testing.assert_array_equal(F.softmax(x, axis=0), F.softmax(np.where(np.isinf(x), 1e4, x), axis=0))


def test_softmax_without_a_unique_limit_or_with_nan_is_nan():
    """Two +inf entries: their split depends on how they grow (no limit) -> NaN there, while the finite
    entries still tend to 0 (log: -inf). A NaN anywhere in a row makes the whole row NaN (the
    normaliser depends on it): it used to be dropped, giving unnormalised finite values."""
    x = np.array([[np.inf, np.inf, 0.0], [np.inf, np.nan, 0.0], [np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]])
    for f, finite_limit in ((F.softmax, 0.0), (F.log_softmax, -np.inf)):
        y = f(x)
        assert np.all(np.isnan(y[0, :2])) and y[0, 2] == finite_limit, f.__name__
        assert np.all(np.isnan(y[1:3])), f.__name__
        assert np.all(np.isfinite(y[3]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,fwd,bwd", [
    ("silu", F.silu_forward, F.silu_backward),
    ("gelu_tanh", lambda x: F.gelu_forward(x, "tanh"), F.gelu_backward),
    ("gelu_erf", lambda x: F.gelu_forward(x, "erf"), F.gelu_backward),
    ("softplus", F.softplus_forward, F.softplus_backward),
    ("sigmoid", F.sigmoid_forward, F.sigmoid_backward),
])
def test_activations_at_infinity_are_their_limits(name, fwd, bwd, dtype):
    x = np.array([-np.inf, np.inf, -1.0, 0.5], dtype=dtype)
    big = np.array([-1e4, 1e4, -1.0, 0.5], dtype=dtype)               # limits are reached by 1e4 in both dtypes
    y, cache = fwd(x)
    y_big, cache_big = fwd(big)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[[0, 2, 3]], y_big[[0, 2, 3]])
    assert y[1] == (y_big[1] if name == "sigmoid" else np.inf)
    dy = np.ones(4, dtype)
    np.testing.assert_array_equal(bwd(dy, cache), bwd(dy, cache_big))
    # the plain forms agree with the cached forms
    plain = {"silu": F.silu, "gelu_tanh": lambda v: F.gelu(v, "tanh"), "gelu_erf": lambda v: F.gelu(v, "erf"),
             "softplus": F.softplus, "sigmoid": F.sigmoid}[name]
    np.testing.assert_array_equal(plain(x), y)


@pytest.mark.parametrize("f", [F.silu, F.gelu, lambda v: F.gelu(v, "erf"), F.softplus, F.sigmoid,
                               F.softmax, F.log_softmax])
def test_nan_propagates(f):
    y = f(np.array([np.nan, 1.0]))
    assert np.isnan(y[0])
