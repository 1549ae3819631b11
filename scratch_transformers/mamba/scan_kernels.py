"""The numba loops of the selective scan (``mamba.scan``): forward over time, and the adjoint backward.

Like the paper's hardware-aware kernel (Sec. 3.3, App. D) the (b, L, D, N) tensors h, A_bar, B_bar are never
materialised: the forward keeps the inputs and the state at every ``chunk``-th step (a checkpoint of
b * ceil(L/chunk) * D * N numbers; by default chunk = mamba.scan.adaptive_chunk(L, D), about sqrt(L)); the backward
recomputes Delta, A_bar and the states of one chunk at a time and runs the reverse-time adjoint recurrence
lambda_t = dy_t C_t + A_bar_{t+1} * lambda_{t+1} (derivations/mamba.md#adjoint). Delta = softplus(delta + bias) is
computed inside both kernels (vectorised exp and log1p), so no (b, L, D) Delta is stored either.
Both kernels split work with ``prange`` over (batch, group of 128 channels); the backward walks a group's
blocks of 32 channels one after the other (B and C are shared by all channels, so
their gradients are summed over a block, then over a group's blocks, then over groups, in a fixed order, without
races). Results depend neither on the thread count nor on the chunk. Problems with fewer than mamba.scan.PARALLEL_MIN_WORK
state updates run a serial build of the same loops. The kernels compute in the inputs' dtype (the gate silu(z)
too); only the sums over batch elements are NumPy around the kernels.

These are kernel building blocks: they trust their arguments (shapes, dtypes, contiguity), which the public
functions of ``mamba.scan`` validate before calling them. Symbols as in ``mamba.scan``'s glossary.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from ..core.vexp import exp_buffer, softplus_from_exp


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
        exp_buffer(e[:nd], bits64, bits32)
        softplus_from_exp(dtv, e, nd)


@njit(cache=True, parallel=True, error_model="numpy")
def ssm_forward_kernel(u, delta, bias, softplus, At, B, C, Dsk, z, has_z, h0, chunk, block, y, h_last, ckpt):
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
            exp_buffer(a_flat, bits64, bits32)             # eq. (4): A_bar = exp(Delta A)
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
                exp_buffer(zv, bits64, bits32)
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
def ssm_backward_kernel(u, delta, bias, softplus, At, B, C, Dsk, z, has_z, ckpt, dout, chunk, block, group,
                         du, ddelta, dz, lam, dA_acc, dD_acc, dB_part, dC_part):
    """Reverse-time adjoint of ssm_forward_kernel (derivations/mamba.md#adjoint, steps 1-9).

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
                    exp_buffer(ab_flat[i * N * nd:(i + 1) * N * nd], bits64, bits32)     # A_bar_t, eq. (4)
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
                        exp_buffer(sv[:nd], bits64, bits32)
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




def _serial_build(kernel, name):
    """The kernel's Python function under a new name (so numba's on-disk cache keeps the two builds apart)."""
    f = getattr(kernel, "py_func", kernel)
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    g.__doc__ = f.__doc__
    return njit(cache=True, error_model="numpy")(g)


# The same loops compiled without threads (mamba.scan uses them below PARALLEL_MIN_WORK state updates).
ssm_forward_serial = _serial_build(ssm_forward_kernel, "ssm_forward_serial")
ssm_backward_serial = _serial_build(ssm_backward_kernel, "ssm_backward_serial")
