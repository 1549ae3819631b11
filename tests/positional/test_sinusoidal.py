"""Sinusoidal encoding (Vaswani et al. 2017, §3.5): values, wavelengths, the linear-shift property."""

import math

import numpy as np
import pytest

from scratch_transformers.positional.sinusoidal import sinusoidal_shift_matrix, sinusoidal_table


def test_values_against_loop():
    pe = sinusoidal_table(50, 10)
    assert pe.shape == (50, 10) and pe.dtype == np.float64
    for pos in range(50):
        for i in range(5):
            w = pos / math.pow(10000.0, 2 * i / 10)
            assert abs(pe[pos, 2 * i] - math.sin(w)) < 1e-15
            assert abs(pe[pos, 2 * i + 1] - math.cos(w)) < 1e-15


def test_wavelengths_geometric_from_two_pi_to_base_times_two_pi():
    d = 16
    pe = sinusoidal_table(2, d)
    # PE[1, 2i] = sin(omega_i) gives omega_i = arcsin for small omega; check via the ratio of frequencies
    omega = np.arctan2(pe[1, 0::2], pe[1, 1::2])
    ratios = omega[1:] / omega[:-1]
    np.testing.assert_allclose(ratios, 10000.0 ** (-2 / d), rtol=1e-12)
    assert abs(2 * np.pi / omega[0] - 2 * np.pi) < 1e-12
    assert abs(2 * np.pi / omega[-1] / (10000.0 ** ((d - 2) / d) * 2 * np.pi) - 1) < 1e-12


@pytest.mark.parametrize("k", [1, 5, 37, 2.5])
def test_shift_is_a_linear_map(k):
    d = 12
    pe = sinusoidal_table(200, d)
    M = sinusoidal_shift_matrix(k, d)
    pos = np.arange(100)
    want = np.empty((100, d))
    for p in pos:
        for i in range(d // 2):
            w = (p + k) / math.pow(10000.0, 2 * i / d)
            want[p, 2 * i], want[p, 2 * i + 1] = math.sin(w), math.cos(w)
    np.testing.assert_allclose(pe[pos] @ M.T, want, atol=1e-12)
    np.testing.assert_allclose(M @ M.T, np.eye(d), atol=1e-14)


def test_bad_inputs():
    with pytest.raises(ValueError, match="d_model"):
        sinusoidal_table(4, 7)
    with pytest.raises(ValueError, match="n_positions"):
        sinusoidal_table(0, 8)
    with pytest.raises(ValueError, match="base"):
        sinusoidal_table(4, 8, base=1.0)
    with pytest.raises(ValueError, match="k"):
        sinusoidal_shift_matrix(float("nan"), 8)
