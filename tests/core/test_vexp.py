"""The vectorisable exponential shared by the numba kernels (core/vexp.py), against NumPy's exp."""

import numpy as np

from scratch_transformers.core.vexp import exp_buffer, softplus_from_exp


def _run(x):
    got = x.copy()
    exp_buffer(got, np.empty(x.size, np.int64), np.empty(x.size, np.int32))
    return got


def test_float64_within_2_ulp_and_the_ends(rng):
    x = np.concatenate([-rng.random(20000) * 50, rng.random(2000) * 50, -rng.random(2000) * 800,
                        [0.0, -0.0, 1e-16, -1e-300, -707.9, 708.9]])
    want = np.exp(x)
    got = _run(x)
    flushed = x < -708.0                                        # exp < 3.3e-308, near-subnormal: 0
    assert np.all(got[flushed] == 0.0)
    assert np.max(np.abs(got[~flushed] - want[~flushed]) / want[~flushed]) < 4.5e-16
    ends = _run(np.array([-np.inf, -745.0, -709.0, 710.0, np.inf]))
    assert np.array_equal(ends, [0.0, 0.0, 0.0, np.inf, np.inf])


def test_float32_within_3_ulp_and_the_ends(rng):
    x = np.concatenate([-rng.random(20000) * 50, rng.random(2000) * 50, -rng.random(2000) * 120]).astype(np.float32)
    want = np.exp(x.astype(np.float64))
    got = _run(x)
    assert got.dtype == np.float32
    fin = (want > 1e-30) & (want < 1e38)
    assert np.max(np.abs(got[fin] - want[fin]) / want[fin]) < 3.6e-7            # 3 float32 ulps
    assert np.all(got[x < -87.0] == 0.0)
    ends = _run(np.array([-np.inf, -90.0, 89.0, np.inf], np.float32))
    assert np.array_equal(ends, np.array([0.0, 0.0, np.inf, np.inf], np.float32))


def test_works_on_a_slice_and_leaves_the_rest():
    x = np.array([0.0, 1.0, -1.0, 5.0])
    bits64, bits32 = np.empty(4, np.int64), np.empty(0, np.int32)
    exp_buffer(x[:2], bits64, bits32)
    assert np.allclose(x[:2], [1.0, np.e], rtol=1e-15) and x[2] == -1.0 and x[3] == 5.0


def test_nan_stays_nan_in_both_precisions():
    """exp(NaN) = NaN, as np.exp (it was inf, which turned a NaN attention score into a finite-looking row);
    the neighbours of a NaN are untouched by it."""
    for dtype in (np.float64, np.float32):
        x = np.array([np.nan, 0.0, -np.inf, np.inf, -1e3, 1e3, np.nan, 1.0], dtype)
        got = _run(x)
        with np.errstate(over="ignore"):
            want = np.exp(x.astype(np.float64))
        want[4] = 0.0                                         # flushed (below -708 / -87)
        assert np.array_equal(np.isnan(got), np.isnan(x))
        fin = ~np.isnan(x)
        assert np.array_equal(got[fin] == 0, want[fin] == 0) and np.array_equal(np.isinf(got[fin]), np.isinf(want[fin]))
        assert np.allclose(got[fin], want[fin].astype(dtype), rtol=4e-7)


def test_softplus_from_exp_matches_log1p_and_keeps_nan(rng):
    for dtype, tol in ((np.float64, 4e-16), (np.float32, 3.6e-7)):
        x = np.concatenate([rng.standard_normal(1000) * 10, [0.0, -40.0, 40.0, -1e-20, np.nan]]).astype(dtype)
        e = np.exp(-np.abs(x))
        got = x.copy()
        softplus_from_exp(got, e, x.size)
        x64 = x.astype(np.float64)
        want = np.maximum(x64, 0) + np.log1p(np.exp(-np.abs(x64)))
        assert np.isnan(got[-1]) and got.dtype == dtype
        assert np.max(np.abs(got[:-1] - want[:-1]) / want[:-1]) < tol
