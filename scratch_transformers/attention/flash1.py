"""FlashAttention-1 Algorithm 1 as printed (Dao et al. 2022, arXiv 2205.14135), in numba: the paper-literal kernel.

Outer loop over key/value blocks K_j, V_j (line 5), inner loop over query blocks Q_i (line 7); on every inner
step O_i, l_i, m_i are read from "HBM" (the output arrays), updated with the block's statistics
m~ = rowmax(S_ij), P~ = exp(S_ij - m~), l~ = rowsum(P~) (line 10), combined (line 11: m_new, l_new), the
output renormalised (line 12) and written back (line 13). With Algorithm 2's scale tau, MASK and dropout
(counter-based, ``attention.dropout``). The FA-2 loop order used everywhere else is ``attention.flash``; this
one is kept to read beside the paper and is tested equal to it. It returns the paper's (O, l, m).

A row that sees no key keeps l = 0, m = -inf, O = 0. A NaN in q, k or v reaching a row's scores gives O = NaN
and l = NaN for that row (never the masked row's 0), as the materialised reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..core import validate
from .dropout import kept
from .flash_options import flash_options
from .tiles import make_tiles, mask_tile, tile_matmul


@njit(cache=True)
def _has_nan(row):
    for x in row:
        if x != x:
            return True
    return False


@njit(cache=True, parallel=True)
def _fa1_forward_kernel(q, k, v, scale, masking, dropout, tiles, out, ell, m_hbm):
    """FA-1 Algorithm 1 (with Algorithm 2's tau, MASK and dropout); out, ell, m_hbm are the paper's O, l, m in HBM."""
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    block_q, block_k = tiles.block_q, tiles.block_k
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
                if c0 > r0 + br - 1 + masking.offset:            # tile above the diagonal: skip
                    continue
                for r in range(br):                              # line 8: load Q_i (l_i, m_i, O_i below)
                    for t in range(d):
                        q_t[r, t] = q[b, h, r0 + r, t] * scale
                tile_matmul(q_t, kt_t, br, bc, d, s, False)      # line 9: S_ij = tau Q_i K_j^T
                mask_tile(s, b, h, r0, c0, br, bc, masking,      # Alg. 2 line 11: MASK
                          c0 + bc - 1 > r0 + masking.offset)
                for r in range(br):
                    i = r0 + r
                    m_tilde = -np.inf                            # line 10: m~ = rowmax(S_ij)
                    for c in range(bc):
                        m_tilde = max(m_tilde, s[r, c])
                    if m_tilde == -np.inf and not _has_nan(s[r, :bc]):   # every key of this tile masked
                        continue                                 # for row i (a NaN score is not a mask)
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
                            if dropout.active:                   # Alg. 2 line 15: dropped P~
                                p = p * dropout.inv_keep if kept(dropout, b, h, i, c0 + c, base + c) else 0.0
                            pv += p * v_t[c, t]
                        out[b, h, i, t] = (o + a_new * pv) / l_new   # line 12: diag(l_new)^-1 (...), write
                    ell[b, h, i] = l_new                         # line 13: write l_i, m_i
                    m_hbm[b, h, i] = m_new


def flash_attention_fa1_forward(q, k, v, *, block_q=64, block_k=512, **options):
    """FA-1 Algorithm 1 as printed (outer loop over K_j, V_j; inner over Q_i), with Algorithm 2's
    scale, mask and dropout. Every inner step reads O_i, l_i, m_i from "HBM" (the output arrays),
    updates them (line 12, normalised each time) and writes them back (line 13).

    options: those of ``attention.flash.flash_attention_forward`` (scale, causal, causal_alignment, bias,
    key_padding_mask, dropout_p, dropout_seed, rng, dropout_mask; validated by ``flash_options``).
    Returns (out (B, H, Nq, dv), ell (B, H, Nq), m (B, H, Nq)): the paper's O, l, m (a row that sees no key
    has l = 0, m = -inf, O = 0). For rows with l > 0, L = m + log(l) equals ``flash_attention_forward``'s
    cache.lse.
    """
    block_q = validate.positive_int(block_q, "block_q")
    block_k = validate.positive_int(block_k, "block_k")
    o = flash_options(q, k, v, **options)
    n_b, n_h, n_q, _ = o.q.shape
    out = np.empty((n_b, n_h, n_q, o.v.shape[3]), o.q.dtype)                # O  (B, H, Nq, dv)
    ell = np.empty((n_b, n_h, n_q), o.q.dtype)                              # l  (B, H, Nq)
    m = np.empty((n_b, n_h, n_q), o.q.dtype)                                # m  (B, H, Nq)
    tiles = make_tiles(block_q, block_k, n_q, o.k.shape[2], n_b * n_h)      # FA-1: a worker per (batch, head)
    with np.errstate(over="ignore"):   # splitmix64 wraps around uint64 on purpose (NUMBA_DISABLE_JIT=1)
        _fa1_forward_kernel(o.q, o.k, o.v, o.q.dtype.type(o.scale), o.masking, o.dropout, tiles, out, ell, m)
    return out, ell, m
