"""Context extension: PI for RoPE and ALiBi, NTK-aware bases, the base-scaling laws of 2310.05209."""

import math

import numpy as np
import pytest

from scratch_transformers.positional import scaling
from scratch_transformers.positional.alibi import alibi_bias, alibi_slopes
from scratch_transformers.positional.rope import rope_forward, rope_inv_freq


def test_pi_positions_equal_pi_frequencies(rng):
    x = rng.standard_normal((1, 2, 32, 8))
    pos = np.arange(32.0)
    a, _ = rope_forward(x, scaling.interpolate_positions(pos, 4.0), base=100.0)
    b, _ = rope_forward(x, pos, inv_freq=scaling.pi_inv_freq(8, 100.0, 4.0))
    np.testing.assert_allclose(a, b, atol=1e-13)
    # eq. (4): positions in [0, L') land in [0, L)
    L, Lp = 8, 32
    assert scaling.interpolate_positions(pos, Lp / L).max() < L
    np.testing.assert_array_equal(scaling.interpolate_positions(pos, 1.0), pos)


def test_ntk_aware_base_example_and_endpoints():
    # YaRN eq. 16 by hand: 1e4 * 4^(128/126) = 1e4 * exp(ln 4 * 1.015873...) ~ 40,890
    b = scaling.ntk_aware_base(1e4, 4.0, 128)
    assert abs(b - 1e4 * math.exp(math.log(4) * 128 / 126)) < 1e-6
    assert 40880 < b < 40900
    th, th_ntk = rope_inv_freq(16), scaling.ntk_inv_freq(16, 1e4, 4.0)
    assert th_ntk[0] == th[0] == 1.0                                   # fastest pair unchanged
    np.testing.assert_allclose(th_ntk[-1], th[-1] / 4.0, rtol=1e-13)   # slowest pair interpolated by s
    assert np.all(th_ntk[1:-1] > th[1:-1] / 4.0) and np.all(th_ntk[1:] < th[1:])   # in between: partly


def test_dynamic_ntk_is_identity_inside_training_length():
    np.testing.assert_array_equal(scaling.dynamic_ntk_inv_freq(8, 100, 128), rope_inv_freq(8))
    np.testing.assert_allclose(scaling.dynamic_ntk_inv_freq(8, 512, 128), scaling.ntk_inv_freq(8, 1e4, 4.0), rtol=1e-15)
    assert scaling.dynamic_scale(64, 128) == 1.0 and scaling.dynamic_scale(384, 128) == 3.0


def test_alibi_interpolation_factor_fixed_and_dynamic():
    assert scaling.alibi_interpolation_factor(128, 64) == 1.0
    assert scaling.alibi_interpolation_factor(128, 512) == 0.25
    assert scaling.alibi_interpolation_factor(128, 64, dynamic=False) == 2.0
    assert scaling.alibi_interpolation_factor(128, 512, dynamic=False) == 0.25


def test_alibi_slope_scaling_equals_position_interpolation():
    """2310.13017: the bias at interpolated positions (i L/L', j L/L') equals the bias with slopes x L/L'."""
    H, N, L = 4, 24, 6
    m = alibi_slopes(H)
    scaled = alibi_bias(H, N, N, slopes=scaling.interpolate_alibi_slopes(m, L, N))
    pos = np.arange(N) * (L / N)
    want = -m[:, None, None] * np.abs(pos[:, None] - pos[None, :])[None]
    want = np.where(np.tril(np.ones((N, N), bool))[None], want, -np.inf)
    np.testing.assert_allclose(scaled, want, atol=1e-15)
    # the farthest key now gets the penalty of the farthest key seen in training (distance ~ L)
    assert abs(scaled[0, -1, 0] - (-m[0] * (N - 1) * L / N)) < 1e-14


def test_critical_dimension_llama2_and_lemma1():
    assert scaling.critical_dimension(128, 4096) == 92                 # 2 * ceil(45.03), README of 2310.05209
    for r, T in [(128, 4096), (16, 128), (32, 512), (64, 100)]:
        d_extra = scaling.critical_dimension(r, T)
        periods = scaling.rope_periods(r)
        # Lemma 1: pairs n < d_extra/2 complete a period within T_train, the others do not
        assert np.all(periods[: d_extra // 2] <= T) and np.all(periods[d_extra // 2:] > T)


def test_critical_base_and_bounds_worked_numbers():
    assert abs(scaling.critical_base(4096, 4096) - 1e4) < 1e-6            # beta_0 = b when T_tune = T_train
    assert abs(scaling.critical_base(4096, 16384) / 71.7e3 - 1) < 2e-3    # 2310.05209 eq. 16a
    # (16b), d = 128, T_train = 4096: beta = 1e6 -> ~129k, 5e5 -> ~78k, 1e5 -> ~24.7k
    for beta, want in [(1e6, 129e3), (5e5, 78e3), (1e5, 24.7e3)]:
        got = scaling.extrapolation_bound(beta, 128, 4096, 16384)
        assert abs(got / want - 1) < 1e-2, (beta, got)
        assert abs(got - 2 * math.pi * beta ** (92 / 128)) < 1e-6 * got
    # (16c): below the critical base the bound is the tuning length, and the critical dimension grows
    assert scaling.extrapolation_bound(500.0, 128, 4096, 16384) == 16384.0
    assert scaling.tuned_critical_dimension(128, 16384, 500.0) >= scaling.critical_dimension(128, 4096)


def test_small_base_thresholds():
    b1, b2, b3 = scaling.small_base_thresholds(4096)
    assert (round(b1), round(b2), round(b3)) == (2608, 1304, 652)


def test_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        scaling.interpolate_positions(np.arange(3.0), 0.5)
    with pytest.raises(ValueError, match="rot_dim"):
        scaling.ntk_aware_base(1e4, 2.0, 7)
    with pytest.raises(ValueError, match="slopes"):
        scaling.interpolate_alibi_slopes(np.ones((2, 2)), 8, 16)
    with pytest.raises(ValueError, match="dynamic"):
        scaling.alibi_interpolation_factor(8, 16, dynamic=None)
    with pytest.raises(ValueError, match="train_len"):
        scaling.critical_base(6, 16)
    with pytest.raises(ValueError, match="train_len"):
        scaling.critical_dimension(16, 0)
    with pytest.raises(ValueError, match="seq_len"):
        scaling.dynamic_scale(0, 8)
