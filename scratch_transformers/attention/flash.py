"""FlashAttention: exact attention in tiles, never materialising the N x N score matrix (numba).

Two forwards and one backward, each a numba loop nest that reads beside the paper's algorithm:

- ``flash_attention_forward``: FlashAttention-2 loop order (FA-2 Algorithm 1): outer loop over query
  blocks Q_i (each one independent work for ``prange``), inner loop over key/value blocks K_j, V_j,
  running row max m and row sum l, rescaling of the unnormalised accumulator, one division at the
  end, and the row log-sum-exp L = m + log(l) saved for the backward. With the scale tau, masking,
  bias and dropout of FA-1 Algorithm 2 (App. B.3). Its tiles are stored key-major (S_ij^T, O~_i^T), so
  every inner loop runs along the B_r = 512 queries of the block (see ``_fa2_forward_kernel``).
- ``flash_attention_fa1_forward``: FA-1 Algorithm 1 as printed (outer loop over K_j, V_j; O_i, l_i,
  m_i read from and written back to "HBM" on every inner step), with Algorithm 2's extras. Tested
  equal to the FA-2 kernel; it returns the paper's (O, l, m).
- ``flash_attention_backward``: recomputation from L (FA-2 Algorithm 2 / FA-1 Algorithm 4):
  D = rowsum(dO o O), then per tile P = exp(S - L), dV += P^T dO, dP = dO V^T, dS = P o (dP - D),
  dQ += tau dS K, dK += tau dS^T Q (and dbias += dS). No N x N array is ever allocated (unless the
  bias itself is a full (.., Nq, Nk) matrix: then its gradient is one, inherently).

Glossary (code -> paper, see derivations/flashattention.md; FA-1 arXiv 2205.14135 §2.2-3.1, FA-2 arXiv 2307.08691 §3.1):

    q, k, v, out        Q, K, V, O         (B, H, N, d); row i is q_i
    scale               tau                softmax scale, default 1/sqrt(d)
    block_q, block_k    B_r, B_c           tile rows of Q and of K/V; T_r, T_c = ceil(N / B)
    s                   S_ij               score tile tau Q_i K_j^T + bias, -inf where masked
    st, acc_t           S_ij^T, O~_i^T     the FA-2 forward's key-major tiles: st[c, r] = S_ij[r, c];
                                           acc_t the unnormalised output accumulator, transposed
    m, l                m_i, l_i           running row max and row sum of exp(S - m)
    lse                 L_i (FA-2)         m + log(l); -inf for a row that sees no key
    d_row               D_i                rowsum(dO_i o O_i), FA-1 eq. (4)

Dtypes: every tile, accumulator and statistic is computed in the input dtype (float32 inputs give
float32 arithmetic throughout, like the float32 accumulators of the CUDA kernels; float64 inputs
agree with the materialised reference to ~1e-15).

Masking (as in ``attention.reference``): causal ``top_left`` lets query i see key j iff j <= i,
``bottom_right`` iff j <= i + Nk - Nq; key blocks that lie entirely above the diagonal are skipped,
not masked (FA-2 §3.1.1). ``key_padding_mask`` (B, Nk), True = padded key. A row that sees no key
gets out = 0 and lse = -inf, and no NaN anywhere.

Dropout (FA-1 Alg. 2 line 14, Alg. 4 line 14): counter-based, so nothing is stored. Entry
(b, h, i, j) of call seed s is kept iff u >= p, where u = top 53 bits of splitmix64 output number
((b*H + h)*Nq + i)*Nk + j of the stream seeded by s, divided by 2^53. The backward regenerates the
same keep-mask from (s, b, h, i, j); ``flash_dropout_mask`` materialises it for tests. An explicit
boolean ``dropout_mask`` (the reference's option) is accepted instead of a seed, so the model can pass
the same options to either core.

Usage (float32 or float64, any block sizes):

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 2, 100, 16)) for _ in range(3))
    >>> out, cache = flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=48)
    >>> dq, dk, dv, dbias = flash_attention_backward(np.ones_like(out), cache)
    >>> out.shape, cache.lse.shape, dbias is None
    ((1, 2, 100, 16), (1, 2, 100), True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from ..core import validate
from ..core.registry import Op
from .reference import check_attention_args
from ..core.vexp import _exp_buffer
from .tiles import _mask_tile, _mask_tile_t, _mm_abt, _mm_acc_ab
_NO_CAUSAL = np.iinfo(np.int64).max // 4   # "allowed iff j <= i + offset" with an offset no j reaches

# splitmix64 constants (Steele, Lea & Flood 2014; the generator behind Java's SplittableRandom)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)


# ----------------------------------------------------------------------------------------------
# Counter-based dropout

@njit(cache=True)
def _keep(seed, counter, threshold):
    """True iff dropout keeps the entry with this counter: splitmix64(seed, counter) >> 11 >= threshold."""
    z = seed + (np.uint64(counter) + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return (z >> _S11) >= threshold


@njit(cache=True)
def _kept(zmask, zst, has_zmask, b, h, i, j, seed, counter, threshold):
    """Dropout keep decision for entry (b, h, i, j): the caller's explicit mask if one was given
    (flat, with element strides zst), else the counter-based generator."""
    if has_zmask:
        return zmask[b * zst[0] + h * zst[1] + i * zst[2] + j * zst[3]]
    return _keep(seed, counter, threshold)


def _dropout_threshold(p: float) -> np.uint64:
    """Keep iff top-53-bit uniform integer >= ceil(p * 2^53): keep probability 1 - p (to 2^-53)."""
    return np.uint64(math.ceil(p * 2.0 ** 53))


def _seed64(seed: int) -> np.uint64:
    return np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)


@njit(cache=True, parallel=True)
def _dropout_mask_kernel(seed, threshold, keep):
    n_b, n_h, n_q, n_k = keep.shape
    for bh in prange(n_b * n_h):
        b, h = bh // n_h, bh % n_h
        for i in range(n_q):
            base = ((b * n_h + h) * n_q + i) * n_k
            for j in range(n_k):
                keep[b, h, i, j] = _keep(seed, base + j, threshold)


def flash_dropout_mask(seed, shape, dropout_p):
    """The boolean keep-mask (B, H, Nq, Nk) that flash attention with this seed and p applies.

    Materialised only for testing (e.g. as ``dropout_mask`` of ``attention.reference``); the
    kernels regenerate each entry from (seed, b, h, i, j) instead.
    """
    seed = validate.integer(seed, "seed")
    if not (isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(s, int) and s >= 1 for s in shape)):
        validate.fail("shape", "a tuple (B, H, Nq, Nk) of positive ints", repr(shape))
    dropout_p = validate.probability(dropout_p, "dropout_p")
    keep = np.empty(shape, dtype=np.bool_)
    with np.errstate(over="ignore"):
        _dropout_mask_kernel(_seed64(seed), _dropout_threshold(dropout_p), keep)
    return keep


# ----------------------------------------------------------------------------------------------
# FA-2 forward

@njit(cache=True, parallel=True)
def _fa2_forward_kernel(q, k, v, scale, offset, bias, bst, has_bias, kpm, has_kpm, seed, threshold,
                        zmask, zst, has_zmask, inv_keep, has_dropout, block_q, block_k, n_workers, out, lse):
    """FA-2 Algorithm 1 with its tiles stored key-major: st[c, r] holds S_ij[r, c], acc_t[t, r] holds
    O~_i[r, t]. The algorithm is unchanged; the layout puts the B_r queries of the block on the
    contiguous axis, so the running max and sum of line 9 and the rescaling of line 10 are element-wise
    loops over the queries (no row reductions) and both tile products run along B_r (``_mm_abt``)."""
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    t_r = (n_q + block_q - 1) // block_q
    n_items = n_b * n_h * t_r
    for w in prange(n_workers):                                  # FA-2 §3.2: workers own row blocks
        qt_t = np.empty((d, block_q), q.dtype)                   # "SRAM" of this worker: (tau Q_i)^T
        k_t = np.empty((block_k, d), q.dtype)                    # K_j
        vt_t = np.empty((d_v, block_k), q.dtype)                 # V_j^T
        st = np.empty((block_k, block_q), q.dtype)               # S_ij^T, then P~_ij^T
        acc_t = np.empty((d_v, block_q), q.dtype)                # O~_i^T
        m = np.empty(block_q, q.dtype)                           # m_i
        m_new = np.empty(block_q, q.dtype)
        shift = np.empty(block_q, q.dtype)                       # m_new, or 0 where it is still -inf
        alpha = np.empty(block_q, q.dtype)                       # e^{m_old - m_new}
        l = np.empty(block_q, q.dtype)                           # l_i
        bits64 = np.empty(block_q if q.itemsize == 8 else 0, np.int64)    # scratch of the vectorised exp
        bits32 = np.empty(block_q if q.itemsize == 4 else 0, np.int32)
        for item in range(w, n_items, n_workers):               # round robin: balanced under causal
            b = item // (n_h * t_r)
            h = (item // t_r) % n_h
            r0 = (item % t_r) * block_q                          # line 3: for i in 1..T_r
            br = min(block_q, n_q - r0)
            for r in range(br):                                  # line 4: load Q_i (times tau)
                for t in range(d):
                    qt_t[t, r] = q[b, h, r0 + r, t] * scale
            for r in range(br):                                  # line 5: O~ = 0, l = 0, m = -inf
                m[r] = -np.inf
                l[r] = 0.0
            for t in range(d_v):
                for r in range(br):
                    acc_t[t, r] = 0.0
            last_key = min(n_k - 1, r0 + br - 1 + offset)        # causal: later key blocks skipped
            for c0 in range(0, last_key + 1, block_k):           # line 6: for j in 1..T_c
                bc = min(block_k, n_k - c0)
                for c in range(bc):                              # line 7: load K_j, V_j
                    for t in range(d):
                        k_t[c, t] = k[b, h, c0 + c, t]
                    for t in range(d_v):
                        vt_t[t, c] = v[b, h, c0 + c, t]
                _mm_abt(k_t, qt_t, bc, br, d, st, False)         # line 8: S^T = K_j (tau Q_i)^T
                _mask_tile_t(st, b, h, r0, c0, br, bc, offset, bias, bst, has_bias, kpm, has_kpm,
                             c0 + bc - 1 > r0 + offset)          # only diagonal tiles need the mask
                for r in range(br):                              # line 9: m = max(m_old, rowmax S)
                    m_new[r] = m[r]
                for c in range(bc):
                    for r in range(br):
                        m_new[r] = max(m_new[r], st[c, r])
                for r in range(br):                              # a row that sees no key yet keeps
                    shift[r] = m_new[r] if m_new[r] > -np.inf else 0.0   # m = -inf; exp(-inf - 0) = 0
                    alpha[r] = m[r] - shift[r]
                    m[r] = m_new[r]
                _exp_buffer(alpha[:br], bits64, bits32)          # e^{m_old - m_new} (0 if m_old = -inf)
                for r in range(br):
                    l[r] *= alpha[r]
                for c in range(bc):
                    for r in range(br):
                        st[c, r] -= shift[r]
                    _exp_buffer(st[c, :br], bits64, bits32)      # line 9: P~ = exp(S - m)
                    for r in range(br):
                        l[r] += st[c, r]                         # line 9: l += rowsum P~ (undropped)
                if has_dropout:                                  # Alg. 2 line 14: P~ o Z
                    for c in range(bc):
                        for r in range(br):
                            i = r0 + r
                            keep = _kept(zmask, zst, has_zmask, b, h, i, c0 + c, seed,
                                         ((b * n_h + h) * n_q + i) * n_k + c0 + c, threshold)
                            st[c, r] = st[c, r] * inv_keep if keep else 0.0
                for t in range(d_v):                             # line 10: diag(alpha) O~ ...
                    for r in range(br):
                        acc_t[t, r] *= alpha[r]
                _mm_abt(vt_t, st, d_v, br, bc, acc_t, True)      # line 10: ... + P~ V_j  (as V_j^T P~^T)
            for r in range(br):                                  # lines 12-15
                if l[r] > 0.0:
                    inv_l = 1.0 / l[r]
                    for t in range(d_v):
                        out[b, h, r0 + r, t] = acc_t[t, r] * inv_l   # line 12: O_i = diag(l)^-1 O~
                    lse[b, h, r0 + r] = m[r] + np.log(l[r])      # line 13: L_i = m + log(l)
                else:                                            # fully masked row
                    for t in range(d_v):
                        out[b, h, r0 + r, t] = 0.0
                    lse[b, h, r0 + r] = -np.inf


# ----------------------------------------------------------------------------------------------
# FA-1 Algorithm 1 (as printed; with Algorithm 2's tau, mask and dropout)

@njit(cache=True, parallel=True)
def _fa1_forward_kernel(q, k, v, scale, offset, bias, bst, has_bias, kpm, has_kpm, seed, threshold,
                        zmask, zst, has_zmask, inv_keep, has_dropout, block_q, block_k, out, ell, m_hbm):
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    for bh in prange(n_b * n_h):                                 # FA-1: one worker per (batch, head)
        b, h = bh // n_h, bh % n_h
        for i in range(n_q):                                     # line 2: O = 0, l = 0, m = -inf in HBM
            ell[b, h, i] = 0.0
            m_hbm[b, h, i] = -np.inf
            for t in range(d_v):
                out[b, h, i, t] = 0.0
        q_t = np.empty((block_q, d), q.dtype)
        kt_t = np.empty((d, block_k), q.dtype)
        v_t = np.empty((block_k, d_v), q.dtype)
        s = np.empty((block_q, block_k), q.dtype)
        for c0 in range(0, n_k, block_k):                        # line 5: for j in 1..T_c
            bc = min(block_k, n_k - c0)
            for c in range(bc):                                  # line 6: load K_j, V_j
                for t in range(d):
                    kt_t[t, c] = k[b, h, c0 + c, t]
                for t in range(d_v):
                    v_t[c, t] = v[b, h, c0 + c, t]
            for r0 in range(0, n_q, block_q):                    # line 7: for i in 1..T_r
                br = min(block_q, n_q - r0)
                if c0 > r0 + br - 1 + offset:                    # tile above the diagonal: skip
                    continue
                for r in range(br):                              # line 8: load Q_i (l_i, m_i, O_i below)
                    for t in range(d):
                        q_t[r, t] = q[b, h, r0 + r, t] * scale
                _mm_abt(q_t, kt_t, br, bc, d, s, False)          # line 9: S_ij = tau Q_i K_j^T
                _mask_tile(s, b, h, r0, c0, br, bc, offset, bias, bst, has_bias, kpm, has_kpm,
                           c0 + bc - 1 > r0 + offset)            # Alg. 2 line 11: MASK
                for r in range(br):
                    i = r0 + r
                    m_tilde = -np.inf                            # line 10: m~ = rowmax(S_ij)
                    for c in range(bc):
                        m_tilde = max(m_tilde, s[r, c])
                    if m_tilde == -np.inf:                       # every key of this tile masked for row i
                        continue
                    l_tilde = 0.0
                    for c in range(bc):                          # line 10: P~ = exp(S - m~), l~ = rowsum
                        s[r, c] = np.exp(s[r, c] - m_tilde)
                        l_tilde += s[r, c]
                    m_i, l_i = m_hbm[b, h, i], ell[b, h, i]      # line 8: load l_i, m_i
                    m_new = max(m_i, m_tilde)                    # line 11
                    a_old = np.exp(m_i - m_new) * l_i            # diag(l_i) e^{m_i - m_new}
                    a_new = np.exp(m_tilde - m_new)              # e^{m~ - m_new}
                    l_new = a_old + a_new * l_tilde              # line 11: l_new
                    base = ((b * n_h + h) * n_q + i) * n_k + c0
                    for t in range(d_v):                         # line 12: O_i (read from HBM) ...
                        o = a_old * out[b, h, i, t]
                        pv = 0.0
                        for c in range(bc):                      # ... + e^{m~ - m_new} P~ V_j
                            p = s[r, c]
                            if has_dropout:                      # Alg. 2 line 15: dropped P~
                                p = p * inv_keep if _kept(zmask, zst, has_zmask, b, h, i, c0 + c, seed, base + c,
                                                             threshold) else 0.0
                            pv += p * v_t[c, t]
                        out[b, h, i, t] = (o + a_new * pv) / l_new   # line 12: diag(l_new)^-1 (...), write
                    ell[b, h, i] = l_new                         # line 13: write l_i, m_i
                    m_hbm[b, h, i] = m_new


# ----------------------------------------------------------------------------------------------
# Backward (FA-2 Algorithm 2 / FA-1 Algorithm 4)

@njit(cache=True, parallel=True)
def _backward_kernel(q, k, v, dout, lse, d_row, scale, offset, bias, bst, has_bias, kpm, has_kpm, seed,
                     threshold, zmask, zst, has_zmask, inv_keep, has_dropout, block_q, block_k, n_workers, dq_groups,
                     dk, dv, dbias, per_worker_dbias):
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    n_groups = dq_groups.shape[0]                               # KEY_GROUPS
    n_items = n_b * n_h * n_groups
    for w in prange(n_workers):                                 # FA-2 §3.2: parallel over key blocks;
        q_t = np.empty((block_q, d), q.dtype)                   # item (b, h, g) owns key blocks j = g mod G
        do_t = np.empty((block_q, d_v), q.dtype)
        dq_t = np.empty((block_q, d), q.dtype)
        k_t = np.empty((block_k, d), q.dtype)
        kt_t = np.empty((d, block_k), q.dtype)
        vt_t = np.empty((d_v, block_k), q.dtype)
        dkt_t = np.empty((d, block_k), q.dtype)                 # dK_j^T, dV_j^T: kept transposed so that
        dvt_t = np.empty((d_v, block_k), q.dtype)               # their updates run along the long B_c axis
        p = np.empty((block_q, block_k), q.dtype)               # S, then P
        p_drop = np.empty((block_q, block_k), q.dtype) if has_dropout else p   # P o Z
        ds = np.empty((block_q, block_k), q.dtype)              # dP, then dS
        bits64 = np.empty(block_k if q.itemsize == 8 else 0, np.int64)    # scratch of the vectorised exp
        bits32 = np.empty(block_k if q.itemsize == 4 else 0, np.int32)
        wb = np.int64(w) if per_worker_dbias else np.int64(0)
        for item in range(w, n_items, n_workers):
            b = item // (n_h * n_groups)
            h = (item // n_groups) % n_h
            g = item % n_groups
            dq = dq_groups[g]                                   # line 3: dQ = 0 in HBM (by the caller), one
            for c0 in range(g * block_k, n_k, n_groups * block_k):   # copy per group; line 5: for j
                bc = min(block_k, n_k - c0)
                for c in range(bc):                             # line 6: load K_j, V_j
                    for t in range(d):
                        k_t[c, t] = k[b, h, c0 + c, t]
                        kt_t[t, c] = k[b, h, c0 + c, t]
                        dkt_t[t, c] = 0.0                       # line 7: dK_j = dV_j = 0 on chip
                    for t in range(d_v):
                        vt_t[t, c] = v[b, h, c0 + c, t]
                        dvt_t[t, c] = 0.0
                first_row = max(0, c0 - offset)                 # causal: query blocks above skipped
                for r0 in range((first_row // block_q) * block_q, n_q, block_q):   # line 8: for i
                    br = min(block_q, n_q - r0)
                    for r in range(br):                         # line 9: load Q_i, dO_i, dQ_i
                        for t in range(d):
                            q_t[r, t] = q[b, h, r0 + r, t] * scale
                            dq_t[r, t] = 0.0
                        for t in range(d_v):
                            do_t[r, t] = dout[b, h, r0 + r, t]
                    _mm_abt(q_t, kt_t, br, bc, d, p, False)     # line 10: S = tau Q_i K_j^T
                    _mask_tile(p, b, h, r0, c0, br, bc, offset, bias, bst, has_bias, kpm, has_kpm,
                               c0 + bc - 1 > r0 + offset)
                    _mm_abt(do_t, vt_t, br, bc, d_v, ds, False)  # line 13: dP = dO_i V_j^T
                    for r in range(br):
                        i = r0 + r
                        L = lse[b, h, i]
                        D = d_row[b, h, i]
                        base = ((b * n_h + h) * n_q + i) * n_k + c0
                        if L == -np.inf:                        # a row that sees no key: P = 0
                            for c in range(bc):
                                p[r, c] = 0.0
                        else:
                            for c in range(bc):
                                p[r, c] -= L
                            _exp_buffer(p[r, :bc], bits64, bits32)   # line 11: P = exp(S - L)
                        if has_dropout:                         # Alg. 4 lines 14-15, 18: Z on P and dP
                            for c in range(bc):
                                if _kept(zmask, zst, has_zmask, b, h, i, c0 + c, seed, base + c, threshold):
                                    p_drop[r, c] = p[r, c] * inv_keep
                                    ds[r, c] *= inv_keep
                                else:
                                    p_drop[r, c] = 0.0
                                    ds[r, c] = 0.0
                        for c in range(bc):
                            ds[r, c] = p[r, c] * (ds[r, c] - D)  # line 14: dS = P o (dP - D)
                        if has_bias:                            # dbias += dS (reduced to the bias's shape)
                            row = b * bst[0] + h * bst[1] + i * bst[2]
                            for c in range(bc):
                                dbias[wb, row + (c0 + c) * bst[3]] += ds[r, c]
                    _mm_abt(do_t.T, p_drop, d_v, bc, br, dvt_t, True)   # line 12: dV_j^T += dO_i^T (P o Z)
                    _mm_abt(q_t.T, ds, d, bc, br, dkt_t, True)  # line 16: dK_j^T += (tau Q_i)^T dS
                    _mm_acc_ab(ds, k_t, br, bc, d, dq_t)        # line 15: dQ_i += tau dS K_j ...
                    for r in range(br):                         # ... read-modify-write in HBM
                        for t in range(d):
                            dq[b, h, r0 + r, t] += scale * dq_t[r, t]
                for c in range(bc):                             # line 18: write dK_j, dV_j
                    for t in range(d):
                        dk[b, h, c0 + c, t] = dkt_t[t, c]
                    for t in range(d_v):
                        dv[b, h, c0 + c, t] = dvt_t[t, c]


# ----------------------------------------------------------------------------------------------
# Public API

class FlashCache(NamedTuple):
    q: np.ndarray                 # (B, H, Nq, d)
    k: np.ndarray                 # (B, H, Nk, d)
    v: np.ndarray                 # (B, H, Nk, dv)
    out: np.ndarray               # (B, H, Nq, dv)
    lse: np.ndarray               # (B, H, Nq) L = m + log(l); -inf for a row that sees no key
    scale: float                  # tau
    offset: int                   # causal: query i sees key j iff j <= i + offset (huge if not causal)
    bias: np.ndarray | None       # the bias as given (broadcastable to (B, H, Nq, Nk)) or None
    key_padding_mask: np.ndarray | None   # (B, Nk) bool, True = padded key
    dropout_p: float
    dropout_seed: int             # the counter-based generator's seed (the whole "RNG state" R)
    dropout_mask: np.ndarray | None   # an explicit keep-mask given instead of a seed (else None)
    block_q: int                  # B_r of the backward
    block_k: int                  # B_c of the backward


KEY_GROUPS = 2                   # the backward's work items per (batch, head): key blocks j mod 2
FORWARD_BLOCKS = (512, 128)      # (B_r, B_c) of the FA-2 forward: float32, d = 64, N = 8192, 2 cores,
BACKWARD_BLOCKS = (64, 512)      # interleaved runs against (512, 64) / (256, 256) and (64, 256) / (128, 512)


def _tile_dims(block_q: int, block_k: int, n_q: int, n_k: int) -> tuple[int, int]:
    """The tile sizes the kernels allocate: a block longer than the sequence is the whole sequence, so
    the result is identical and a short sequence does not pay for 512-row tiles."""
    return min(block_q, n_q), min(block_k, n_k)


def _n_workers(n_items: int) -> int:
    return max(1, min(numba.get_num_threads(), n_items))


def _prepare(q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask,
             dropout_seed, rng, block_q, block_k):
    """Validate the options shared by both forwards; return the kernel arguments."""
    q, k, v, scale, bias, key_padding_mask, dropout_p, dropout_mask = check_attention_args(
        q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask)
    n_q, n_k = q.shape[2], k.shape[2]
    block_q = validate.positive_int(block_q, "block_q")
    block_k = validate.positive_int(block_k, "block_k")
    if key_padding_mask is not None:
        kpm = np.ascontiguousarray(key_padding_mask)
    else:
        kpm = np.zeros((q.shape[0], n_k), dtype=np.bool_)                     # never read
    if dropout_mask is not None:            # an explicit keep-mask (drop-in for the reference's option)
        if dropout_seed is not None or rng is not None:
            validate.fail("dropout_seed", "None when an explicit dropout_mask is given", repr(dropout_seed))
        if dropout_p == 0.0:
            validate.fail("dropout_p", "> 0 when a dropout_mask is given", dropout_p)
    if dropout_seed is not None:
        dropout_seed = validate.integer(dropout_seed, "dropout_seed")
    elif rng is not None:
        dropout_seed = int(validate.rng(rng).integers(0, 2 ** 63))
    elif dropout_p > 0 and dropout_mask is None:
        validate.fail("dropout_seed", "an int (or rng=Generator) when dropout_p > 0", "None")
    else:
        dropout_seed = 0
    offset = (0 if causal_alignment == "top_left" else n_k - n_q) if causal else _NO_CAUSAL
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    return dict(dropout_mask=dropout_mask, q=q, k=k, v=v, scale=scale, offset=offset, bias=bias, kpm=kpm,
                key_padding_mask=key_padding_mask, dropout_p=dropout_p, dropout_seed=dropout_seed,
                block_q=block_q, block_k=block_k)


def _flat(x, dtype):
    """An array broadcastable to (B, H, Nq, Nk) as (contiguous 1-D data, element strides with 0 on
    its broadcast axes): one kernel signature for every bias / mask shape, nothing expanded."""
    if x is None:
        return np.zeros(1, dtype), (np.int64(0),) * 4
    x4 = np.ascontiguousarray(x.reshape((1,) * (4 - x.ndim) + x.shape))
    strides, step = [np.int64(0)] * 4, 1
    for ax in range(3, -1, -1):
        strides[ax] = np.int64(step if x4.shape[ax] != 1 else 0)
        step *= x4.shape[ax]
    return x4.reshape(-1), tuple(strides)


def _bias_args(dtype, bias):
    flat, strides = _flat(bias, dtype)
    return flat, strides, bias is not None


def _dropout_args(dtype, dropout_p, dropout_seed, dropout_mask):
    inv_keep = dtype.type(1.0 / (1.0 - dropout_p))
    zmask, zst = _flat(dropout_mask, np.bool_)
    return (_seed64(dropout_seed), _dropout_threshold(dropout_p), zmask, zst, dropout_mask is not None,
            inv_keep, dropout_p > 0)


def flash_attention_forward(q, k, v, *, scale=None, causal=False, causal_alignment="top_left", bias=None,
                            key_padding_mask=None, dropout_p=0.0, dropout_seed=None, rng=None,
                            block_q=None, block_k=None, dropout_mask=None):
    """FlashAttention forward in the FA-2 loop order (FA-2 Algorithm 1 + FA-1 Algorithm 2's extras).

    O = dropout(softmax(MASK(tau Q K^T + bias))) V, computed tile by tile with the online softmax
    (FA-1 §3.1): per query block, running max m, running sum l, rescaled accumulator, one final
    division, L = m + log l. Memory beyond inputs and output: O(Nq) for L and per-worker tiles.

    q: (B, H, Nq, d), k: (B, H, Nk, d), v: (B, H, Nk, dv), all float32 or all float64.
    scale: tau, default 1/sqrt(d). causal, causal_alignment ("top_left" | "bottom_right"),
    bias (broadcastable to (B, H, Nq, Nk), same dtype), key_padding_mask ((B, Nk) bool, True =
    padded): as ``attention.reference.attention_forward``. dropout_p with dropout_seed (int; or
    rng, from which a seed is drawn): counter-based dropout, see the module docstring.
    block_q, block_k: B_r and B_c, any positive ints (N need not be a multiple), used by this forward
    and by the backward of its cache; None (each independently) = each kernel's own default:
    KEY_GROUPS = 2                   # the backward's work items per (batch, head): key blocks j mod 2
FORWARD_BLOCKS = (512, 128) here (key-major tiles: the long axis is B_r) and BACKWARD_BLOCKS =
    (64, 512) in the backward (its long axis is B_c). Per-worker tiles stay O(B_r B_c + (B_r + B_c) d).
    dropout_mask: optional explicit boolean keep-mask broadcastable to (B, H, Nq, Nk), used instead of
    the generator (a drop-in for the reference's option; it is an N x N input the caller made).

    Returns out (B, H, Nq, dv) in the input dtype and a FlashCache (cache.lse: (B, H, Nq)).
    """
    a = _prepare(q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask,
                 dropout_seed, rng, FORWARD_BLOCKS[0] if block_q is None else block_q,
                 FORWARD_BLOCKS[1] if block_k is None else block_k)
    backward_blocks = (BACKWARD_BLOCKS[0] if block_q is None else a["block_q"],
                       BACKWARD_BLOCKS[1] if block_k is None else a["block_k"])
    q, k, v = a["q"], a["k"], a["v"]
    n_b, n_h, n_q, _ = q.shape
    out = np.empty((n_b, n_h, n_q, v.shape[3]), q.dtype)
    lse = np.empty((n_b, n_h, n_q), q.dtype)
    drop = _dropout_args(q.dtype, a["dropout_p"], a["dropout_seed"], a["dropout_mask"])
    n_items = n_b * n_h * -(-n_q // a["block_q"])
    with np.errstate(over="ignore"):   # splitmix64 wraps around uint64 on purpose (NUMBA_DISABLE_JIT=1)
        _fa2_forward_kernel(q, k, v, q.dtype.type(a["scale"]), a["offset"], *_bias_args(q.dtype, a["bias"]),
                            a["kpm"], a["key_padding_mask"] is not None, *drop,
                            *_tile_dims(a["block_q"], a["block_k"], n_q, k.shape[2]), _n_workers(n_items), out, lse)
    cache = FlashCache(q=q, k=k, v=v, out=out, lse=lse, scale=a["scale"], offset=a["offset"], bias=a["bias"],
                       key_padding_mask=a["key_padding_mask"], dropout_p=a["dropout_p"],
                       dropout_seed=a["dropout_seed"], dropout_mask=a["dropout_mask"], block_q=backward_blocks[0],
                       block_k=backward_blocks[1])
    return out, cache


def flash_attention_fa1_forward(q, k, v, *, scale=None, causal=False, causal_alignment="top_left", bias=None,
                                key_padding_mask=None, dropout_p=0.0, dropout_seed=None, rng=None,
                                block_q=64, block_k=512, dropout_mask=None):
    """FA-1 Algorithm 1 as printed (outer loop over K_j, V_j; inner over Q_i), with Algorithm 2's
    scale, mask and dropout. Every inner step reads O_i, l_i, m_i from "HBM" (the output arrays),
    updates them (line 12, normalised each time) and writes them back (line 13).

    Same arguments as ``flash_attention_forward``. Returns (out (B, H, Nq, dv), ell (B, H, Nq),
    m (B, H, Nq)): the paper's O, l, m (a row that sees no key has l = 0, m = -inf, O = 0).
    For rows with l > 0, L = m + log(l) equals ``flash_attention_forward``'s cache.lse.
    """
    a = _prepare(q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask,
                 dropout_seed, rng, block_q, block_k)
    q, k, v = a["q"], a["k"], a["v"]
    n_b, n_h, n_q, _ = q.shape
    out = np.empty((n_b, n_h, n_q, v.shape[3]), q.dtype)
    ell = np.empty((n_b, n_h, n_q), q.dtype)
    m = np.empty((n_b, n_h, n_q), q.dtype)
    drop = _dropout_args(q.dtype, a["dropout_p"], a["dropout_seed"], a["dropout_mask"])
    with np.errstate(over="ignore"):
        _fa1_forward_kernel(q, k, v, q.dtype.type(a["scale"]), a["offset"], *_bias_args(q.dtype, a["bias"]),
                            a["kpm"], a["key_padding_mask"] is not None, *drop,
                            *_tile_dims(a["block_q"], a["block_k"], n_q, k.shape[2]), out, ell, m)
    return out, ell, m


def flash_attention_backward(dout, cache: FlashCache):
    """Backward by recomputation (FA-2 Algorithm 2; FA-1 Algorithm 4 with tau, mask and dropout).

        D = rowsum(dO o O)                  line 4 (FA-1 eq. 4: D_i = do_i^T o_i = sum_j P_ij dP_ij)
        for each key block j, for each query block i (blocks above the causal diagonal skipped):
          S = tau Q_i K_j^T + bias, masked  line 10
          P = exp(S - L_i)                  line 11 (L from the forward; P = 0 where L = -inf)
          dV_j += (P o Z)^T dO_i            line 12 (Z: dropout keep-mask / (1 - p), regenerated)
          dP = (dO_i V_j^T) o Z             line 13 (FA-1 Alg. 4 lines 17-18)
          dS = P o (dP - D_i)               line 14
          dQ_i += tau dS K_j                line 15
          dK_j += tau dS^T Q_i              line 16
          dbias += dS                       (derived: S = tau Q K^T + bias => dbias = dS)

    Parallel over key blocks as in FA-2 §3.2, without atomics: a work item (b, h, g) takes the key blocks
    j = g, g + G, g + 2G, ... of one (batch, head) pair (G = KEY_GROUPS, at most T_c), so dK_j and dV_j are
    written by one item only, and dQ, which every key block updates (FA-2 uses atomic adds there), is
    accumulated in G copies, one per group, summed at the end (extra memory G x dQ; the grouping is
    fixed by the shapes, so results do not depend on the number of threads). dbias is reduced to the
    bias's own shape; if the bias is broadcast over batch, heads or (with G > 1) keys, each worker
    accumulates into its own copy and the copies are summed at the end (memory: n_workers x the bias's
    size). Returns (dq, dk, dv, dbias), dbias None when the forward had no bias.
    """
    if not isinstance(cache, FlashCache):
        validate.fail("cache", "the FlashCache returned by flash_attention_forward", type(cache).__name__)
    dout = validate.array(dout, "dout", shape=cache.out.shape, dtype=cache.out.dtype)
    dout = np.ascontiguousarray(dout)
    q, k, v = cache.q, cache.k, cache.v
    n_b, n_h, n_q, d = q.shape
    n_k = k.shape[2]
    d_row = np.einsum("bhid,bhid->bhi", dout, cache.out)                  # line 4: D   (B, H, Nq)
    block_q, block_k = _tile_dims(cache.block_q, cache.block_k, n_q, n_k)
    n_groups = min(KEY_GROUPS, -(-n_k // block_k))
    n_workers = _n_workers(n_b * n_h * n_groups)
    has_bias = cache.bias is not None
    bias_flat, bst, _ = _bias_args(q.dtype, cache.bias)
    shape4 = (1, 1, 1, 1) if not has_bias else (1,) * (4 - cache.bias.ndim) + cache.bias.shape
    per_worker = has_bias and ((shape4[0] == 1 and n_b > 1) or (shape4[1] == 1 and n_h > 1)
                               or (shape4[3] == 1 and n_groups > 1))
    dbias = np.zeros((n_workers if per_worker else 1, bias_flat.size), q.dtype)   # flat, like the bias
    kpm = (np.ascontiguousarray(cache.key_padding_mask) if cache.key_padding_mask is not None
           else np.zeros((n_b, n_k), dtype=np.bool_))
    dq_groups = np.zeros((n_groups,) + q.shape, q.dtype)                 # line 3: dQ = 0, per key group
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    drop = _dropout_args(q.dtype, cache.dropout_p, cache.dropout_seed, cache.dropout_mask)
    with np.errstate(over="ignore"):
        _backward_kernel(q, k, v, dout, cache.lse, d_row, q.dtype.type(cache.scale), cache.offset, bias_flat,
                         bst, has_bias, kpm, cache.key_padding_mask is not None, *drop,
                         block_q, block_k, n_workers, dq_groups, dk, dv, dbias, per_worker)
    dq = dq_groups.sum(axis=0)
    if has_bias:
        dbias = (dbias[0] if dbias.shape[0] == 1 else dbias.sum(axis=0)).reshape(cache.bias.shape)
    else:
        dbias = None
    return dq, dk, dv, dbias


# ----------------------------------------------------------------------------------------------
# Registry: float64 gradient checks of the flash pair itself (tiny tiles so every path is hit)

def _inputs_flash(rng):
    """Causal bottom-right, Nq != Nk, a per-head bias, one padded key, ragged 2 x 3 tiles."""
    b, h, n_q, n_k, d = 2, 2, 4, 5, 3
    pad = np.zeros((b, n_k), dtype=bool)
    pad[1, 0] = True
    return dict(q=rng.standard_normal((b, h, n_q, d)), k=rng.standard_normal((b, h, n_k, d)),
                v=rng.standard_normal((b, h, n_k, 2)), bias=rng.standard_normal((h, 1, n_k)),
                key_padding_mask=pad)


def _forward_flash(q, k, v, bias, key_padding_mask):
    return flash_attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", bias=bias,
                                   key_padding_mask=key_padding_mask, scale=0.7, block_q=2, block_k=3)


def _inputs_flash_dropout(rng):
    """Dropout with a fixed seed (the counter-based mask is a deterministic function of it), a full bias."""
    b, h, n, d = 1, 2, 5, 3
    return dict(q=rng.standard_normal((b, h, n, d)), k=rng.standard_normal((b, h, n, d)),
                v=rng.standard_normal((b, h, n, d)), bias=rng.standard_normal((b, h, n, n)))


def _forward_flash_dropout(q, k, v, bias):
    return flash_attention_forward(q, k, v, causal=True, bias=bias, dropout_p=0.3, dropout_seed=7,
                                   block_q=2, block_k=2)


GRADCHECKS = [
    Op(name="flash_attention", forward=_forward_flash, backward=flash_attention_backward,
       make_inputs=_inputs_flash, covers=("scratch_transformers.attention.flash.flash_attention_backward",),
       wrt=("q", "k", "v", "bias")),
    Op(name="flash_attention_dropout", forward=_forward_flash_dropout, backward=flash_attention_backward,
       make_inputs=_inputs_flash_dropout,
       covers=("scratch_transformers.attention.flash.flash_attention_backward",), wrt=("q", "k", "v", "bias")),
]
