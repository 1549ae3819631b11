"""The selective scan of Mamba (S6, Gu & Dao 2023, Algorithm 2) as numba loops over time.

Glossary (code symbol -> paper, see derivations/mamba.md):

    b, L        batch, sequence length                      (paper: B, L)
    D           channels of the scan (d_inner = E * d_model)  (Algorithm 2: D)
    N           state size per channel (d_state)            (Algorithm 2: N)
    u  (b,L,D)  scan input x_t                              (eq. 2a: x_t)
    delta       (b,L,D) the raw step, before bias/softplus  (Alg. 2 line 4: Parameter + s_Delta(x))
    dt          = softplus(delta + delta_bias) (or delta + delta_bias without softplus)   (Delta, tau_Delta)
    A  (D,N)    diagonal state matrix, real; negative for a stable scan (A = -exp(A_log))
    B, C (b,L,N) input-dependent projections shared by all D channels (Alg. 2 lines 2-3)
    Dskip (D,)  skip connection y += Dskip * u (reference code's ``D``)
    z  (b,L,D)  gate: out = y * silu(z)
    h  (b,D,N)  state

Per batch element, channel d and state n (all products elementwise because A is diagonal):

    A_bar_t = exp(dt_t A)                                  eq. (4), zero-order hold
    h_t     = A_bar_t * h_{t-1} + (dt_t * u_t) B_t         eq. (2a) with the reference code's Euler B_bar = dt B
    y_t     = sum_n C_t[n] h_t[d, n] + Dskip * u_t         eq. (2b) plus the skip
    out_t   = y_t * silu(z_t)                              the gate of the Mamba block (Fig. 3)

Like the paper's hardware-aware kernel (Sec. 3.3, App. D) the (b, L, D, N) tensors h, A_bar, B_bar are never
materialised: the forward keeps the inputs and the state at every ``chunk``-th step (a checkpoint of
b * ceil(L/chunk) * D * N numbers); the backward recomputes the states of one chunk at a time and runs the
reverse-time adjoint recurrence lambda_t = dy_t C_t + A_bar_{t+1} * lambda_{t+1} (derivations/mamba.md#adjoint).
Work is split with ``prange`` over (batch, channel) in the forward and over (batch, block of channels) in the
backward (B and C are shared by all channels, so their gradients are summed over a block without races).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..core import validate

CHANNEL_BLOCK = 32  # channels per backward work item; fixed so results do not depend on the thread count


@njit(cache=True)
def _softplus(v):
    """softplus(v) = log(1 + e^v) = max(v, 0) + log1p(e^{-|v|}) (no overflow for large |v|)."""
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@njit(cache=True)
def _sigmoid(v):
    """Logistic function without overflow: the derivative of softplus and part of silu."""
    if v >= 0.0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(cache=True, parallel=True)
def _scan_forward_kernel(u, delta, A, B, C, Dskip, z, delta_bias, h0, softplus, has_z, chunk,
                         out, h_last, ckpt):
    """Algorithm 2 line 6 (recurrent mode), one (batch, channel) pair per work item."""
    nb, L, D = u.shape
    N = A.shape[1]
    for bd in prange(nb * D):                               # independent (batch, channel) recurrences
        b = bd // D
        d = bd % D
        h = np.empty(N, dtype=np.float64)                   # the state h[d, :] of this channel
        for n in range(N):
            h[n] = h0[b, d, n]
        for t in range(L):
            if t % chunk == 0:                              # checkpoint h_{t-1} for the backward
                for n in range(N):
                    ckpt[b, t // chunk, d, n] = h[n]
            dt = delta[b, t, d] + delta_bias[d]             # line 4: Delta = tau_Delta(Parameter + s_Delta(x))
            if softplus:
                dt = _softplus(dt)
            ut = u[b, t, d]
            y = 0.0
            for n in range(N):
                a_bar = math.exp(dt * A[d, n])              # line 5, eq. (4): A_bar = exp(Delta A)
                h[n] = a_bar * h[n] + dt * B[b, t, n] * ut  # eq. (2a): h_t = A_bar h_{t-1} + B_bar x_t, B_bar = Delta B
                y += C[b, t, n] * h[n]                      # eq. (2b): y_t = C_t h_t
            y += Dskip[d] * ut                              # skip connection
            if has_z:
                zt = z[b, t, d]
                y *= zt * _sigmoid(zt)                      # gate: y * silu(z)
            out[b, t, d] = y
        for n in range(N):
            h_last[b, d, n] = h[n]


@njit(cache=True, parallel=True)
def _scan_backward_kernel(u, delta, A, B, C, Dskip, z, delta_bias, softplus, has_z, chunk, ckpt,
                          dout, dh_last, block,
                          du, ddelta, dz, dh0, dA_part, dD_part, dbias_part, dB_part, dC_part):
    """Reverse-time adjoint of _scan_forward_kernel (derivations/mamba.md#adjoint, steps 1-9).

    One work item = one batch element and one block of channels; inside it the channels run one after the
    other, so dB_part[blk] and dC_part[blk] (sums over the block's channels) are written by one thread only.
    """
    nb, L, D = u.shape
    N = A.shape[1]
    n_blocks = (D + block - 1) // block
    n_chunks = ckpt.shape[1]
    for item in prange(nb * n_blocks):
        b = item // n_blocks
        blk = item % n_blocks
        hs = np.empty((chunk + 1, N), dtype=np.float64)     # h_{t0-1} .. h_{t1-1}: the states of one chunk
        a_bars = np.empty((chunk, N), dtype=np.float64)     # A_bar_t of the chunk
        lam = np.empty(N, dtype=np.float64)                 # adjoint lambda = dLoss/dh
        dA_acc = np.empty(N, dtype=np.float64)
        for d in range(blk * block, min(D, (blk + 1) * block)):
            for n in range(N):
                lam[n] = dh_last[b, d, n]                   # gradient flowing into the returned last state
                dA_acc[n] = 0.0
            dD_acc = 0.0
            dbias_acc = 0.0
            for c in range(n_chunks - 1, -1, -1):           # chunks from last to first
                t0 = c * chunk
                t1 = min(L, t0 + chunk)
                for n in range(N):                          # recompute the chunk's states from its checkpoint
                    hs[0, n] = ckpt[b, c, d, n]
                for t in range(t0, t1):
                    dt = delta[b, t, d] + delta_bias[d]
                    if softplus:
                        dt = _softplus(dt)
                    ut = u[b, t, d]
                    i = t - t0
                    for n in range(N):
                        a_bar = math.exp(dt * A[d, n])
                        a_bars[i, n] = a_bar
                        hs[i + 1, n] = a_bar * hs[i, n] + dt * B[b, t, n] * ut
                for t in range(t1 - 1, t0 - 1, -1):         # reverse time inside the chunk
                    i = t - t0                              # hs[i + 1] = h_t, hs[i] = h_{t-1}
                    raw = delta[b, t, d] + delta_bias[d]
                    dt = _softplus(raw) if softplus else raw
                    ut = u[b, t, d]
                    g = dout[b, t, d]
                    if has_z:                               # step 1: gate
                        zt = z[b, t, d]
                        s = _sigmoid(zt)
                        y = 0.0
                        for n in range(N):
                            y += C[b, t, n] * hs[i + 1, n]
                        y += Dskip[d] * ut
                        dz[b, t, d] = g * y * s * (1.0 + zt * (1.0 - s))
                        dy = g * zt * s
                    else:
                        dy = g
                    dD_acc += dy * ut                       # step 2: skip
                    du_t = Dskip[d] * dy
                    ddt = 0.0
                    for n in range(N):
                        lam[n] += dy * C[b, t, n]           # step 3: lambda_t = dy_t C_t + A_bar_{t+1} lambda_{t+1}
                        dC_part[blk, b, t, n] += dy * hs[i + 1, n]          # step 4: dC_t = sum_d dy_t h_t
                        dB_part[blk, b, t, n] += lam[n] * dt * ut           # step 5: dB_t = sum_d lambda_t dt u_t
                        du_t += dt * lam[n] * B[b, t, n]                    # step 6
                        ah = a_bars[i, n] * hs[i, n]                        # A_bar_t h_{t-1}
                        ddt += lam[n] * (B[b, t, n] * ut + A[d, n] * ah)    # step 7
                        dA_acc[n] += lam[n] * dt * ah                       # step 8
                        lam[n] *= a_bars[i, n]              # carry A_bar_t lambda_t to step t-1
                    du[b, t, d] = du_t
                    if softplus:
                        ddt *= _sigmoid(raw)                # step 9: softplus' = sigmoid
                    ddelta[b, t, d] = ddt
                    dbias_acc += ddt
            for n in range(N):
                dh0[b, d, n] = lam[n]                       # dLoss/dh0 = A_bar_0 lambda_0
                dA_part[b, d, n] = dA_acc[n]
            dD_part[b, d] = dD_acc
            dbias_part[b, d] = dbias_acc


class ScanCache(NamedTuple):
    u: np.ndarray             # (b, L, D)
    delta: np.ndarray         # (b, L, D)
    A: np.ndarray             # (D, N)
    B: np.ndarray             # (b, L, N)
    C: np.ndarray             # (b, L, N)
    Dskip: np.ndarray         # (D,)  zeros when D was None
    z: np.ndarray             # (b, L, D), or (1, 1, 1) dummy when z was None
    delta_bias: np.ndarray    # (D,)  zeros when delta_bias was None
    ckpt: np.ndarray          # (b, ceil(L / chunk), D, N) float64: h before steps 0, chunk, 2 chunk, ...
    delta_softplus: bool
    chunk: int
    has: tuple                # which optional inputs were given: (D, z, delta_bias, h0)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, h0):
    u = validate.float_array(u, "u", ndim=3)
    nb, L, Dd = u.shape
    if L < 1 or Dd < 1:
        validate.fail("u", "shape (b, L, D) with L >= 1 and D >= 1", u.shape)
    delta = validate.float_array(delta, "delta", shape=u.shape)
    A = validate.float_array(A, "A", ndim=2, finite=True)
    if A.shape[0] != Dd or A.shape[1] < 1:
        validate.fail("A", f"shape ({Dd}, N) with N >= 1", A.shape)
    N = A.shape[1]
    B = validate.float_array(B, "B", shape=(nb, L, N))
    C = validate.float_array(C, "C", shape=(nb, L, N))
    for arr, name in ((delta, "delta"), (A, "A"), (B, "B"), (C, "C")):
        validate.same_dtype(arr, name, u, "u")
    if D is not None:
        D = validate.same_dtype(validate.float_array(D, "D", shape=(Dd,)), "D", u, "u")
    if z is not None:
        z = validate.same_dtype(validate.float_array(z, "z", shape=u.shape), "z", u, "u")
    if delta_bias is not None:
        delta_bias = validate.same_dtype(validate.float_array(delta_bias, "delta_bias", shape=(Dd,)),
                                         "delta_bias", u, "u")
    if h0 is not None:
        h0 = validate.same_dtype(validate.float_array(h0, "h0", shape=(nb, Dd, N)), "h0", u, "u")
    return u, delta, A, B, C, D, z, delta_bias, h0


def selective_scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False,
                           h0=None, chunk=64):
    """Selective scan (S6), Algorithm 2 with eqs. (2a), (2b), (4) (ZOH A_bar, Euler B_bar = dt B).

    u, delta: (b, L, D); A: (D, N) (pass -exp(A_log)); B, C: (b, L, N); D (skip), delta_bias: (D,) or None;
    z: (b, L, D) or None (gate out = y * silu(z)); h0: (b, D, N) initial state or None (zeros).
    dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias.
    chunk: checkpoint the state every ``chunk`` steps (memory b*ceil(L/chunk)*D*N, backward recomputes).

    Returns ((out (b, L, D), h_last (b, D, N)), cache); out and h_last have the dtype of u.
    """
    u, delta, A, B, C, D, z, delta_bias, h0 = _check_inputs(u, delta, A, B, C, D, z, delta_bias, h0)
    if not isinstance(delta_softplus, (bool, np.bool_)):
        validate.fail("delta_softplus", "a bool", repr(delta_softplus))
    chunk = validate.positive_int(chunk, "chunk")
    nb, L, Dd = u.shape
    N = A.shape[1]
    dtype = u.dtype
    has = (D is not None, z is not None, delta_bias is not None, h0 is not None)
    Dskip = D if D is not None else np.zeros(Dd, dtype)
    zz = z if z is not None else np.zeros((1, 1, 1), dtype)
    bias = delta_bias if delta_bias is not None else np.zeros(Dd, dtype)
    hh0 = h0 if h0 is not None else np.zeros((nb, Dd, N), dtype)
    out = np.empty((nb, L, Dd), dtype)                                     # (b, L, D)
    h_last = np.empty((nb, Dd, N), dtype)                                  # (b, D, N)
    ckpt = np.empty((nb, (L + chunk - 1) // chunk, Dd, N), np.float64)     # (b, n_chunks, D, N)
    _scan_forward_kernel(u, delta, A, B, C, Dskip, zz, bias, hh0, bool(delta_softplus), z is not None, chunk,
                         out, h_last, ckpt)
    cache = ScanCache(u, delta, A, B, C, Dskip, zz, bias, ckpt, bool(delta_softplus), chunk, has)
    return (out, h_last), cache


def selective_scan_backward(dy, cache):
    """Backward of selective_scan_forward: the reverse-time adjoint (derivations/mamba.md#adjoint).

    dy: dout (b, L, D), or a tuple (dout, dh_last) with dh_last (b, D, N) or None (the gradient flowing
    into the returned last state). Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in argument
    order, None for an optional input that was not given. Nothing of size (b, L, D, N) is allocated.
    """
    if not isinstance(cache, ScanCache):
        validate.fail("cache", "the ScanCache returned by selective_scan_forward", type(cache).__name__)
    u = cache.u
    nb, L, Dd = u.shape
    N = cache.A.shape[1]
    dtype = u.dtype
    if isinstance(dy, (tuple, list)):
        if len(dy) != 2:
            validate.fail("dy", "dout or a pair (dout, dh_last)", f"a sequence of length {len(dy)}")
        dout, dh_last = dy
    else:
        dout, dh_last = dy, None
    dout = validate.same_dtype(validate.float_array(dout, "dout", shape=u.shape), "dout", u, "u")
    if dh_last is None:
        dh_last = np.zeros((nb, Dd, N), dtype)
    dh_last = validate.same_dtype(validate.float_array(dh_last, "dh_last", shape=(nb, Dd, N)), "dh_last", u, "u")
    block = min(CHANNEL_BLOCK, Dd)
    n_blocks = (Dd + block - 1) // block
    du = np.empty_like(u)                                   # (b, L, D)
    ddelta = np.empty_like(u)                               # (b, L, D)
    dz = np.zeros_like(cache.z)                             # (b, L, D) or dummy
    dh0 = np.empty((nb, Dd, N), dtype)                      # (b, D, N)
    dA_part = np.empty((nb, Dd, N), np.float64)             # per batch element, summed below
    dD_part = np.empty((nb, Dd), np.float64)
    dbias_part = np.empty((nb, Dd), np.float64)
    dB_part = np.zeros((n_blocks, nb, L, N), np.float64)    # per channel block, summed below
    dC_part = np.zeros((n_blocks, nb, L, N), np.float64)
    _scan_backward_kernel(u, cache.delta, cache.A, cache.B, cache.C, cache.Dskip, cache.z, cache.delta_bias,
                          cache.delta_softplus, cache.has[1], cache.chunk, cache.ckpt, dout, dh_last, block,
                          du, ddelta, dz, dh0, dA_part, dD_part, dbias_part, dB_part, dC_part)
    has_D, has_z, has_bias, has_h0 = cache.has
    return (du, ddelta,
            dA_part.sum(axis=0).astype(dtype),
            dB_part.sum(axis=0).astype(dtype),
            dC_part.sum(axis=0).astype(dtype),
            dD_part.sum(axis=0).astype(dtype) if has_D else None,
            dz if has_z else None,
            dbias_part.sum(axis=0).astype(dtype) if has_bias else None,
            dh0 if has_h0 else None)


def selective_scan_step(h, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False):
    """One step of the recurrence for autoregressive inference (recurrent mode, Sec. 3.3 / Sec. 2 eq. 2).

    h: (b, D, N) state h_{t-1}; u, delta, z: (b, D); B, C: (b, N); A: (D, N); D, delta_bias: (D,) or None.
    Returns (out_t (b, D), h_t (b, D, N)), the same numbers the scan gives at step t.
    """
    u = validate.float_array(u, "u", ndim=2)
    nb, Dd = u.shape
    A = validate.same_dtype(validate.float_array(A, "A", ndim=2), "A", u, "u")
    if A.shape[0] != Dd:
        validate.fail("A", f"shape ({Dd}, N)", A.shape)
    N = A.shape[1]
    h = validate.same_dtype(validate.float_array(h, "h", shape=(nb, Dd, N)), "h", u, "u")
    delta = validate.same_dtype(validate.float_array(delta, "delta", shape=(nb, Dd)), "delta", u, "u")
    B = validate.same_dtype(validate.float_array(B, "B", shape=(nb, N)), "B", u, "u")
    C = validate.same_dtype(validate.float_array(C, "C", shape=(nb, N)), "C", u, "u")
    dt = delta.astype(np.float64)
    if delta_bias is not None:
        delta_bias = validate.same_dtype(validate.float_array(delta_bias, "delta_bias", shape=(Dd,)),
                                         "delta_bias", u, "u")
        dt = dt + delta_bias
    if delta_softplus:
        dt = np.maximum(dt, 0.0) + np.log1p(np.exp(-np.abs(dt)))               # (b, D)
    u64 = u.astype(np.float64)
    a_bar = np.exp(dt[:, :, None] * A)                                          # (b, D, N)  eq. (4)
    h_new = a_bar * h + (dt * u64)[:, :, None] * B[:, None, :]                  # (b, D, N)  eq. (2a)
    y = np.einsum("bdn,bn->bd", h_new, C.astype(np.float64))                    # (b, D)     eq. (2b)
    if D is not None:
        D = validate.same_dtype(validate.float_array(D, "D", shape=(Dd,)), "D", u, "u")
        y = y + D * u64
    if z is not None:
        z = validate.same_dtype(validate.float_array(z, "z", shape=(nb, Dd)), "z", u, "u")
        z64 = z.astype(np.float64)
        y = y * z64 / (1.0 + np.exp(-z64))                                      # y * silu(z)
    return (y.astype(u.dtype), h_new.astype(u.dtype))


def _gc_make(rng, *, softplus, with_opts):
    nb, L, Dd, N = 2, 5, 3, 2
    inputs = dict(
        u=rng.standard_normal((nb, L, Dd)),
        delta=rng.standard_normal((nb, L, Dd)) * 0.5 + (0.0 if softplus else 1.0),
        A=-np.exp(rng.standard_normal((Dd, N)) * 0.5),
        B=rng.standard_normal((nb, L, N)),
        C=rng.standard_normal((nb, L, N)),
    )
    if with_opts:
        inputs.update(D=rng.standard_normal(Dd), z=rng.standard_normal((nb, L, Dd)),
                      delta_bias=rng.standard_normal(Dd) * 0.3, h0=rng.standard_normal((nb, Dd, N)))
    return inputs


def _gc_forward(softplus, chunk):
    def fwd(**kw):
        return selective_scan_forward(**kw, delta_softplus=softplus, chunk=chunk)
    return fwd


def _gc_backward(names):
    def bwd(dy, cache):
        grads = selective_scan_backward(dy, cache)
        order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
        return {k: g for k, g in zip(order, grads) if k in names}
    return bwd


_ALL = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
_CORE = ("u", "delta", "A", "B", "C")

from ..core.registry import Op  # noqa: E402  (registry entries at the bottom, as in every module)

GRADCHECKS = [
    Op(name="mamba.selective_scan(softplus, D, z, bias, h0)",
       forward=_gc_forward(True, 2), backward=_gc_backward(_ALL),
       make_inputs=lambda rng: _gc_make(rng, softplus=True, with_opts=True),
       covers=("scratch_transformers.mamba.scan.selective_scan_backward",), wrt=_ALL, tol=1e-6),
    Op(name="mamba.selective_scan(plain)",
       forward=_gc_forward(False, 64), backward=_gc_backward(_CORE),
       make_inputs=lambda rng: _gc_make(rng, softplus=False, with_opts=False),
       covers=("scratch_transformers.mamba.scan.selective_scan_backward",), wrt=_CORE, tol=1e-6),
]
