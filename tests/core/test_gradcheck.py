"""The public gradient checker must pass correct backwards and catch wrong ones."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(dy, cache):
    x, w = cache
    return {"x": dy @ w.T, "w": x.T @ dy}


def test_passes_a_correct_backward(rng):
    res = gradcheck(_matmul_fwd, _matmul_bwd, {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 2))})
    assert res.passed, str(res)
    assert res.max_rel_error < 1e-8
    assert [r.name for r in res.reports] == ["x", "w"]
    assert all(r.n_checked == r.n_total for r in res.reports)


def test_catches_a_wrong_backward_and_locates_it(rng):
    def bad_bwd(dy, cache):
        g = _matmul_bwd(dy, cache)
        g["w"] = g["w"].copy()
        g["w"][2, 1] += 0.5  # one wrong entry
        return g

    res = gradcheck(_matmul_fwd, bad_bwd, {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 2))})
    assert not res.passed
    w_report = res.reports[1]
    assert w_report.worst_index == (2, 1)
    assert w_report.max_rel_error > 1e-2
    assert res.reports[0].max_rel_error < 1e-8  # x is still right
    with pytest.raises(AssertionError, match="FAIL"):
        res.assert_ok()


def test_catches_a_transposed_sign_error(rng):
    def fwd(x):
        return np.tanh(x), x

    def bwd(dy, x):
        return (dy * (1 + np.tanh(x) ** 2),)  # wrong sign

    res = gradcheck(fwd, bwd, {"x": rng.standard_normal(5)})
    assert not res.passed


def test_tuple_outputs_and_tuple_gradients(rng):
    def fwd(a, b):
        return (a * b, a + b), (a, b)

    def bwd(dys, cache):
        d1, d2 = dys
        a, b = cache
        return d1 * b + d2, d1 * a + d2

    res = gradcheck(fwd, bwd, {"a": rng.standard_normal(4), "b": rng.standard_normal(4)})
    assert res.passed, str(res)


def test_max_entries_subsamples(rng):
    res = gradcheck(_matmul_fwd, _matmul_bwd, {"x": rng.standard_normal((10, 10)), "w": rng.standard_normal((10, 3))},
                    max_entries=7)
    assert [r.n_checked for r in res.reports] == [7, 7]
    assert res.passed


def test_rejects_float32_and_unknown_names(rng):
    with pytest.raises(ValueError, match="float64"):
        gradcheck(_matmul_fwd, _matmul_bwd, {"x": np.ones((2, 2), np.float32), "w": np.ones((2, 2))}, wrt=["x"])
    with pytest.raises(ValueError, match="wrt"):
        gradcheck(_matmul_fwd, _matmul_bwd, {"x": np.ones((2, 2)), "w": np.ones((2, 2))}, wrt=["nope"])
    with pytest.raises(ValueError, match="gradient of 'w'"):
        gradcheck(_matmul_fwd, lambda dy, c: {"x": dy @ c[1].T, "w": np.zeros(3)},
                  {"x": np.ones((2, 2)), "w": np.ones((2, 2))})
    with pytest.raises(ValueError, match="eps"):
        gradcheck(_matmul_fwd, _matmul_bwd, {"x": np.ones((2, 2)), "w": np.ones((2, 2))}, eps=0.0)


def test_does_not_mutate_inputs(rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 2))
    x0, w0 = x.copy(), w.copy()
    gradcheck(_matmul_fwd, _matmul_bwd, {"x": x, "w": w})
    assert np.array_equal(x, x0) and np.array_equal(w, w0)


def test_scalar_float_output(rng):
    def fwd(x):
        return float(np.sum(x ** 3)), x

    def bwd(dl, x):
        return (dl * 3 * x ** 2,)

    res = gradcheck(fwd, bwd, {"x": rng.standard_normal(6)})
    assert res.passed, str(res)
    bad = gradcheck(fwd, lambda dl, x: (3 * x ** 2,), {"x": rng.standard_normal(6)})  # ignores dl
    assert not bad.passed


def test_float32_input_is_never_silently_skipped(rng):
    """issue 17: {x: float32, w: float64} used to check only w and PASS with a backward wrong by 100x in x."""
    def bad_bwd(dy, cache):
        g = _matmul_bwd(dy, cache)
        return {"x": 100.0 * g["x"], "w": g["w"]}

    inputs = {"x": rng.standard_normal((3, 4)).astype(np.float32), "w": rng.standard_normal((4, 2))}
    with pytest.raises(ValueError, match=r"inputs\['x'\].*float64"):
        gradcheck(_matmul_fwd, bad_bwd, inputs)
    # naming the float32 input as not differentiated is an explicit choice, and the report says so
    res = gradcheck(_matmul_fwd, _matmul_bwd, inputs, wrt=["w"])
    assert res.passed
    assert res.unchecked == ["x"]
    assert "not checked: x" in str(res)


def test_float16_input_is_refused_too(rng):
    with pytest.raises(ValueError, match=r"inputs\['x'\].*float64"):
        gradcheck(_matmul_fwd, _matmul_bwd, {"x": np.ones((2, 2), np.float16), "w": np.ones((2, 2))})


def test_report_names_every_input_it_did_not_check(rng):
    def fwd(x, w, scale):
        return scale * (x @ w), (x, w, scale)

    def bwd(dy, cache):
        x, w, scale = cache
        return {"x": scale * dy @ w.T, "w": scale * x.T @ dy}

    res = gradcheck(fwd, bwd, {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 2)), "scale": 0.5})
    assert res.passed and res.unchecked == ["scale"]
    assert "not checked: scale" in str(res)
