"""FlashAttention: exact attention in tiles, never materialising the N x N score matrix (numba).

The FA-2 forward and the backward, each a numba loop nest that reads beside the paper's algorithm:

- ``flash_attention_forward``: FlashAttention-2 loop order (FA-2 Algorithm 1): outer loop over query
  blocks Q_i (each one independent work for ``prange``), inner loop over key/value blocks K_j, V_j,
  running row max m and row sum l, rescaling of the unnormalised accumulator, one division at the
  end, and the row log-sum-exp L = m + log(l) saved for the backward. With the scale tau, masking,
  bias and dropout of FA-1 Algorithm 2 (App. B.3). Its tiles are stored key-major (S_ij^T, O~_i^T), so
  every inner loop runs along the B_r = 512 queries of the block (see ``_fa2_forward_kernel``).
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
gets out = 0 and lse = -inf, and no NaN anywhere. A NaN in q, k or v propagates as in the reference:
the rows whose scores it reaches get out = NaN and lse = NaN (an inf in q or k: out NaN, lse NaN where the
reference's is +inf), never a masked-looking 0.
The kernels take the options as three NamedTuples (``tiles.Masking``, ``dropout.Dropout``,
``tiles.Tiles``), so each call reads ``kernel(q, k, v, scale, masking, dropout, tiles, out, lse)``.
The paper-literal FA-1 Algorithm 1 (outer loop over K_j, V_j) is ``attention.flash1``.

Dropout (FA-1 Alg. 2 line 14, Alg. 4 line 14): counter-based (``attention.dropout``), so nothing is
stored: the backward regenerates the forward's keep-mask from (seed, b, h, i, j). An explicit boolean
``dropout_mask`` (the reference's option) is accepted instead of a seed.

Usage (float32 or float64, any block sizes):

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 2, 100, 16)) for _ in range(3))
    >>> out, cache = flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=48)
    >>> dq, dk, dv, dbias = flash_attention_backward(np.ones_like(out), cache)
    >>> out.shape, cache.lse.shape, dbias is None
    ((1, 2, 100, 16), (1, 2, 100), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..core import validate
from ..core.vexp import exp_buffer
from .dropout import kept, make_dropout
from .flash_options import flash_options, n_workers
from .tiles import make_masking, make_tiles, mask_tile, mask_tile_t, tile_matmul

KEY_GROUPS = 2                   # the backward's work items per (batch, head): key blocks j mod 2
FORWARD_BLOCKS = (512, 128)      # (B_r, B_c) of the FA-2 forward: float32, d = 64, N = 8192, 2 cores,
BACKWARD_BLOCKS = (64, 512)      # interleaved runs against (512, 64) / (256, 256) and (64, 256) / (128, 512)


# ----------------------------------------------------------------------------------------------
# FA-2 forward

@njit(cache=True, parallel=True)
def _fa2_forward_kernel(q, k, v, scale, masking, dropout, tiles, out, lse):
    """FA-2 Algorithm 1 with its tiles stored key-major: st[c, r] holds S_ij[r, c], acc_t[t, r] holds
    O~_i[r, t]. The algorithm is unchanged; the layout puts the B_r queries of the block on the
    contiguous axis, so the running max and sum of line 9 and the rescaling of line 10 are element-wise
    loops over the queries (no row reductions) and both tile products run along B_r (``tile_matmul``)."""
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    block_q, block_k, n_workers = tiles
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
            last_key = min(n_k - 1, r0 + br - 1 + masking.offset)        # causal: later key blocks skipped
            for c0 in range(0, last_key + 1, block_k):           # line 6: for j in 1..T_c
                bc = min(block_k, n_k - c0)
                for c in range(bc):                              # line 7: load K_j, V_j
                    for t in range(d):
                        k_t[c, t] = k[b, h, c0 + c, t]
                    for t in range(d_v):
                        vt_t[t, c] = v[b, h, c0 + c, t]
                tile_matmul(k_t, qt_t, bc, br, d, st, False)     # line 8: S^T = K_j (tau Q_i)^T
                mask_tile_t(st, b, h, r0, c0, br, bc, masking,   # only diagonal tiles need the causal mask
                            c0 + bc - 1 > r0 + masking.offset)
                for r in range(br):                              # line 9: m = max(m_old, rowmax S)
                    m_new[r] = m[r]
                for c in range(bc):
                    for r in range(br):
                        m_new[r] = max(m_new[r], st[c, r])
                for r in range(br):                              # a row that sees no key yet keeps
                    shift[r] = m_new[r] if m_new[r] > -np.inf else 0.0   # m = -inf; exp(-inf - 0) = 0
                    alpha[r] = m[r] - shift[r]
                    m[r] = m_new[r]
                exp_buffer(alpha[:br], bits64, bits32)          # e^{m_old - m_new} (0 if m_old = -inf)
                for r in range(br):
                    l[r] *= alpha[r]
                for c in range(bc):
                    for r in range(br):
                        st[c, r] -= shift[r]
                    exp_buffer(st[c, :br], bits64, bits32)      # line 9: P~ = exp(S - m)
                    for r in range(br):
                        l[r] += st[c, r]                         # line 9: l += rowsum P~ (undropped)
                if dropout.active:                               # Alg. 2 line 14: P~ o Z
                    for c in range(bc):
                        for r in range(br):
                            i = r0 + r
                            keep = kept(dropout, b, h, i, c0 + c, ((b * n_h + h) * n_q + i) * n_k + c0 + c)
                            st[c, r] = st[c, r] * dropout.inv_keep if keep else 0.0
                for t in range(d_v):                             # line 10: diag(alpha) O~ ...
                    for r in range(br):
                        acc_t[t, r] *= alpha[r]
                tile_matmul(vt_t, st, d_v, br, bc, acc_t, True)  # line 10: ... + P~ V_j  (as V_j^T P~^T)
            for r in range(br):                                  # lines 12-15
                if l[r] == 0.0:                                  # a row that sees no key: O = 0, L = -inf
                    for t in range(d_v):
                        out[b, h, r0 + r, t] = 0.0
                    lse[b, h, r0 + r] = -np.inf
                else:                                            # (l is NaN if a score was: O, L NaN)
                    inv_l = 1.0 / l[r]
                    for t in range(d_v):
                        out[b, h, r0 + r, t] = acc_t[t, r] * inv_l   # line 12: O_i = diag(l)^-1 O~
                    lse[b, h, r0 + r] = m[r] + np.log(l[r])      # line 13: L_i = m + log(l)


# ----------------------------------------------------------------------------------------------
# Backward (FA-2 Algorithm 2 / FA-1 Algorithm 4)

@njit(cache=True, parallel=True)
def _backward_kernel(q, k, v, dout, lse, d_row, scale, masking, dropout, tiles, dq_groups, dk, dv, dbias):
    """FA-2 Algorithm 2 (see flash_attention_backward). dbias: (1 or n_workers, the bias's flat size), one
    copy per worker when it has n_workers rows."""
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    block_q, block_k, n_workers = tiles
    offset, has_bias = masking.offset, masking.has_bias
    bs0, bs1, bs2, bs3 = masking.bias_strides                  # the bias's element strides
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
        p_drop = np.empty((block_q, block_k), q.dtype) if dropout.active else p   # P o Z
        ds = np.empty((block_q, block_k), q.dtype)              # dP, then dS
        bits64 = np.empty(block_k if q.itemsize == 8 else 0, np.int64)    # scratch of the vectorised exp
        bits32 = np.empty(block_k if q.itemsize == 4 else 0, np.int32)
        wb = np.int64(w) if dbias.shape[0] > 1 else np.int64(0)
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
                    tile_matmul(q_t, kt_t, br, bc, d, p, False)  # line 10: S = tau Q_i K_j^T
                    mask_tile(p, b, h, r0, c0, br, bc, masking, c0 + bc - 1 > r0 + offset)
                    tile_matmul(do_t, vt_t, br, bc, d_v, ds, False)   # line 13: dP = dO_i V_j^T
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
                            exp_buffer(p[r, :bc], bits64, bits32)   # line 11: P = exp(S - L)
                        if dropout.active:                      # Alg. 4 lines 14-15, 18: Z on P and dP
                            for c in range(bc):
                                if kept(dropout, b, h, i, c0 + c, base + c):
                                    p_drop[r, c] = p[r, c] * dropout.inv_keep
                                    ds[r, c] *= dropout.inv_keep
                                else:
                                    p_drop[r, c] = 0.0
                                    ds[r, c] = 0.0
                        for c in range(bc):
                            ds[r, c] = p[r, c] * (ds[r, c] - D)  # line 14: dS = P o (dP - D)
                        if has_bias:                            # dbias += dS (reduced to the bias's shape)
                            row = b * bs0 + h * bs1 + i * bs2
                            for c in range(bc):
                                dbias[wb, row + (c0 + c) * bs3] += ds[r, c]
                    tile_matmul(do_t.T, p_drop, d_v, bc, br, dvt_t, True)   # line 12: dV_j^T += dO_i^T (P o Z)
                    tile_matmul(q_t.T, ds, d, bc, br, dkt_t, True)   # line 16: dK_j^T += (tau Q_i)^T dS
                    tile_matmul(ds, k_t, br, d, bc, dq_t, True)      # line 15: dQ_i += tau dS K_j ...
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
    rng, from which a seed is drawn): counter-based dropout, see ``attention.dropout``.
    block_q, block_k: B_r and B_c, any positive ints (N need not be a multiple), used by this forward
    and by the backward of its cache; None (each independently) = each kernel's own default:
    FORWARD_BLOCKS = (512, 128) here (key-major tiles: the long axis is B_r) and BACKWARD_BLOCKS =
    (64, 512) in the backward (its long axis is B_c). Per-worker tiles stay O(B_r B_c + (B_r + B_c) d).
    dropout_mask: optional explicit boolean keep-mask broadcastable to (B, H, Nq, Nk), used instead of
    the generator (a drop-in for the reference's option; it is an N x N input the caller made).

    Returns out (B, H, Nq, dv) in the input dtype and a FlashCache (cache.lse: (B, H, Nq)).
    """
    bq = FORWARD_BLOCKS[0] if block_q is None else validate.positive_int(block_q, "block_q")
    bk = FORWARD_BLOCKS[1] if block_k is None else validate.positive_int(block_k, "block_k")
    o = flash_options(q, k, v, scale=scale, causal=causal, causal_alignment=causal_alignment, bias=bias,
                      key_padding_mask=key_padding_mask, dropout_p=dropout_p, dropout_seed=dropout_seed, rng=rng,
                      dropout_mask=dropout_mask)
    q, k, v = o.q, o.k, o.v
    n_b, n_h, n_q, _ = q.shape
    out = np.empty((n_b, n_h, n_q, v.shape[3]), q.dtype)                    # O  (B, H, Nq, dv)
    lse = np.empty((n_b, n_h, n_q), q.dtype)                                # L  (B, H, Nq)
    tiles = make_tiles(bq, bk, n_q, k.shape[2], n_workers(n_b * n_h * -(-n_q // bq)))
    with np.errstate(over="ignore"):   # splitmix64 wraps around uint64 on purpose (NUMBA_DISABLE_JIT=1)
        _fa2_forward_kernel(q, k, v, q.dtype.type(o.scale), o.masking, o.dropout, tiles, out, lse)
    cache = FlashCache(q=q, k=k, v=v, out=out, lse=lse, scale=o.scale, offset=o.offset, bias=o.bias,
                       key_padding_mask=o.key_padding_mask, dropout_p=o.dropout_p, dropout_seed=o.dropout_seed,
                       dropout_mask=o.dropout_mask, block_q=BACKWARD_BLOCKS[0] if block_q is None else bq,
                       block_k=BACKWARD_BLOCKS[1] if block_k is None else bk)
    return out, cache


def _check_cache(cache):
    """The cache must be flash_attention_forward's, with shapes that agree: the kernel indexes q, k, v, out and
    lse by them (an lse shorter than Nq was read out of bounds). Returns (q, k, v, out, lse), contiguous."""
    validate.cache(cache, FlashCache, "flash_attention_forward")
    q = validate.float_array(cache.q, "cache.q", ndim=4)
    n_b, n_h, n_q, d = q.shape
    k = validate.array(cache.k, "cache.k", shape=(n_b, n_h, None, d), dtype=q.dtype)
    v = validate.array(cache.v, "cache.v", shape=(n_b, n_h, k.shape[2], None), dtype=q.dtype)
    out = validate.array(cache.out, "cache.out", shape=(n_b, n_h, n_q, v.shape[3]), dtype=q.dtype)
    lse = validate.array(cache.lse, "cache.lse", shape=(n_b, n_h, n_q), dtype=q.dtype)
    if min(q.shape + k.shape + v.shape) < 1:
        validate.fail("cache.q", "non-empty q, k, v", (q.shape, k.shape, v.shape))
    target = (n_b, n_h, n_q, k.shape[2])
    if cache.bias is not None:
        validate.broadcastable(validate.array(cache.bias, "cache.bias", dtype=q.dtype), "cache.bias", target)
    if cache.key_padding_mask is not None:
        validate.bool_array(cache.key_padding_mask, "cache.key_padding_mask", shape=(n_b, k.shape[2]))
    if cache.dropout_mask is not None:
        validate.broadcastable(validate.bool_array(cache.dropout_mask, "cache.dropout_mask"), "cache.dropout_mask",
                               target)
    validate.positive(cache.scale, "cache.scale")
    validate.probability(cache.dropout_p, "cache.dropout_p")
    for name in ("offset", "dropout_seed"):
        validate.integer(getattr(cache, name), "cache." + name)
    for name in ("block_q", "block_k"):
        validate.positive_int(getattr(cache, name), "cache." + name)
    return tuple(np.ascontiguousarray(a) for a in (q, k, v, out, lse))


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
    size). The cache is checked (type, shapes) before anything is read. Returns (dq, dk, dv, dbias), dbias
    None when the forward had no bias.
    """
    q, k, v, out, lse = _check_cache(cache)
    dout = np.ascontiguousarray(validate.array(dout, "dout", shape=out.shape, dtype=out.dtype))
    n_b, n_h, n_q, d = q.shape
    n_k = k.shape[2]
    d_row = np.einsum("bhid,bhid->bhi", dout, out)                       # line 4: D   (B, H, Nq)
    masking = make_masking(n_b, n_k, q.dtype, cache.offset, cache.bias, cache.key_padding_mask)
    dropout = make_dropout(q.dtype, cache.dropout_p, cache.dropout_seed, cache.dropout_mask)
    n_groups = min(KEY_GROUPS, -(-n_k // min(cache.block_k, n_k)))
    tiles = make_tiles(cache.block_q, cache.block_k, n_q, n_k, n_workers(n_b * n_h * n_groups))
    shape4 = (1, 1, 1, 1) if cache.bias is None else (1,) * (4 - cache.bias.ndim) + cache.bias.shape
    per_worker = masking.has_bias and ((shape4[0] == 1 and n_b > 1) or (shape4[1] == 1 and n_h > 1)
                                       or (shape4[3] == 1 and n_groups > 1))
    dbias = np.zeros((tiles.n_workers if per_worker else 1, masking.bias.size), q.dtype)   # flat, like the bias
    dq_groups = np.zeros((n_groups,) + q.shape, q.dtype)                 # line 3: dQ = 0, per key group
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    with np.errstate(over="ignore"):
        _backward_kernel(q, k, v, dout, lse, d_row, q.dtype.type(cache.scale), masking, dropout, tiles, dq_groups,
                         dk, dv, dbias)
    dq = dq_groups.sum(axis=0)
    if not masking.has_bias:
        return dq, dk, dv, None
    return dq, dk, dv, (dbias[0] if dbias.shape[0] == 1 else dbias.sum(axis=0)).reshape(cache.bias.shape)
