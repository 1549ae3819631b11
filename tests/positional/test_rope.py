"""RoPE: independent complex-number and matrix formulations, the two layouts, relative-position
property (hypothesis), norm preservation, backward = rotation by minus the angle, offsets and
KV-cache decoding, partial rotation, fractional positions, float32, bad inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.checks.positional import GRADCHECKS
from scratch_transformers.positional.rope import (
    layout_permutation, rope_backward, rope_forward, rope_inv_freq, rope_rotation_matrix)


def complex_rope(x, positions, base=10000.0):
    """PI eq. (1): interleaved pairs as complex numbers times e^{i m theta_j}, theta_j = base^(-2j/d)."""
    d = x.shape[-1]
    theta = np.array([math.pow(base, -2.0 * j / d) for j in range(d // 2)])
    z = x[..., 0::2] + 1j * x[..., 1::2]
    z = z * np.exp(1j * np.multiply.outer(positions, theta))
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def test_inv_freq_is_base_power_in_float64():
    got = rope_inv_freq(16, 10000.0)
    want = np.array([math.pow(10000.0, -2.0 * i / 16) for i in range(8)])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert got[0] == 1.0


def test_interleaved_matches_complex_form(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    pos = np.array([0.0, 1.0, 2.5, 3.0, 10.0, 100.0, 1234.5])
    y, _ = rope_forward(x, pos, layout="interleaved")
    np.testing.assert_allclose(y, complex_rope(x, pos), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_matrix_form_eq15_equals_elementwise_eq34(rng, layout):
    x = rng.standard_normal((5, 8))
    pos = np.array([0.0, 1.0, 3.0, 17.5, 300.0])
    y, _ = rope_forward(x, pos, layout=layout, base=500.0)
    inv = rope_inv_freq(8, 500.0)
    for t, m in enumerate(pos):
        R = rope_rotation_matrix(m, inv, layout)
        np.testing.assert_allclose(R.T @ R, np.eye(8), atol=1e-14)          # orthogonal
        np.testing.assert_allclose(y[t], R @ x[t], rtol=0, atol=1e-13)


def test_layouts_are_a_permutation_of_each_other(rng):
    x = rng.standard_normal((2, 2, 6, 10))
    pos = rng.uniform(0, 50, size=6)
    P = layout_permutation(10)
    np.testing.assert_array_equal(P, [0, 2, 4, 6, 8, 1, 3, 5, 7, 9])
    y_int, _ = rope_forward(x, pos, layout="interleaved")
    y_half, _ = rope_forward(x[..., P], pos, layout="half")
    np.testing.assert_allclose(y_half, y_int[..., P], rtol=0, atol=1e-13)
    # ... and not interchangeable for the same features (the silent checkpoint bug)
    y_half_same, _ = rope_forward(x, pos, layout="half")
    assert np.max(np.abs(y_half_same - y_int)) > 1e-2


@settings(max_examples=60, deadline=None)
@given(m=st.integers(-400, 4000), n=st.integers(-400, 4000), shift=st.integers(-2000, 2000),
       quarter=st.integers(0, 3), layout=st.sampled_from(["half", "interleaved"]), seed=st.integers(0, 2**31))
def test_score_depends_only_on_relative_position(m, n, shift, quarter, layout, seed):
    """q_m . k_n = q_{m+t} . k_{n+t} (eq. 11) and = q . R_{n-m} k (eq. 16), to 1e-12."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, 1, 1, 16))
    m = m + quarter / 4.0                                           # fractional positions, exact in binary
    def score(a, b):
        qa, _ = rope_forward(q, np.array([a]), layout=layout)
        kb, _ = rope_forward(k, np.array([b]), layout=layout)
        return float(np.sum(qa * kb))
    s0 = score(m, n)
    s1 = score(m + shift, n + shift)
    scale = float(np.linalg.norm(q) * np.linalg.norm(k))
    assert abs(s0 - s1) <= 1e-12 * scale
    k_rel, _ = rope_forward(k, np.array([n - m]), layout=layout)      # R_{n-m} k, eq. (16)
    assert abs(s0 - float(np.sum(q * k_rel))) <= 1e-12 * scale


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_norm_preserved(rng, layout):
    x = rng.standard_normal((3, 2, 9, 12))
    y, _ = rope_forward(x, rng.uniform(-100, 1e4, size=9), layout=layout, rot_dim=8)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(y[..., :8], axis=-1), np.linalg.norm(x[..., :8], axis=-1), rtol=1e-13)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_backward_is_rotation_by_minus_the_angle(rng, layout):
    x, dy = rng.standard_normal((2, 2, 3, 5, 8))
    pos = rng.uniform(0, 200, size=5)
    _, cache = rope_forward(x, pos, layout=layout, offset=4)
    dx = rope_backward(dy, cache)
    back, _ = rope_forward(dy, -pos, layout=layout, offset=-4)
    np.testing.assert_allclose(dx, back, rtol=0, atol=1e-13)
    inv = rope_inv_freq(8)
    for t in range(5):                                               # dx = R^T dy, eq. (15) matrix
        R = rope_rotation_matrix(pos[t] + 4, inv, layout)
        np.testing.assert_allclose(dx[..., t, :], dy[..., t, :] @ R, atol=1e-13)
    # inverse: un-rotating the rotated tensor gives x back
    y, cache = rope_forward(x, pos, layout=layout)
    np.testing.assert_allclose(rope_backward(y, cache), x, atol=1e-13)
    # pure: a second call gives the same answer
    np.testing.assert_array_equal(rope_backward(dy, cache), rope_backward(dy, cache))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rot_dim", [8, 4])
def test_gradcheck(rng, layout, rot_dim):
    def fwd(x):
        return rope_forward(x, np.array([0.0, 2.5, 9.0]), layout=layout, rot_dim=rot_dim, offset=1.5)
    res = gradcheck(fwd, lambda dy, c: (rope_backward(dy, c),), {"x": rng.standard_normal((2, 2, 3, 8))}, rng=rng)
    assert res.max_rel_error < 1e-8, str(res)


def test_registry_entries_pass():
    for op in GRADCHECKS:
        assert op.run(np.random.default_rng(0)).passed


def test_offset_and_kv_cache_decoding_equal_full_forward(rng):
    """Rotating a new token at offset past_len equals the last row of the full rotation, and cached
    decoding attention (new query vs cached rotated keys) equals the last row of full attention."""
    B, H, N, d = 2, 3, 11, 8
    q, k, v = rng.standard_normal((3, B, H, N, d))
    qr, _ = rope_forward(q, None)
    kr, _ = rope_forward(k, None)
    s = qr @ np.swapaxes(kr, -1, -2) / np.sqrt(d)
    s = np.where(np.tril(np.ones((N, N), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    full = (p / p.sum(-1, keepdims=True)) @ v                        # (B, H, N, d)
    # decode token by token, rotating each new key once at its offset and caching it
    k_cache = np.zeros((B, H, 0, d))
    for t in range(N):
        q_t, _ = rope_forward(q[:, :, t:t + 1], None, offset=t)
        k_t, _ = rope_forward(k[:, :, t:t + 1], None, offset=t)
        np.testing.assert_allclose(k_t[:, :, 0], kr[:, :, t], rtol=0, atol=1e-13)
        k_cache = np.concatenate([k_cache, k_t], axis=2)
        st_ = q_t @ np.swapaxes(k_cache, -1, -2) / np.sqrt(d)
        pt = np.exp(st_ - st_.max(-1, keepdims=True))
        out_t = (pt / pt.sum(-1, keepdims=True)) @ v[:, :, : t + 1]
        np.testing.assert_allclose(out_t[:, :, 0], full[:, :, t], rtol=0, atol=1e-12)
    # an explicit positions array plus an offset is the same as shifted positions
    pos = np.array([0.0, 0.5, 7.0])
    a, _ = rope_forward(q[..., :3, :], pos, offset=100)
    b, _ = rope_forward(q[..., :3, :], pos + 100)
    np.testing.assert_array_equal(a, b)


def test_fractional_positions_compose(rng):
    """R(a) R(b) = R(a + b): rotating by 0.25 then 0.5 equals rotating by 0.75."""
    x = rng.standard_normal((1, 1, 4, 8))
    y1, _ = rope_forward(x, np.full(4, 0.25), layout="interleaved")
    y2, _ = rope_forward(y1, np.full(4, 0.5), layout="interleaved")
    y3, _ = rope_forward(x, np.full(4, 0.75), layout="interleaved")
    np.testing.assert_allclose(y2, y3, atol=1e-14)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_partial_rotation(rng, layout):
    x = rng.standard_normal((2, 2, 5, 12))
    pos = np.arange(5) * 3.0
    y, _ = rope_forward(x, pos, rot_dim=4, layout=layout)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])            # tail untouched
    # the rotated head uses rot_dim (not d) in the frequency exponent
    head, _ = rope_forward(x[..., :4].copy(), pos, layout=layout)
    np.testing.assert_allclose(y[..., :4], head, atol=1e-14)
    wrong, _ = rope_forward(x, pos, rot_dim=4, layout=layout, inv_freq=rope_inv_freq(12)[:2])
    assert np.max(np.abs(wrong[..., :4] - y[..., :4])) > 1e-3


def test_inv_freq_override_equals_base(rng):
    x = rng.standard_normal((1, 2, 6, 8))
    a, _ = rope_forward(x, None, base=321.0)
    b, _ = rope_forward(x, None, inv_freq=rope_inv_freq(8, 321.0), base=5.0)
    np.testing.assert_array_equal(a, b)


def test_float32_in_float32_out_with_float64_angles(rng):
    x = rng.standard_normal((1, 1, 3, 8))
    pos = np.array([1e5, 1e5 + 1, 32768.0])                          # long range: float64 angles matter
    y64, _ = rope_forward(x, pos)
    y32, c32 = rope_forward(x.astype(np.float32), pos)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=2e-6)
    dx = rope_backward(np.ones_like(y32), c32)
    assert dx.dtype == np.float32


def test_length_one_and_large_positions_finite(rng):
    x = rng.standard_normal((1, 1, 1, 4))
    y, c = rope_forward(x, np.array([1e12]))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(rope_backward(y, c)))


def test_bad_inputs(rng):
    x = rng.standard_normal((1, 2, 4, 8))
    with pytest.raises(ValueError, match="x: expected"):
        rope_forward(np.ones((1, 2, 4, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="x: expected"):
        rope_forward(np.ones(8))
    with pytest.raises(ValueError, match="rot_dim"):
        rope_forward(x, rot_dim=5)
    with pytest.raises(ValueError, match="rot_dim"):
        rope_forward(x, rot_dim=10)
    with pytest.raises(ValueError, match="positions"):
        rope_forward(x, np.arange(3.0))
    with pytest.raises(ValueError, match="positions"):
        rope_forward(x, np.array([0.0, 1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="layout"):
        rope_forward(x, layout="neox")
    with pytest.raises(ValueError, match="inv_freq"):
        rope_forward(x, inv_freq=np.ones(3))
    with pytest.raises(ValueError, match="base"):
        rope_forward(x, base=-1.0)
    with pytest.raises(ValueError, match="offset"):
        rope_forward(x, offset="3")
    _, cache = rope_forward(x)
    with pytest.raises(ValueError, match="dy"):
        rope_backward(np.ones((1, 2, 4, 6)), cache)
    with pytest.raises(ValueError, match="dy"):
        rope_backward(np.ones((1, 2, 4, 8), dtype=np.float32), cache)
    with pytest.raises(ValueError, match="cache"):
        rope_backward(x, (1, 2))
