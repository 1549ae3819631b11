"""The Mamba block (Gu & Dao 2023, Sec. 3.4, Fig. 3): H3's SSM path and a gated MLP merged into one block.

Per token t, with a_t the (normalised) block input of width d_model and D = expand * d_model channels:

    [x_t; z_t]  = a_t W_in                              in_proj, d_model -> 2D (no bias)
    u_t         = silu(causal_conv1d(x)_t)              depthwise conv over time, kernel K = 4, + SiLU
    [r_t; B_t; C_t] = u_t W_x                           x_proj, D -> R + 2N: the selection s_B, s_C, s_Delta (Sec. 3.2)
    delta_t     = r_t W_dt                              dt_proj, R -> D (its bias b_dt is the scan's delta_bias)
    out_t       = scan(u, delta, A = -exp(A_log), B, C, Dskip, z, b_dt, softplus)_t   (Algorithm 2, then * silu(z))
    y_t         = out_t W_out                           out_proj, D -> d_model (no bias)

Weights are stored NumPy-style (d_in, d_out), y = x @ W (the paper's column form transposed).
``selective=False`` builds the LTI ablation (S4-like, Sec. 3.1 / Table 1): delta, B, C no longer depend on the
input (dt = softplus(b_dt), B and C are learned (N,) vectors shared by all channels and time steps); everything
else, including the conv and the gate, is the same block.

Parameter names (after ``prefix.``): in_proj.w (d_model, 2D), conv.w (D, K), conv.b (D,), x_proj.w (D, R+2N),
dt_proj.w (R, D), dt_proj.b (D,), A_log (D, N), D (D,), out_proj.w (D, d_model); LTI: B (N,), C (N,) instead of
x_proj.w and dt_proj.w.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import silu_backward, silu_forward, softplus
from ..core.layers import causal_conv1d_backward, causal_conv1d_forward, project_backward, project_forward
from .scan import selective_scan_backward, selective_scan_forward, selective_scan_step


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


DT_INITS = ("log_uniform", "uniform")


def init_mamba_block(rng, d_model, *, d_state=16, expand=2, d_conv=4, dt_rank=None, dt_min=1e-3, dt_max=0.1,
                     dt_init_floor=1e-4, dt_scale=1.0, dt_init="log_uniform", selective=True, n_layers=1,
                     prefix="mixer", dtype=np.float64):
    """The paper's / reference code's initialisation (arXiv 2312.00752 Sec. 3.6; mamba-ssm's mamba_simple.py).

    A = -(n + 1), n = 0..N-1 (S4D-Real, Sec. 3.6) stored as A_log = log(n + 1); Dskip = 1; the step size dt stored
    through the inverse softplus as the dt_proj bias, b = dt + log(-expm1(-dt)), with dt drawn by ``dt_init``:

    - "log_uniform" (default, what mamba-ssm's code does): log dt ~ Uniform([log dt_min, log dt_max]), floored at
      dt_init_floor. Half of the channels get dt < sqrt(dt_min dt_max) = 0.01 with the defaults.
    - "uniform" (the paper's text, Sec. 3.6: "tau_Delta^{-1}(Uniform([0.001, 0.1]))"): dt ~ Uniform([dt_min, dt_max])
      (mean ~0.05; only ~9 % of channels below 0.01).

    The two differ only in how the channels' time scales are spread; the experiments use the default.
    Linear layers U(+-1/sqrt(fan_in)) (PyTorch's default), dt_proj.w U(+-dt_scale / sqrt(R)), out_proj divided by
    sqrt(n_layers). dt_rank defaults to ceil(d_model / 16).
    """
    rng = validate.rng(rng)
    d_model = validate.positive_int(d_model, "d_model")
    N = validate.positive_int(d_state, "d_state")
    expand = validate.positive_int(expand, "expand")
    K = validate.positive_int(d_conv, "d_conv")
    R = math.ceil(d_model / 16) if dt_rank is None else validate.positive_int(dt_rank, "dt_rank")
    dt_min = validate.positive(dt_min, "dt_min")
    dt_max = validate.real(dt_max, "dt_max", low=dt_min)
    validate.option(dt_init, "dt_init", DT_INITS)
    n_layers = validate.positive_int(n_layers, "n_layers")
    selective = validate.flag(selective, "selective")
    dtype = validate.float_dtype(dtype)
    D = expand * d_model
    p = prefix + "."
    params = {
        p + "in_proj.w": _uniform(rng, d_model ** -0.5, (d_model, 2 * D), dtype),
        p + "conv.w": _uniform(rng, K ** -0.5, (D, K), dtype),
        p + "conv.b": _uniform(rng, K ** -0.5, (D,), dtype),
    }
    if selective:
        params[p + "x_proj.w"] = _uniform(rng, D ** -0.5, (D, R + 2 * N), dtype)
        params[p + "dt_proj.w"] = _uniform(rng, dt_scale * R ** -0.5, (R, D), dtype)
    if dt_init == "log_uniform":
        dt = np.exp(rng.uniform(size=D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    else:
        dt = rng.uniform(dt_min, dt_max, size=D)
    dt = np.maximum(dt, dt_init_floor)
    params[p + "dt_proj.b"] = (dt + np.log(-np.expm1(-dt))).astype(dtype)                 # softplus^{-1}(dt)
    if not selective:
        params[p + "B"] = np.ones(N, dtype)
        params[p + "C"] = (rng.standard_normal(N) * N ** -0.5).astype(dtype)
    params[p + "A_log"] = np.tile(np.log(np.arange(1, N + 1, dtype=np.float64)), (D, 1)).astype(dtype)
    params[p + "D"] = np.ones(D, dtype)
    params[p + "out_proj.w"] = _uniform(rng, D ** -0.5, (D, d_model), dtype) / dtype.type(math.sqrt(n_layers))
    return params


class _Dims(NamedTuple):
    d_model: int
    D: int
    N: int
    K: int
    R: int
    selective: bool


def _dims(params, prefix, dtype) -> _Dims:
    """The block's sizes, read from its parameters after checking every one (keys, dtype, shapes)."""
    p = prefix + "."
    selective = isinstance(params, dict) and (p + "x_proj.w") in params
    mats = ["in_proj.w", "conv.w", "A_log", "out_proj.w"] + (["x_proj.w", "dt_proj.w"] if selective else [])
    vecs = ["conv.b", "D", "dt_proj.b"] + ([] if selective else ["B", "C"])
    validate.params(params, {p + k: (None, None) for k in mats} | {p + k: (None,) for k in vecs}, dtype=dtype)
    d_model, two_D = params[p + "in_proj.w"].shape
    D, N, K = two_D // 2, params[p + "A_log"].shape[1], params[p + "conv.w"].shape[1]
    R = params[p + "dt_proj.w"].shape[0] if selective else 0
    shapes = {"in_proj.w": (d_model, 2 * D), "conv.w": (D, K), "conv.b": (D,), "A_log": (D, N), "D": (D,),
              "dt_proj.b": (D,), "out_proj.w": (D, d_model)}
    shapes.update({"x_proj.w": (D, R + 2 * N), "dt_proj.w": (R, D)} if selective else {"B": (N,), "C": (N,)})
    for k, shape in shapes.items():
        validate.array(params[p + k], p + k, shape=shape)
    return _Dims(d_model, D, N, K, R, selective)


class MambaBlockCache(NamedTuple):
    prefix: str
    dims: _Dims
    in_cache: tuple          # ProjectionCache of in_proj: a (b, L, d_model)
    conv_cache: tuple        # causal conv cache:        x (b, L, D)
    silu_cache: tuple        # silu cache:               v (b, L, D) -> u (b, L, D)
    x_cache: tuple | None    # ProjectionCache of x_proj: u (b, L, D) -> [r; B; C] (b, L, R + 2N)
    dt_cache: tuple | None   # ProjectionCache of dt_proj: r (b, L, R) -> delta (b, L, D)
    scan_cache: tuple        # ScanCache
    out_cache: tuple         # ProjectionCache of out_proj: o (b, L, D) -> y (b, L, d_model)
    A: np.ndarray            # (D, N) = -exp(A_log)
    x: np.ndarray            # (b, L, D) conv input (kept for the recurrent state after a prefill)
    h_last: np.ndarray       # (b, D, N) SSM state after the last step


def mamba_block_forward(a, params, *, prefix="mixer"):
    """Mamba block of Fig. 3. a: (b, L, d_model). Returns y (b, L, d_model) and a MambaBlockCache."""
    a = validate.float_array(a, "a", ndim=3)
    dims = _dims(params, prefix, a.dtype)
    if a.shape[2] != dims.d_model:
        validate.fail("a", f"shape (b, L, {dims.d_model})", a.shape)
    p = prefix + "."
    D, N, R = dims.D, dims.N, dims.R
    nb, L, _ = a.shape
    xz, in_cache = project_forward(a, params, p + "in_proj.w")                       # (b, L, 2D)
    x = np.ascontiguousarray(xz[..., :D])                                           # (b, L, D)
    z = np.ascontiguousarray(xz[..., D:])                                           # (b, L, D)
    v, conv_cache = causal_conv1d_forward(x, params[p + "conv.w"], params[p + "conv.b"])   # (b, L, D)
    u, silu_cache = silu_forward(v)                                                 # (b, L, D)
    if dims.selective:
        rbc, x_cache = project_forward(u, params, p + "x_proj.w")                 # (b, L, R + 2N)
        r = rbc[..., :R]                                                            # (b, L, R)
        Bt = np.ascontiguousarray(rbc[..., R:R + N])                                # (b, L, N)
        Ct = np.ascontiguousarray(rbc[..., R + N:])                                 # (b, L, N)
        delta, dt_cache = project_forward(r, params, p + "dt_proj.w")             # (b, L, D)
    else:                                                                           # LTI: nothing depends on x
        x_cache = dt_cache = None
        delta = np.zeros((nb, L, D), a.dtype)
        Bt = np.ascontiguousarray(np.broadcast_to(params[p + "B"], (nb, L, N)))
        Ct = np.ascontiguousarray(np.broadcast_to(params[p + "C"], (nb, L, N)))
    A = -np.exp(params[p + "A_log"])                                                # (D, N)
    (o, h_last), scan_cache = selective_scan_forward(
        u, np.ascontiguousarray(delta), A, Bt, Ct, D=params[p + "D"], z=z, delta_bias=params[p + "dt_proj.b"],
        delta_softplus=True)                                                        # (b, L, D)
    y, out_cache = project_forward(o, params, p + "out_proj.w")                     # (b, L, d_model)
    cache = MambaBlockCache(prefix, dims, in_cache, conv_cache, silu_cache, x_cache, dt_cache, scan_cache,
                            out_cache, A, x, h_last)
    return y, cache


def mamba_block_backward(dy, cache):
    """Backward of mamba_block_forward (derivations/mamba.md#block). dy: (b, L, d_model).

    Returns (da (b, L, d_model), grads: dict with the same keys as the block's params).
    """
    if not isinstance(cache, MambaBlockCache):
        validate.fail("cache", "the MambaBlockCache of mamba_block_forward", type(cache).__name__)
    p = cache.prefix + "."
    dims = cache.dims
    dy = validate.float_array(dy, "dy", shape=cache.x.shape[:2] + (dims.d_model,))
    do, grads = project_backward(dy, cache.out_cache)                               # (b, L, D)
    du, ddelta, dA, dB, dC, dDskip, dz, dbias, _ = selective_scan_backward(do, cache.scan_cache)
    grads[p + "A_log"] = dA * cache.A                                               # A = -exp(A_log): dA_log = dA * A
    grads[p + "D"] = dDskip
    grads[p + "dt_proj.b"] = dbias
    if dims.selective:
        dr, g = project_backward(ddelta, cache.dt_cache)                           # (b, L, R)
        grads.update(g)
        drbc = np.concatenate([dr, dB, dC], axis=-1)                                # (b, L, R + 2N)
        du_x, g = project_backward(drbc, cache.x_cache)                            # (b, L, D)
        grads.update(g)
        du = du + du_x
    else:
        grads[p + "B"] = dB.sum(axis=(0, 1))                                        # B, C shared over (b, t)
        grads[p + "C"] = dC.sum(axis=(0, 1))
    dv = silu_backward(du, cache.silu_cache)                                        # (b, L, D)
    dx, grads[p + "conv.w"], grads[p + "conv.b"] = causal_conv1d_backward(dv, cache.conv_cache)
    dxz = np.concatenate([dx, dz], axis=-1)                                         # (b, L, 2D)
    da, g = project_backward(dxz, cache.in_cache)                                   # (b, L, d_model)
    grads.update(g)
    return da, grads


# ------------------------------------------------------------------------------------------------
# recurrent mode (one token at a time, constant cost per token; mamba_simple.py Mamba.step)


class MambaBlockState(NamedTuple):
    conv: np.ndarray   # (b, D, K) the last K conv inputs x, oldest first
    ssm: np.ndarray    # (b, D, N) the SSM state h


def new_mamba_block_state(params, batch, *, prefix="mixer", dtype=np.float64):
    """Zero state: the recurrent equivalent of the zero padding before t = 0."""
    batch = validate.positive_int(batch, "batch")
    dims = _dims(params, prefix, np.dtype(dtype))
    return MambaBlockState(np.zeros((batch, dims.D, dims.K), dtype), np.zeros((batch, dims.D, dims.N), dtype))


def mamba_block_final_state(cache):
    """The recurrent state after the forward's last step (prefill a prompt in parallel, then step)."""
    K = cache.dims.K
    x = cache.x                                                                     # (b, L, D)
    nb, L, D = x.shape
    conv = np.zeros((nb, D, K), x.dtype)
    m = min(K, L)
    conv[:, :, K - m:] = np.transpose(x[:, L - m:, :], (0, 2, 1))
    return MambaBlockState(conv, cache.h_last.copy())


def mamba_block_step(a_t, params, state, *, prefix="mixer"):
    """One token: a_t (b, d_model), state MambaBlockState. Returns (y_t (b, d_model), new state)."""
    a_t = validate.float_array(a_t, "a_t", ndim=2)
    dims = _dims(params, prefix, a_t.dtype)
    p = prefix + "."
    D, N, R, K = dims.D, dims.N, dims.R, dims.K
    nb = a_t.shape[0]
    if not isinstance(state, MambaBlockState):
        validate.fail("state", "a MambaBlockState", type(state).__name__)
    validate.array(state.conv, "state.conv", shape=(nb, D, K), dtype=a_t.dtype)
    validate.array(state.ssm, "state.ssm", shape=(nb, D, N), dtype=a_t.dtype)
    xz = a_t @ params[p + "in_proj.w"]                                              # (b, 2D)
    x, z = xz[:, :D], xz[:, D:]
    conv = np.concatenate([state.conv[:, :, 1:], x[:, :, None]], axis=2)            # roll left, newest last
    v = np.sum(conv * params[p + "conv.w"], axis=2) + params[p + "conv.b"]         # (b, D)
    u = v / (1.0 + np.exp(-v))                                                      # silu
    if dims.selective:
        rbc = u @ params[p + "x_proj.w"]                                            # (b, R + 2N)
        delta = rbc[:, :R] @ params[p + "dt_proj.w"]                                # (b, D)
        Bt, Ct = rbc[:, R:R + N], rbc[:, R + N:]
    else:
        delta = np.zeros((nb, D), a_t.dtype)
        Bt = np.broadcast_to(params[p + "B"], (nb, N))
        Ct = np.broadcast_to(params[p + "C"], (nb, N))
    A = -np.exp(params[p + "A_log"])
    o, h = selective_scan_step(state.ssm, u, delta, A, np.ascontiguousarray(Bt), np.ascontiguousarray(Ct),
                               D=params[p + "D"], z=np.ascontiguousarray(z), delta_bias=params[p + "dt_proj.b"],
                               delta_softplus=True)
    y = o @ params[p + "out_proj.w"]                                                # (b, d_model)
    return y, MambaBlockState(conv, h)


def block_dt(params, prefix="mixer"):
    """dt = softplus(b_dt) of the LTI block, or the bias part of a selective block's dt (for inspection)."""
    return softplus(params[prefix + ".dt_proj.b"])
