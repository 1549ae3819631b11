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
b * ceil(L/chunk) * D * N numbers; by default chunk = adaptive_chunk(L, D), about sqrt(L)); the backward
recomputes Delta, A_bar and the states of one chunk at a time and runs the reverse-time adjoint recurrence
lambda_t = dy_t C_t + A_bar_{t+1} * lambda_{t+1} (derivations/mamba.md#adjoint). Delta = softplus(delta + bias) is
computed inside both kernels (vectorised exp and log1p), so no (b, L, D) Delta is stored either.
Both kernels split work with ``prange`` over (batch, group of 128 channels); the backward walks a group's
blocks of 32 channels one after the other (B and C are shared by all channels, so
their gradients are summed over a block, then over a group's blocks, then over groups, in a fixed order, without
races). Results depend neither on the thread count nor on the chunk. Problems with fewer than PARALLEL_MIN_WORK
state updates run a serial build of the same loops. The kernels compute in the inputs' dtype (the gate silu(z)
too); only the sums over batch elements are NumPy around the kernels.
"""

from __future__ import annotations

import types
from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange

from ..core import validate
from ..core.vexp import _exp_buffer

CHANNEL_GROUP = 128  # channels per work item (both directions); fixed so that results do not depend on threads
CHANNEL_BLOCK = 32   # the backward walks its group in blocks of 32 channels (the chunk's scratch is per block)

_ZERO_F = np.float32(0.0)   # float32 constants of the softplus tail (typed, so the loop stays in float32)
_C0 = np.float32(1.0)
_TWO_F = np.float32(2.0)
_S1 = np.float32(1.0 / 3)
_S2 = np.float32(1.0 / 5)
_S3 = np.float32(1.0 / 7)
_S4 = np.float32(1.0 / 9)
_S5 = np.float32(1.0 / 11)
_S6 = np.float32(1.0 / 13)
_S7 = np.float32(1.0 / 15)


@njit(cache=True, error_model="numpy")
def _softplus_tail(x, e, nd):
    """x[j] <- softplus(x[j]) = max(x, 0) + log1p(e[j]) for j < nd, given e[j] = exp(-|x[j]|) in [0, 1].

    log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...) with s = e / (2 + e) in [0, 1/3]: a vectorisable
    polynomial (a libm log1p per element is not), accurate also for tiny e (no 1 + e is formed). float64: terms
    up to s^32/33 (truncation < 2e-18 relative); float32: up to s^14/15 (< 2e-9). error_model="numpy": no
    Python zero-division check in the loop (2 + e > 0 anyway), which would block vectorisation.
    """
    if x.itemsize == 8:
        for j in range(nd):
            s = e[j] / (2.0 + e[j])
            s2 = s * s
            p = 1.0 / 33.0
            p = p * s2 + 1.0 / 31.0
            p = p * s2 + 1.0 / 29.0
            p = p * s2 + 1.0 / 27.0
            p = p * s2 + 1.0 / 25.0
            p = p * s2 + 1.0 / 23.0
            p = p * s2 + 1.0 / 21.0
            p = p * s2 + 1.0 / 19.0
            p = p * s2 + 1.0 / 17.0
            p = p * s2 + 1.0 / 15.0
            p = p * s2 + 1.0 / 13.0
            p = p * s2 + 1.0 / 11.0
            p = p * s2 + 1.0 / 9.0
            p = p * s2 + 1.0 / 7.0
            p = p * s2 + 1.0 / 5.0
            p = p * s2 + 1.0 / 3.0
            p = p * s2 + 1.0
            v = x[j]
            x[j] = (v if v > 0.0 else 0.0) + 2.0 * s * p
    else:
        for j in range(nd):
            s = e[j] / (_TWO_F + e[j])
            s2 = s * s
            p = _S7
            p = p * s2 + _S6
            p = p * s2 + _S5
            p = p * s2 + _S4
            p = p * s2 + _S3
            p = p * s2 + _S2
            p = p * s2 + _S1
            p = p * s2 + _C0
            v = x[j]
            x[j] = (v if v > _ZERO_F else _ZERO_F) + _TWO_F * s * p


@njit(cache=True)
def _load_dt(delta, bias, softplus, b, t, d0, nd, dtv, e, bits64, bits32):
    """dtv[j] <- Delta_t of channel d0 + j (Alg. 2 line 4): softplus(delta_t + delta_bias) or delta_t + delta_bias.

    softplus(x) = max(x, 0) + log1p(e) with e = exp(-|x|) (no overflow); e is left in the buffer ``e`` (the
    backward's sigmoid(x) reuses it). Computed here, inside both kernels, so that no (b, L, D) Delta is stored.
    """
    for j in range(nd):
        dtv[j] = delta[b, t, d0 + j] + bias[d0 + j]
    if softplus:
        for j in range(nd):
            e[j] = -abs(dtv[j])
        _exp_buffer(e[:nd], bits64, bits32)
        _softplus_tail(dtv, e, nd)


@njit(cache=True, parallel=True, error_model="numpy")
def _ssm_forward_kernel(u, delta, bias, softplus, At, B, C, Dsk, z, has_z, h0, chunk, block, y, h_last, ckpt):
    """Algorithm 2 line 6 (recurrent mode): y_t = C_t h_t + D u_t with h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,
    then (has_z) the gate out_t = y_t silu(z_t), written to ``y``.

    One work item = one batch element and one block of channels d0 .. d0+nd-1 (the caller passes a group of
    CHANNEL_GROUP channels); the state of the block is held as h[n, j] (state n of channel d0 + j) so that every
    inner loop runs over channels, the contiguous last index of local buffers, and vectorises. The buffers are
    indexed directly (h[n, j]), not through row views: each view costs a reference-count update. Arithmetic is in
    the inputs' precision. Both kernels use error_model="numpy" (IEEE division, no Python zero-division check,
    which would block vectorisation).
    """
    nb, L, D = u.shape
    N = At.shape[0]
    n_blocks = (D + block - 1) // block
    for item in prange(nb * n_blocks):                      # independent (batch, channel block) recurrences
        b = item // n_blocks
        d0 = (item % n_blocks) * block
        nd = min(block, D - d0)
        h = np.empty((N, nd), u.dtype)                      # state h_{t-1}[d0 + j, n] at h[n, j]
        a_flat = np.empty(N * nd, u.dtype)
        a_bar = a_flat.reshape((N, nd))                     # A_bar_t
        bits64 = np.empty(N * nd if u.itemsize == 8 else 0, np.int64)     # exponent bits for exp
        bits32 = np.empty(N * nd if u.itemsize == 4 else 0, np.int32)
        Ab = np.empty((N, nd), u.dtype)                     # A of the block, transposed
        dtv = np.empty(nd, u.dtype)                         # Delta_t, u_t, Delta_t u_t of the block
        ev = np.empty(nd, u.dtype)
        uv = np.empty(nd, u.dtype)
        dtu = np.empty(nd, u.dtype)
        acc = np.empty(nd, u.dtype)
        zv = np.empty(nd, u.dtype)
        for n in range(N):
            for j in range(nd):
                h[n, j] = h0[b, d0 + j, n]
                Ab[n, j] = At[n, d0 + j]
        for t in range(L):
            if t % chunk == 0:                              # checkpoint h_{t-1} for the backward
                for n in range(N):
                    for j in range(nd):
                        ckpt[b, t // chunk, n, d0 + j] = h[n, j]
            _load_dt(delta, bias, softplus, b, t, d0, nd, dtv, ev, bits64, bits32)     # line 4: Delta
            for j in range(nd):
                uv[j] = u[b, t, d0 + j]
                dtu[j] = dtv[j] * uv[j]                     # B_bar u = Delta u B (Euler, as the reference code)
                acc[j] = 0.0
            for n in range(N):
                for j in range(nd):
                    a_bar[n, j] = dtv[j] * Ab[n, j]         # line 5: Delta A
            _exp_buffer(a_flat, bits64, bits32)             # eq. (4): A_bar = exp(Delta A)
            for n in range(N):
                bn = B[b, t, n]
                cn = C[b, t, n]
                for j in range(nd):
                    hv = a_bar[n, j] * h[n, j] + dtu[j] * bn    # eq. (2a): h_t = A_bar h_{t-1} + B_bar x_t
                    h[n, j] = hv
                    acc[j] += cn * hv                       # eq. (2b): y_t = C_t h_t
            for j in range(nd):
                acc[j] += Dsk[d0 + j] * uv[j]               # skip connection D u
            if has_z:                                       # gate: y_t silu(z_t) = y_t z_t / (1 + exp(-z_t))
                for j in range(nd):
                    zv[j] = -z[b, t, d0 + j]
                _exp_buffer(zv, bits64, bits32)
                for j in range(nd):
                    acc[j] *= z[b, t, d0 + j] / (1.0 + zv[j])
            for j in range(nd):
                y[b, t, d0 + j] = acc[j]
        for n in range(N):
            for j in range(nd):
                h_last[b, d0 + j, n] = h[n, j]


@njit(cache=True)
def _sum_over_channels(tmp, nd, out):
    """out[n] = sum_j tmp[n, j], j = 0 .. nd-1 in order (a fixed, thread-independent order); the inner loop runs
    over n so that it vectorises."""
    for n in range(tmp.shape[0]):
        out[n] = tmp[n, 0]
    for j in range(1, nd):
        for n in range(tmp.shape[0]):
            out[n] += tmp[n, j]


@njit(cache=True, parallel=True, error_model="numpy")
def _ssm_backward_kernel(u, delta, bias, softplus, At, B, C, Dsk, z, has_z, ckpt, dout, chunk, block, group,
                         du, ddelta, dz, lam, dA_acc, dD_acc, dB_part, dC_part):
    """Reverse-time adjoint of _ssm_forward_kernel (derivations/mamba.md#adjoint, steps 1-9).

    One work item (``prange``) = one batch element and one group of ``group`` channels. It walks the chunks of
    time from the last to the first (the adjoint flows backwards), and in each chunk the group's blocks of
    ``block`` channels one after the other: recompute the block's Delta_t, A_bar_t and states h from the chunk's
    checkpoint, then walk back in time with lambda_t = dy_t C_t + A_bar_{t+1} lambda_{t+1}. What carries over from
    one chunk to the previous one lives in arrays of size (b, N, D): lam (in: dLoss/dh_{L-1}, transposed; out:
    dLoss/dh0) and the float64 sums dA_acc (and dD_acc, (b, D)); a block loads its part at the start of the chunk
    and stores it back at the end, so the sums run in time order whatever the chunk. B_t and C_t are shared by all
    channels, so dB_t and dC_t are sums over channels: over a block's channels (in order), then over the group's
    blocks (in order) into dB_part[group] / dC_part[group], summed over groups afterwards. The scratch of an item
    is the states and A_bar of one chunk and one block, 2 * chunk * N * block numbers (chunk ~ sqrt(L) by
    default), and the work items need no synchronisation (one parallel launch, no barrier per chunk).
    Steps 1-2 (gate, skip) are done per time step too: with the gate (has_z), dy_t = dout_t silu(z_t) and
    dz_t = dout_t y_t silu'(z_t), where y_t = C_t h_t + D u_t is recomputed from the chunk's states (never cached).
    """
    nb, L, D = u.shape
    N = At.shape[0]
    n_groups = (D + group - 1) // group
    n_chunks = ckpt.shape[1]
    for item in prange(nb * n_groups):                      # independent (batch, channel group) adjoints
        b = item // n_groups
        g = item % n_groups
        g0 = g * group
        g1 = min(D, g0 + group)
        hs_buf = np.empty((chunk + 1) * N * block, u.dtype)  # flat buffers, viewed per (chunk, block) below
        ab_buf = np.empty(chunk * N * block, u.dtype)
        dts_buf = np.empty(chunk * block, u.dtype)
        sig_buf = np.empty(chunk * block, u.dtype)
        bits64 = np.empty(N * block if u.itemsize == 8 else 0, np.int64)   # exponent bits for exp (one step)
        bits32 = np.empty(N * block if u.itemsize == 4 else 0, np.int32)
        Ab = np.empty((N, block), u.dtype)                  # A of the block, transposed
        lamb = np.empty((N, block), u.dtype)                # adjoint lambda = dLoss/dh of the block
        dAb = np.empty((N, block))                          # float64: a sum over every time step
        dDb = np.empty(block)                               # float64: a sum over every time step
        yacc = np.empty(block, u.dtype)
        sB = np.empty(N, u.dtype)
        sC = np.empty(N, u.dtype)
        sv = np.empty(block, u.dtype)                       # sigmoid(z_t) of the block
        tmpB = np.empty((N, block), u.dtype)
        tmpC = np.empty((N, block), u.dtype)
        uv = np.empty(block, u.dtype)
        gv = np.empty(block, u.dtype)
        dtv = np.empty(block, u.dtype)
        dtu = np.empty(block, u.dtype)
        du_acc = np.empty(block, u.dtype)
        ddt_acc = np.empty(block, u.dtype)
        for c in range(n_chunks - 1, -1, -1):               # chunks from last to first
            t0 = c * chunk
            T = min(L, t0 + chunk) - t0
            for d0 in range(g0, g1, block):                 # the group's blocks, in channel order
                nd = min(block, g1 - d0)
                hs = hs_buf[:(T + 1) * N * nd].reshape((T + 1, N, nd))     # h_{t0-1} .. h_{t0+T-1}
                ab_flat = ab_buf[:T * N * nd]
                a_bars = ab_flat.reshape((T, N, nd))        # A_bar_t of the chunk
                dts = dts_buf[:T * nd].reshape((T, nd))     # Delta_t of the chunk
                sig = sig_buf[:T * nd].reshape((T, nd))     # exp(-|x_t|), then sigmoid(x_t) (softplus', step 9)
                for n in range(N):
                    for j in range(nd):
                        Ab[n, j] = At[n, d0 + j]
                        lamb[n, j] = lam[b, n, d0 + j]      # A_bar_{t1} lambda_{t1} from the later chunk
                        dAb[n, j] = dA_acc[b, n, d0 + j]
                        hs[0, n, j] = ckpt[b, c, n, d0 + j]     # h_{t0-1}
                for j in range(nd):
                    dDb[j] = dD_acc[b, d0 + j]
                for i in range(T):                          # recompute Delta_t, A_bar_t, eq. (2a) in the chunk
                    t = t0 + i
                    _load_dt(delta, bias, softplus, b, t, d0, nd, dts[i], sig[i], bits64, bits32)
                    for n in range(N):
                        for j in range(nd):
                            a_bars[i, n, j] = dts[i, j] * Ab[n, j]
                    _exp_buffer(ab_flat[i * N * nd:(i + 1) * N * nd], bits64, bits32)     # A_bar_t, eq. (4)
                    for j in range(nd):
                        dtu[j] = dts[i, j] * u[b, t, d0 + j]
                    for n in range(N):
                        bn = B[b, t, n]
                        for j in range(nd):
                            hs[i + 1, n, j] = a_bars[i, n, j] * hs[i, n, j] + dtu[j] * bn
                    if softplus:                            # sigmoid(x) from e = exp(-|x|): 1/(1+e) or e/(1+e)
                        for j in range(nd):
                            x = delta[b, t, d0 + j] + bias[d0 + j]
                            sig[i, j] = (1.0 if x >= 0.0 else sig[i, j]) / (1.0 + sig[i, j])
                for i in range(T - 1, -1, -1):              # reverse time: hs[i + 1] = h_t, hs[i] = h_{t-1}
                    t = t0 + i
                    for j in range(nd):
                        dtv[j] = dts[i, j]
                        uv[j] = u[b, t, d0 + j]
                        gv[j] = dout[b, t, d0 + j]
                        dtu[j] = dtv[j] * uv[j]
                        du_acc[j] = 0.0
                        ddt_acc[j] = 0.0
                        yacc[j] = 0.0
                    if has_z:                               # step 1: sigmoid(z) = 1 / (1 + exp(-z))
                        for j in range(nd):
                            sv[j] = -z[b, t, d0 + j]
                        _exp_buffer(sv[:nd], bits64, bits32)
                        for j in range(nd):
                            sv[j] = 1.0 / (1.0 + sv[j])
                            gv[j] *= z[b, t, d0 + j] * sv[j]    # dy_t = dout_t silu(z_t)
                    for j in range(nd):
                        dDb[j] += gv[j] * uv[j]             # step 2: dD = sum dy u
                    for n in range(N):
                        bn = B[b, t, n]
                        cn = C[b, t, n]
                        for j in range(nd):
                            lamb[n, j] += gv[j] * cn                           # step 3: lambda_t += dy_t C_t
                            tmpC[n, j] = gv[j] * hs[i + 1, n, j]                       # step 4: dC_t = sum_d dy_t h_t
                            tmpB[n, j] = lamb[n, j] * dtu[j]                      # step 5: dB_t = sum_d lambda_t dt u
                        for j in range(nd):
                            du_acc[j] += lamb[n, j] * bn                       # step 6: du_t = dt sum_n lambda B
                        for j in range(nd):
                            ah = a_bars[i, n, j] * hs[i, n, j]                         # A_bar_t h_{t-1}
                            ddt_acc[j] += lamb[n, j] * (bn * uv[j] + Ab[n, j] * ah)     # step 7
                            dAb[n, j] += lamb[n, j] * dtv[j] * ah               # step 8
                        for j in range(nd):
                            lamb[n, j] *= a_bars[i, n, j]                              # A_bar_t lambda_t, for step t-1
                        if has_z:
                            for j in range(nd):
                                yacc[j] += cn * hs[i + 1, n, j]                     # y_t = C_t h_t, eq. (2b) again
                    _sum_over_channels(tmpB, nd, sB)        # sums over the block's channels
                    _sum_over_channels(tmpC, nd, sC)
                    for n in range(N):                      # ... and over the group's blocks, in order
                        if d0 == g0:
                            dB_part[g, b, t, n] = sB[n]
                            dC_part[g, b, t, n] = sC[n]
                        else:
                            dB_part[g, b, t, n] += sB[n]
                            dC_part[g, b, t, n] += sC[n]
                    for j in range(nd):
                        du[b, t, d0 + j] = dtv[j] * du_acc[j] + Dsk[d0 + j] * gv[j]    # steps 6 and 2
                        ddelta[b, t, d0 + j] = ddt_acc[j] * sig[i, j] if softplus else ddt_acc[j]   # step 9
                    if has_z:                               # step 1: dz = dout y silu'(z), silu' = s (1 + z (1 - s))
                        for j in range(nd):
                            zj = z[b, t, d0 + j]
                            yj = yacc[j] + Dsk[d0 + j] * uv[j]
                            dz[b, t, d0 + j] = dout[b, t, d0 + j] * yj * sv[j] * (1.0 + zj * (1.0 - sv[j]))
                for n in range(N):                          # carry lambda and the dA sums to the previous chunk
                    for j in range(nd):
                        lam[b, n, d0 + j] = lamb[n, j]
                        dA_acc[b, n, d0 + j] = dAb[n, j]
                for j in range(nd):
                    dD_acc[b, d0 + j] = dDb[j]


# The same loops compiled without threads: below PARALLEL_MIN_WORK state updates (b * L * D * N) a parallel launch
# costs about what it saves (measured on 2 cores: break-even near 1e5 updates, 1.8x faster at 1e6).
PARALLEL_MIN_WORK = 1 << 17


def _serial_build(kernel, name):
    """The kernel's Python function under a new name (so numba's on-disk cache keeps the two builds apart)."""
    f = getattr(kernel, "py_func", kernel)
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    g.__doc__ = f.__doc__
    return njit(cache=True, error_model="numpy")(g)


_ssm_forward_serial = _serial_build(_ssm_forward_kernel, "_ssm_forward_serial")
_ssm_backward_serial = _serial_build(_ssm_backward_kernel, "_ssm_backward_serial")


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
    if not isinstance(delta_softplus, (bool, np.bool_)):
        validate.fail("delta_softplus", "a bool", repr(delta_softplus))
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
    kernel = _ssm_forward_kernel if nb * L * Dd * N >= PARALLEL_MIN_WORK else _ssm_forward_serial
    kernel(np.ascontiguousarray(u), np.ascontiguousarray(delta), bias, bool(delta_softplus), At,
           np.ascontiguousarray(B), np.ascontiguousarray(C), Dsk,
           np.ascontiguousarray(z) if z is not None else np.empty((1, 1, 1), dtype), z is not None,
           hh0, chunk, min(CHANNEL_GROUP, Dd), y, h_last, ckpt)
    out = y                                                                      # (b, L, D) y * silu(z)
    cache = ScanCache(u, delta, bias, At, B, C, Dsk, z, ckpt, bool(delta_softplus), chunk, has)
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
    N = cache.At.shape[0]
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
    kernel = _ssm_backward_kernel if nb * L * Dd * N >= PARALLEL_MIN_WORK else _ssm_backward_serial
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
