"""Reversible residual stack (Reformer §3, eqs. 7-8): the backward that reconstructs each block's inputs
equals the ordinary backward; reconstruction error in float64 and float32; activation memory flat in
depth (tracemalloc) where the ordinary stack's grows linearly."""

import numpy as np
import pytest

from scratch_transformers.checks.reformer import tanh_block_params, tanh_blocks, tanh_linear
from scratch_transformers.core.measure import traced_peak
from scratch_transformers.reformer.reversible import (RevBlock, residual_stack_backward, residual_stack_forward,
                                                      reversible_backward, reversible_forward, reversible_inverse)


def stack(rng, n_layers=4, shape=(2, 6, 5), dtype=np.float64):
    params = tanh_block_params(rng, n_layers, shape[-1], dtype=dtype)
    x1, x2 = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    return params, x1, x2


def test_reversible_backward_equals_the_ordinary_backward(rng):
    params, x1, x2 = stack(rng, n_layers=5)
    blocks = tanh_blocks(params, 5)
    (y1, y2), rcache = reversible_forward(x1, x2, blocks)
    (z1, z2), scache = residual_stack_forward(x1, x2, blocks)
    assert np.array_equal(y1, z1) and np.array_equal(y2, z2)       # the same arithmetic
    dy = (rng.standard_normal(y1.shape), rng.standard_normal(y2.shape))
    got, want = reversible_backward(dy, rcache), residual_stack_backward(dy, scache)
    assert sorted(got) == sorted(want) == sorted(["x1", "x2", *params])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_shared_parameters_get_the_sum_of_their_gradients(rng):
    params, x1, x2 = stack(rng, n_layers=1)
    blk = tanh_blocks(params, 1)[0]
    blocks = [blk, blk, RevBlock(blk.g, blk.f)]                      # one F and one G used three times each
    (y1, y2), rcache = reversible_forward(x1, x2, blocks)
    _, scache = residual_stack_forward(x1, x2, blocks)
    dy = (rng.standard_normal(y1.shape), rng.standard_normal(y2.shape))
    got, want = reversible_backward(dy, rcache), residual_stack_backward(dy, scache)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)
    eps = 1e-6                                                       # and central differences agree
    w = params["blocks.0.f.w"]
    w[1, 2] += eps
    (a1, a2), _ = reversible_forward(x1, x2, blocks)
    w[1, 2] -= 2 * eps
    (b1, b2), _ = reversible_forward(x1, x2, blocks)
    w[1, 2] += eps
    num = (np.sum((a1 - b1) * dy[0]) + np.sum((a2 - b2) * dy[1])) / (2 * eps)
    assert abs(num - got["blocks.0.f.w"][1, 2]) < 1e-7 * max(1.0, abs(num))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_reconstruction_error_of_the_inputs(rng, dtype, tol):
    params, x1, x2 = stack(rng, n_layers=16, shape=(4, 32, 16), dtype=dtype)
    blocks = tanh_blocks(params, 16)
    (y1, y2), _ = reversible_forward(x1, x2, blocks)
    r1, r2 = reversible_inverse(y1, y2, blocks)
    assert r1.dtype == dtype
    err = max(np.max(np.abs(r1 - x1)), np.max(np.abs(r2 - x2)))
    assert 0 <= err < tol
    if dtype == np.float32:
        assert err > 1e-8        # float32 drifts measurably: the bound is not vacuous


def _peak(forward, backward, params, x1, x2, n_layers):
    blocks = tanh_blocks(params, n_layers)
    dy = (np.ones_like(x1), np.ones_like(x2))

    def run():
        _, cache = forward(x1, x2, blocks)
        return backward(dy, cache)

    return traced_peak(run)[0]


def test_activation_memory_flat_in_depth_for_reversible_linear_for_ordinary(rng):
    shape = (2, 1024, 16)                                           # 256 KB per activation
    params, x1, x2 = stack(rng, n_layers=16, shape=shape)
    act = x1.nbytes
    rev = {n: _peak(reversible_forward, reversible_backward, params, x1, x2, n) for n in (2, 4, 8, 16)}
    std = {n: _peak(residual_stack_forward, residual_stack_backward, params, x1, x2, n) for n in (2, 4, 8, 16)}
    assert rev[16] - rev[2] < 1.0 * act                             # flat: under one activation more
    assert std[16] - std[2] > 14 * 3 * act                          # >= 3 stored activations per extra block
    assert std[16] > 4 * rev[16]


def test_bad_inputs(rng):
    params, x1, x2 = stack(rng, n_layers=2)
    blocks = tanh_blocks(params, 2)
    with pytest.raises(ValueError, match="blocks"):
        reversible_forward(x1, x2, [])
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        reversible_forward(x1, x2, [blocks[0], (tanh_linear(params, "blocks.0.f"),)])
    with pytest.raises(ValueError, match="x2"):
        reversible_forward(x1, x2[:, :3], blocks)
    with pytest.raises(ValueError, match="x2"):
        residual_stack_forward(x1, x2.astype(np.float32), blocks)
    (y1, y2), cache = reversible_forward(x1, x2, blocks)
    with pytest.raises(ValueError, match="cache"):
        reversible_backward((y1, y2), tuple(cache))
    with pytest.raises(ValueError, match="dy"):
        reversible_backward(y1, cache)
    with pytest.raises(ValueError, match=r"dy\[1\]"):
        reversible_backward((y1, y2[:1]), cache)


def test_nan_propagates(rng):
    params, x1, x2 = stack(rng, n_layers=2)
    x1[0, 1, 2] = np.nan
    (y1, y2), _ = reversible_forward(x1, x2, tanh_blocks(params, 2))
    assert np.isnan(y1[0, 1]).any() and np.all(np.isfinite(y1[1]))   # row-wise F, G: only that position
