"""core.layers.project_forward / project_backward: a named linear of a params dict, or its override."""

import numpy as np
import pytest

from scratch_transformers.core.layers import (ProjectionCache, add_grads, linear_backward, linear_forward,
                                              project_backward, project_forward)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _params(rng, bias=True):
    p = {"blk.w": rng.standard_normal((4, 3))}
    if bias:
        p["blk.b"] = rng.standard_normal(3)
    return p


def test_plain_projection_is_the_linear_bit_for_bit(rng):
    params, x, dy = _params(rng), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    y, cache = project_forward(x, params, "blk.w", "blk.b")
    y_ref, c_ref = linear_forward(x, params["blk.w"], params["blk.b"])
    np.testing.assert_array_equal(y, y_ref)
    assert isinstance(cache, ProjectionCache) and cache.override is None
    dx, grads = project_backward(dy, cache)
    dx_ref, dw_ref, db_ref = linear_backward(dy, c_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    assert list(grads) == ["blk.w", "blk.b"]
    np.testing.assert_array_equal(grads["blk.w"], dw_ref)
    np.testing.assert_array_equal(grads["blk.b"], db_ref)


def test_matches_the_formula(rng):
    params, x = _params(rng), rng.standard_normal((6, 4))
    y, _ = project_forward(x, params, "blk.w", "blk.b")
    np.testing.assert_allclose(y, x @ params["blk.w"] + params["blk.b"], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("b_name", [None, "blk.b"])
def test_absent_or_unnamed_bias_gives_no_bias_gradient(rng, b_name):
    params, x = _params(rng, bias=False), rng.standard_normal((3, 4))
    y, cache = project_forward(x, params, "blk.w", b_name)
    np.testing.assert_array_equal(y, linear_forward(x, params["blk.w"])[0])
    _, grads = project_backward(np.ones_like(y), cache)
    assert list(grads) == ["blk.w"]


class _Scaled:
    """An override: y = 2 (x @ params['blk.w']), gradient keys of its own."""

    def forward(self, x, params):
        return 2 * (x @ params["blk.w"]), (x, params["blk.w"])

    def backward(self, dy, cache):
        x, w = cache
        return 2 * dy @ w.T, {"adapter": 2 * x.T @ dy}


def test_override_replaces_the_projection(rng):
    params, x, dy = _params(rng), rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    ov = _Scaled()
    y, cache = project_forward(x, params, "blk.w", "blk.b", linears={"blk.w": ov})
    np.testing.assert_array_equal(y, 2 * (x @ params["blk.w"]))
    assert cache.override is ov and cache.b_name is None
    dx, grads = project_backward(dy, cache)
    np.testing.assert_array_equal(dx, 2 * dy @ params["blk.w"].T)
    assert list(grads) == ["adapter"]
    # an override of another weight leaves this one a plain linear
    y2, cache2 = project_forward(x, params, "blk.w", "blk.b", linears={"other.w": ov})
    assert cache2.override is None
    np.testing.assert_array_equal(y2, linear_forward(x, params["blk.w"], params["blk.b"])[0])


def test_backward_is_pure(rng):
    params, x, dy = _params(rng), rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    _, cache = project_forward(x, params, "blk.w", "blk.b")
    a, b = project_backward(dy, cache), project_backward(dy, cache)
    np.testing.assert_array_equal(a[0], b[0])
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_bad_inputs(rng):
    params, x = _params(rng), rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match="^params: expected a dict"):
        project_forward(x, [params["blk.w"]], "blk.w")
    with pytest.raises(ValueError, match="^params: expected a key 'nope'"):
        project_forward(x, params, "nope")
    with pytest.raises(ValueError, match="^linears: expected"):
        project_forward(x, params, "blk.w", linears=[_Scaled()])
    with pytest.raises(ValueError, match="^w: expected shape"):
        project_forward(rng.standard_normal((5, 7)), params, "blk.w")
    with pytest.raises(ValueError, match="^cache: expected the ProjectionCache"):
        project_backward(np.ones((5, 3)), ("linear", "blk.w", None, None))
    _, cache = project_forward(x, params, "blk.w")
    with pytest.raises(ValueError, match="^dy: expected shape"):
        project_backward(np.ones((5, 2)), cache)


def test_nan_input_propagates(rng):
    params, x = _params(rng), rng.standard_normal((3, 4))
    x[1, 2] = np.nan
    y, _ = project_forward(x, params, "blk.w", "blk.b")
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))


def test_add_grads_sums_shared_keys():
    total = {"a": np.ones(2)}
    out = add_grads(total, {"a": np.full(2, 2.0), "b": np.zeros(1)})
    assert out is total
    np.testing.assert_array_equal(total["a"], [3.0, 3.0])
    assert list(total) == ["a", "b"]
