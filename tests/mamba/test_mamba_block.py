"""The Mamba block: a per-token plain-NumPy reference of Fig. 3, recurrent mode, init, gradients."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.mamba.block import (init_mamba_block, mamba_block_backward, mamba_block_final_state,
                                              mamba_block_forward, mamba_block_step, new_mamba_block_state)


def ref_block(a, p, pre="m"):
    """Fig. 3 token by token (arXiv 2312.00752 Sec. 3.4 and Algorithm 2), loops over t only."""
    g = lambda k: p[f"{pre}.{k}"]
    nb, L, _ = a.shape
    D = g("conv.w").shape[0]
    K = g("conv.w").shape[1]
    N = g("A_log").shape[1]
    selective = f"{pre}.x_proj.w" in p
    R = g("dt_proj.w").shape[0] if selective else 0
    A = -np.exp(g("A_log"))
    xz = np.einsum("blm,mk->blk", a, g("in_proj.w"))
    x, z = xz[..., :D], xz[..., D:]
    h = np.zeros((nb, D, N))
    ys = []
    for t in range(L):
        v = g("conv.b") + sum(g("conv.w")[:, k] * x[:, t - K + 1 + k] for k in range(K) if t - K + 1 + k >= 0)
        u = v / (1 + np.exp(-v))
        if selective:
            rbc = u @ g("x_proj.w")
            r, Bt, Ct = rbc[:, :R], rbc[:, R:R + N], rbc[:, R + N:]
            dt = np.logaddexp(0.0, r @ g("dt_proj.w") + g("dt_proj.b"))
        else:
            Bt, Ct = np.tile(g("B"), (nb, 1)), np.tile(g("C"), (nb, 1))
            dt = np.tile(np.logaddexp(0.0, g("dt_proj.b")), (nb, 1))
        h = np.exp(dt[:, :, None] * A) * h + (dt * u)[:, :, None] * Bt[:, None, :]
        y = np.einsum("bdn,bn->bd", h, Ct) + g("D") * u
        o = y * z[:, t] / (1 + np.exp(-z[:, t]))
        ys.append(o @ g("out_proj.w"))
    return np.stack(ys, axis=1), h


def perturbed(rng, selective, d_model=6, N=5, K=4, R=2, scale=0.3):
    p = init_mamba_block(rng, d_model, d_state=N, expand=2, d_conv=K, dt_rank=R, selective=selective, prefix="m")
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in p.items()}


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("L", [1, 3, 10])
def test_block_forward_matches_per_token_reference(rng, selective, L):
    p = perturbed(rng, selective)
    a = rng.standard_normal((2, L, 6))
    y, cache = mamba_block_forward(a, p, prefix="m")
    ry, rh = ref_block(a, p)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12 * np.abs(ry).max())
    np.testing.assert_allclose(cache.h_last, rh, rtol=1e-12, atol=1e-12 * np.abs(rh).max())


@pytest.mark.parametrize("selective", [True, False])
def test_block_recurrent_steps_equal_parallel_forward(rng, selective):
    p = perturbed(rng, selective)
    a = rng.standard_normal((3, 9, 6))
    y, _ = mamba_block_forward(a, p, prefix="m")
    state = new_mamba_block_state(p, 3, prefix="m")
    for t in range(9):
        yt, state = mamba_block_step(a[:, t], p, state, prefix="m")
        np.testing.assert_allclose(yt, y[:, t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [1, 2, 3, 4, 7])      # prompt shorter than, equal to, longer than K = 4
def test_block_prefill_state_then_steps(rng, split):
    p = perturbed(rng, True)
    a = rng.standard_normal((2, 10, 6))
    y, _ = mamba_block_forward(a, p, prefix="m")
    _, cache = mamba_block_forward(a[:, :split], p, prefix="m")
    state = mamba_block_final_state(cache)
    for t in range(split, 10):
        yt, state = mamba_block_step(a[:, t], p, state, prefix="m")
        np.testing.assert_allclose(yt, y[:, t], rtol=1e-12, atol=1e-12)


def test_block_is_causal(rng):
    p = perturbed(rng, True)
    a = rng.standard_normal((1, 12, 6))
    y, _ = mamba_block_forward(a, p, prefix="m")
    a2 = a.copy()
    a2[:, 7] += 1.0
    y2, _ = mamba_block_forward(a2, p, prefix="m")
    np.testing.assert_array_equal(y2[:, :7], y[:, :7])
    assert not np.allclose(y2[:, 7:], y[:, 7:])


@pytest.mark.parametrize("selective", [True, False])
def test_block_gradcheck_float64(rng, selective):
    p = perturbed(rng, selective, d_model=4, N=3, K=3, R=2, scale=0.5)
    p["m.dt_proj.b"] = p["m.dt_proj.b"] + 2.0

    def fwd(a, **params):
        return mamba_block_forward(a, params, prefix="m")

    def bwd(dy, cache):
        da, grads = mamba_block_backward(dy, cache)
        return {"a": da, **grads}

    res = gradcheck(fwd, bwd, {"a": rng.standard_normal((2, 5, 4)), **p}, rng=rng, tol=1e-6)
    res.assert_ok()


def test_block_float32_close_to_float64(rng):
    p = perturbed(rng, True)
    a = rng.standard_normal((2, 33, 6))
    dy = rng.standard_normal((2, 33, 6))
    y64, c64 = mamba_block_forward(a, p, prefix="m")
    da64, g64 = mamba_block_backward(dy, c64)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    y32, c32 = mamba_block_forward(a.astype(np.float32), p32, prefix="m")
    da32, g32 = mamba_block_backward(dy.astype(np.float32), c32)
    assert y32.dtype == np.float32 and da32.dtype == np.float32
    rel = lambda x, r: np.abs(x - r).max() / np.abs(r).max()
    assert rel(y32, y64) <= 1e-5
    assert rel(da32, da64) <= 1e-5
    for k in g64:
        assert g32[k].dtype == np.float32, k
        assert rel(g32[k], g64[k]) <= 1e-5, (k, rel(g32[k], g64[k]))


def test_paper_initialisation(rng):
    p = init_mamba_block(rng, 64, d_state=7, expand=2, d_conv=4, dt_min=1e-3, dt_max=1e-1, prefix="m")
    D = 128
    assert p["m.in_proj.w"].shape == (64, 2 * D) and p["m.out_proj.w"].shape == (D, 64)
    assert p["m.x_proj.w"].shape == (D, 4 + 2 * 7)                          # dt_rank = ceil(64 / 16) = 4
    np.testing.assert_allclose(-np.exp(p["m.A_log"]), -np.tile(np.arange(1, 8), (D, 1)), rtol=1e-14)  # S4D-Real
    np.testing.assert_array_equal(p["m.D"], np.ones(D))
    dt = np.logaddexp(0.0, p["m.dt_proj.b"])                                # inverse softplus undone
    assert dt.min() >= 1e-3 * (1 - 1e-9) and dt.max() <= 1e-1 * (1 + 1e-9)
    big = init_mamba_block(np.random.default_rng(1), 2048, d_state=1, prefix="m")   # 4096 channels
    log_dt = np.log(np.logaddexp(0.0, big["m.dt_proj.b"]))
    # log-uniform on [log 1e-3, log 1e-1]: mean -4.605, sd 1.329 (a plain uniform dt would give mean log ~ -3.4)
    assert abs(log_dt.mean() - 0.5 * (np.log(1e-3) + np.log(1e-1))) < 0.1
    assert abs(log_dt.std() - (np.log(1e-1) - np.log(1e-3)) / np.sqrt(12)) < 0.1


def test_paper_text_uniform_dt_initialisation():
    """dt_init="uniform" is Sec. 3.6's text, tau^{-1}(Uniform([0.001, 0.1])): dt itself is uniform."""
    big = init_mamba_block(np.random.default_rng(1), 2048, d_state=1, dt_init="uniform", prefix="m")
    dt = np.logaddexp(0.0, big["m.dt_proj.b"])                              # 4096 channels
    assert dt.min() >= 1e-3 * (1 - 1e-9) and dt.max() <= 1e-1 * (1 + 1e-9)
    # Uniform([a, b]): mean (a + b) / 2 = 0.0505, sd (b - a) / sqrt(12) = 0.0286; log-uniform has mean 0.0215
    assert abs(dt.mean() - 0.0505) < 0.003 and abs(dt.std() - 0.099 / np.sqrt(12)) < 0.003
    assert abs(np.mean(dt < 0.01) - 0.009 / 0.099) < 0.03                  # log-uniform: half below 0.01
    with pytest.raises(ValueError, match="dt_init: expected one of"):
        init_mamba_block(np.random.default_rng(1), 8, dt_init="loguniform")


def test_block_bad_inputs(rng):
    p = perturbed(rng, True)
    a = rng.standard_normal((2, 5, 6))
    with pytest.raises(ValueError, match="a: expected shape"):
        mamba_block_forward(a[..., :5], p, prefix="m")
    with pytest.raises(ValueError, match="params: expected a key"):
        mamba_block_forward(a, {k: v for k, v in p.items() if not k.endswith("A_log")}, prefix="m")
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        mamba_block_forward(a.astype(np.float32), p, prefix="m")
    with pytest.raises(ValueError, match="x_proj.w: expected shape"):
        mamba_block_forward(a, {**p, "m.x_proj.w": p["m.x_proj.w"][:, :-1]}, prefix="m")
    with pytest.raises(ValueError, match="state"):
        mamba_block_step(a[:, 0], p, (1, 2), prefix="m")
    _, cache = mamba_block_forward(a, p, prefix="m")
    with pytest.raises(ValueError, match="dy: expected shape"):
        mamba_block_backward(np.zeros((2, 4, 6)), cache)
    with pytest.raises(ValueError, match="d_model"):
        init_mamba_block(rng, 0)
