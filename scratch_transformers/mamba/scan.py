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

The loops themselves (numba, ``mamba.scan_kernels``) follow the paper's hardware-aware kernel (Sec. 3.3,
App. D): the (b, L, D, N) tensors h, A_bar, B_bar are never materialised; the forward checkpoints the state
every ``chunk`` steps and the backward recomputes one chunk at a time for the reverse-time adjoint recurrence
(derivations/mamba.md#adjoint). This module validates, allocates the outputs and calls them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import get_num_threads

from ..core import validate
from .scan_kernels import (ssm_backward_kernel, ssm_backward_serial, ssm_forward_kernel,
                           ssm_forward_serial)

CHANNEL_GROUP = 128  # channels per work item (both directions); fixed so that results do not depend on threads
CHANNEL_BLOCK = 32   # the backward walks its group in blocks of 32 channels (the chunk's scratch is per block)

# The same loops compiled without threads: below PARALLEL_MIN_WORK state updates (b * L * D * N) a parallel launch
# costs about what it saves (measured on 2 cores: break-even near 1e5 updates, 1.8x faster at 1e6).
PARALLEL_MIN_WORK = 1 << 17


def adaptive_chunk(L, D, batch=1):
    """The checkpoint interval used when ``chunk=None``: ceil(sqrt(batch L D / (2 workers block))), in [1, L].

    The backward holds the checkpoints, batch * ceil(L / chunk) * D * N numbers, and, per running work item
    (workers = min(threads, batch * channel groups) of them), the recomputed states and A_bar of one chunk and one
    channel block, 2 * chunk * N * block numbers. Their sum is smallest at the chunk above (it then grows like
    sqrt(L), not like L). Results do not depend on the chunk (test_any_chunk_gives_identical_results_threaded),
    hence neither on the thread count.
    """
    block = min(CHANNEL_BLOCK, D)
    n_groups = -(-D // min(CHANNEL_GROUP, D))
    workers = max(1, min(get_num_threads(), batch * n_groups))
    return int(min(L, max(1, np.ceil(np.sqrt(batch * L * D / (2.0 * workers * block))))))


class ScanCache(NamedTuple):
    u: np.ndarray             # (b, L, D)
    delta: np.ndarray         # (b, L, D) the raw step as given (Delta is recomputed from it in the backward)
    bias: np.ndarray          # (D,) delta_bias (zeros when it was None)
    At: np.ndarray            # (N, D) A transposed (channels contiguous, as the kernels read it)
    B: np.ndarray             # (b, L, N)
    C: np.ndarray             # (b, L, N)
    D: np.ndarray             # (D,) the skip D (zeros when D was None)
    z: np.ndarray | None      # (b, L, D)
    ckpt: np.ndarray          # (b, ceil(L / chunk), N, D): h before steps 0, chunk, 2 chunk, ...
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
                           h0=None, chunk=None):
    """Selective scan (S6), Algorithm 2 with eqs. (2a), (2b), (4) (ZOH A_bar, Euler B_bar = dt B).

    u, delta: (b, L, D); A: (D, N) (pass -exp(A_log)); B, C: (b, L, N); D (skip), delta_bias: (D,) or None;
    z: (b, L, D) or None (gate out = y * silu(z)); h0: (b, D, N) initial state or None (zeros).
    dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias.
    chunk: checkpoint the state every ``chunk`` steps (memory b*ceil(L/chunk)*D*N, the backward recomputes the
    rest); None picks adaptive_chunk(L, D, b), about sqrt(L). Results are identical for every chunk.

    Returns ((out (b, L, D), h_last (b, D, N)), cache); out and h_last have the dtype of u.
    """
    u, delta, A, B, C, D, z, delta_bias, h0 = _check_inputs(u, delta, A, B, C, D, z, delta_bias, h0)
    delta_softplus = validate.flag(delta_softplus, "delta_softplus")
    nb, L, Dd = u.shape
    chunk = adaptive_chunk(L, Dd, nb) if chunk is None else validate.positive_int(chunk, "chunk")
    N = A.shape[1]
    dtype = u.dtype
    has = (D is not None, z is not None, delta_bias is not None, h0 is not None)
    bias = delta_bias if delta_bias is not None else np.zeros(Dd, dtype)        # (D,) Alg. 2 line 4
    At = np.ascontiguousarray(A.T)                                               # (N, D)
    hh0 = h0 if h0 is not None else np.zeros((nb, Dd, N), dtype)
    Dsk = D if D is not None else np.zeros(Dd, dtype)
    y = np.empty((nb, L, Dd), dtype)                                             # (b, L, D) C_t h_t + D u_t
    h_last = np.empty((nb, Dd, N), dtype)                                        # (b, D, N)
    ckpt = np.empty((nb, (L + chunk - 1) // chunk, N, Dd), dtype)               # (b, n_chunks, N, D)
    kernel = ssm_forward_kernel if nb * L * Dd * N >= PARALLEL_MIN_WORK else ssm_forward_serial
    kernel(np.ascontiguousarray(u), np.ascontiguousarray(delta), bias, bool(delta_softplus), At,
           np.ascontiguousarray(B), np.ascontiguousarray(C), Dsk,
           np.ascontiguousarray(z) if z is not None else np.empty((1, 1, 1), dtype), z is not None,
           hh0, chunk, min(CHANNEL_GROUP, Dd), y, h_last, ckpt)
    out = y                                                                      # (b, L, D) y * silu(z)
    cache = ScanCache(u, delta, bias, At, B, C, Dsk, z, ckpt, bool(delta_softplus), chunk, has)
    return (out, h_last), cache


def _check_cache(cache):
    """The cache must be selective_scan_forward's, with shapes that agree: the kernels index every array by them
    (a wrong chunk or a short checkpoint would read out of bounds or divide by zero). Returns (u, N)."""
    validate.cache(cache, ScanCache, "selective_scan_forward")
    u = validate.float_array(cache.u, "cache.u", ndim=3)
    nb, L, Dd = u.shape
    chunk = validate.positive_int(cache.chunk, "cache.chunk")
    N = validate.array(cache.At, "cache.At", shape=(None, Dd), dtype=u.dtype).shape[0]
    if L < 1 or Dd < 1 or N < 1:
        validate.fail("cache.u", "a non-empty scan (L, D, N >= 1)", (nb, L, Dd, N))
    shapes = dict(delta=u.shape, bias=(Dd,), B=(nb, L, N), C=(nb, L, N), D=(Dd,), ckpt=(nb, -(-L // chunk), N, Dd))
    for name, shape in shapes.items():
        validate.array(getattr(cache, name), "cache." + name, shape=shape, dtype=u.dtype)
    validate.flag(cache.delta_softplus, "cache.delta_softplus")
    has = cache.has
    if not (isinstance(has, tuple) and len(has) == 4 and all(isinstance(x, (bool, np.bool_)) for x in has)
            and has[1] == (cache.z is not None)):
        validate.fail("cache.has", "4 bools (D, z, delta_bias, h0 given), z's flag matching cache.z", repr(has))
    if cache.z is not None:
        validate.array(cache.z, "cache.z", shape=u.shape, dtype=u.dtype)
    return u, N


def selective_scan_backward(dy, cache):
    """Backward of selective_scan_forward: the reverse-time adjoint (derivations/mamba.md#adjoint).

    dy: dout (b, L, D), or a tuple (dout, dh_last) with dh_last (b, D, N) or None (the gradient flowing
    into the returned last state). Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in argument
    order, None for an optional input that was not given. Nothing of size (b, L, D, N) is allocated.
    """
    u, N = _check_cache(cache)
    nb, L, Dd = u.shape
    dtype = u.dtype
    if isinstance(dy, (tuple, list)):
        if len(dy) != 2:
            validate.fail("dy", "dout or a pair (dout, dh_last)", f"a sequence of length {len(dy)}")
        dout, dh_last = dy
    else:
        dout, dh_last = dy, None
    dout = validate.same_dtype(validate.float_array(dout, "dout", shape=u.shape), "dout", u, "u")
    if dh_last is not None:
        dh_last = validate.same_dtype(validate.float_array(dh_last, "dh_last", shape=(nb, Dd, N)), "dh_last",
                                      u, "u")
        lam = dh_last.transpose(0, 2, 1).copy()                 # (b, N, D) lambda (a copy: the kernel updates it)
    else:
        lam = np.zeros((nb, N, Dd), dtype)
    has_D, has_z, has_bias, has_h0 = cache.has
    z = cache.z
    du = np.empty_like(u)                                       # (b, L, D)
    ddelta = np.empty_like(u)                                   # (b, L, D)
    dz = np.empty_like(u) if has_z else np.empty((1, 1, 1), dtype)
    dA_acc = np.zeros((nb, N, Dd))                              # float64, per batch element, summed below
    dD_acc = np.zeros((nb, Dd))
    group = min(CHANNEL_GROUP, Dd)
    n_groups = (Dd + group - 1) // group
    dB_part = np.empty((n_groups, nb, L, N), dtype)            # per channel group, summed below
    dC_part = np.empty((n_groups, nb, L, N), dtype)
    kernel = ssm_backward_kernel if nb * L * Dd * N >= PARALLEL_MIN_WORK else ssm_backward_serial
    kernel(np.ascontiguousarray(u), np.ascontiguousarray(cache.delta), cache.bias, cache.delta_softplus,
           cache.At, np.ascontiguousarray(cache.B), np.ascontiguousarray(cache.C), cache.D,
           np.ascontiguousarray(z) if has_z else dz, has_z, cache.ckpt, np.ascontiguousarray(dout),
           cache.chunk, min(CHANNEL_BLOCK, Dd), group, du, ddelta, dz, lam, dA_acc, dD_acc,
           dB_part, dC_part)                                    # steps 1-9
    return (du, ddelta,
            (dA_acc[0] if nb == 1 else dA_acc.sum(axis=0)).T.astype(dtype),
            dB_part[0] if n_groups == 1 else dB_part.sum(axis=0),
            dC_part[0] if n_groups == 1 else dC_part.sum(axis=0),
            dD_acc.sum(axis=0).astype(dtype) if has_D else None,
            dz if has_z else None,
            ddelta.sum(axis=(0, 1)) if has_bias else None,
            np.ascontiguousarray(lam.transpose(0, 2, 1)) if has_h0 else None)        # step 10: dh0 = lambda


def selective_scan_step(h, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False):
    """One step of the recurrence for autoregressive inference (recurrent mode, Sec. 3.3 / Sec. 2 eq. 2).

    h: (b, D, N) state h_{t-1}; u, delta, z: (b, D); B, C: (b, N); A: (D, N); D, delta_bias: (D,) or None.
    Returns (out_t (b, D), h_t (b, D, N)), the same numbers the scan gives at step t.
    """
    u = validate.float_array(u, "u", ndim=2)
    delta_softplus = validate.flag(delta_softplus, "delta_softplus")
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
