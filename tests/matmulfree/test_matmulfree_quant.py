"""absmean ternary and absmax int8 quantisers (BitNet b1.58, arXiv 2402.17764 eqs. 1-3) against hand-computed cases."""

import numpy as np
import pytest

from scratch_transformers.matmulfree.quant import SCALE_FLOOR, absmax_int8, absmean_ternary


def test_ternary_hand_computed_with_ties():
    # mean|w| = (0.5 + 1.5 + 0 + 2) / 4 = 1: w / gamma = [0.5, -1.5, 0, 2] -> rint (half to even) [0, -2, 0, 2]
    # -> clip to [-1, 1] -> [0, -1, 0, 1]
    q = absmean_ternary(np.array([[0.5, -1.5], [0.0, 2.0]]))
    np.testing.assert_array_equal(q.codes, [[0, -1], [0, 1]])
    assert q.codes.dtype == np.int8
    assert q.scale == 1.0
    np.testing.assert_array_equal(q.values, [[0.0, -1.0], [0.0, 1.0]])
    # mean|w| = 2: w / gamma = [1.25, -0.75, 0.25, 1.75] -> [1, -1, 0, 1], values = codes * 2
    q = absmean_ternary(np.array([2.5, -1.5, 0.5, 3.5]))
    np.testing.assert_array_equal(q.codes, [1, -1, 0, 1])
    np.testing.assert_array_equal(q.values, [2.0, -2.0, 0.0, 2.0])


def test_ternary_all_zero_and_tiny_weights_give_zeros_not_nan():
    q = absmean_ternary(np.zeros((3, 4)))
    assert np.all(q.codes == 0) and np.all(q.values == 0) and np.isfinite(q.scale)
    assert q.scale == SCALE_FLOOR                       # the floor, not 0 (0/0 would be NaN)
    # mean|w| = 1.33e-8 < floor: w / 1e-5 ~ 1e-3 rounds to 0 (without the floor every entry would be +-1)
    q = absmean_ternary(np.array([1e-8, -1e-8, 2e-8]))
    np.testing.assert_array_equal(q.codes, [0, 0, 0])
    assert q.scale == SCALE_FLOOR


def test_ternary_gaussian_zero_fraction():
    # P(|Z| < sqrt(2/pi)/2) = 0.3101 for Z ~ N(0, 1): gamma = E|Z| = sqrt(2/pi), zero iff |w/gamma| <= 1/2
    w = np.random.default_rng(0).standard_normal(200_000)
    frac = np.mean(absmean_ternary(w).codes == 0)
    assert abs(frac - 0.3101) < 0.005, frac


def test_int8_hand_computed_with_ties():
    # eta = 1, c = 127: [127, -63.5 -> -64 (tie to even), 31.75 -> 32, 0]
    q = absmax_int8(np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(q.codes, [[127, -64, 32, 0], [0, 0, 0, 0]])
    assert q.codes.dtype == np.int8
    np.testing.assert_allclose(q.scale[:, 0], [1 / 127, SCALE_FLOOR / 127], rtol=1e-15)
    np.testing.assert_array_equal(q.values[1], 0.0)     # all-zero token: zeros, never NaN
    np.testing.assert_allclose(q.values[0], q.codes[0] / 127.0, rtol=1e-15)


def test_int8_asymmetric_end_with_fixed_range():
    # fixed range 1: -2 * 127 = -254 -> -128 (the asymmetric end), 254 -> 127, 0.5 * 127 = 63.5 -> 64
    q = absmax_int8(np.array([-2.0, 2.0, 0.5, -1.0]), max_abs=1.0)
    np.testing.assert_array_equal(q.codes, [-128, 127, 64, -127])
    # per-token ranges broadcast over the token axis
    q = absmax_int8(np.array([[1.0, -3.0], [1.0, -3.0]]), max_abs=np.array([[1.0], [3.0]]))
    np.testing.assert_array_equal(q.codes, [[127, -128], [42, -127]])


def test_int8_matches_reference_formula_per_token(rng):
    # the reference code: c = 127 / max(max|x|, 1e-5); round(x c).clamp(-128, 127) / c
    x = rng.standard_normal((5, 7, 16)) * np.exp(rng.standard_normal((5, 7, 1)))
    q = absmax_int8(x)
    c = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    ref = np.clip(np.round(x * c), -128, 127) / c
    np.testing.assert_allclose(q.values, ref, rtol=1e-15, atol=0)
    assert np.all(np.abs(q.codes).max(-1) == 127)       # the largest entry of every token maps to +-127
    assert np.max(np.abs(q.values - x)) <= np.max(q.scale) / 2 * (1 + 1e-12)   # error <= half a step


def test_dtypes_preserved_float32(rng):
    w = rng.standard_normal((4, 5)).astype(np.float32)
    assert absmean_ternary(w).values.dtype == np.float32
    assert absmax_int8(w).values.dtype == np.float32 and absmax_int8(w).scale.dtype == np.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    a = np.ones((2, 3))
    a[1, 2] = bad
    with pytest.raises(ValueError, match="^w: expected finite"):
        absmean_ternary(a)
    with pytest.raises(ValueError, match="^x: expected finite"):
        absmax_int8(a)


def test_bad_inputs():
    with pytest.raises(ValueError, match="^w: expected dtype float"):
        absmean_ternary(np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="^w: expected a non-empty"):
        absmean_ternary(np.ones((0, 3)))
    with pytest.raises(ValueError, match="^x: expected at least 1-d"):
        absmax_int8(np.float64(1.0))
    with pytest.raises(ValueError, match="^max_abs: expected positive"):
        absmax_int8(np.ones((2, 3)), max_abs=0.0)
    with pytest.raises(ValueError, match="^max_abs: expected an array broadcastable"):
        absmax_int8(np.ones((2, 3)), max_abs=np.ones((3, 1)))
    with pytest.raises(ValueError, match="^floor: expected"):
        absmean_ternary(np.ones(3), floor=0.0)
