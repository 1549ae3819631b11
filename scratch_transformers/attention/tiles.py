"""The on-chip tile primitives of the FlashAttention kernels (``attention.flash``), in numba.

Kept apart so that ``flash.py`` reads as the paper's algorithms; each helper works on one "SRAM" tile:

- ``_mm_abt`` / ``_mm_acc_ab``: the tile products (S = tau Q_i K_j^T, dP = dO_i V_j^T, the transposed
  updates of O~, dK_j, dV_j, and dQ_i += dS K_j), as loops whose innermost index runs along a contiguous
  row and accumulates element-wise, so LLVM vectorises them without fastmath (no floating-point
  reduction is reassociated; results are deterministic).
- ``_mask_tile`` / ``_mask_tile_t``: MASK(S + bias) of FA-1 Algorithm 2 line 11 on a query-major / key-major tile.

See derivations/flashattention.md ("Inner products without fastmath", "Key-major tiles").
"""

from __future__ import annotations

import numpy as np
from numba import njit


# ----------------------------------------------------------------------------------------------
# Tile products: the small matrix products of the algorithms, written as loops whose
# innermost index is contiguous, so LLVM vectorises them without fastmath (each is an element-wise
# multiply-add over a row, never a floating-point reduction). The middle index is unrolled by 4
# so every load/store of the output row carries 4 multiply-adds instead of 1.

@njit(cache=True)
def _mm_abt(a, bt, rows, cols, inner, out, accumulate):
    """out[:rows, :cols] (+)= a[:rows, :inner] @ bt[:inner, :cols]   (e.g. S = (tau Q_i) K_j^T with bt = K_j^T);
    "+=" if accumulate (e.g. dK_j^T += (tau Q_i)^T dS with a = the transposed view of Q_i's tile).

    Two output rows at a time share every load of bt; 4 terms of the inner index per pass."""
    for r in range(0, rows - 1, 2):
        if not accumulate:
            for c in range(cols):
                out[r, c] = 0.0
                out[r + 1, c] = 0.0
        t = 0
        while t + 4 <= inner:
            a0, a1, a2, a3 = a[r, t], a[r, t + 1], a[r, t + 2], a[r, t + 3]
            b0, b1, b2, b3 = a[r + 1, t], a[r + 1, t + 1], a[r + 1, t + 2], a[r + 1, t + 3]
            for c in range(cols):
                k0, k1, k2, k3 = bt[t, c], bt[t + 1, c], bt[t + 2, c], bt[t + 3, c]
                out[r, c] += a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
                out[r + 1, c] += b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
            t += 4
        while t < inner:
            a0, b0 = a[r, t], a[r + 1, t]
            for c in range(cols):
                out[r, c] += a0 * bt[t, c]
                out[r + 1, c] += b0 * bt[t, c]
            t += 1
    if rows % 2 == 1:                                       # the last odd row
        r = rows - 1
        if not accumulate:
            for c in range(cols):
                out[r, c] = 0.0
        t = 0
        while t + 4 <= inner:
            a0, a1, a2, a3 = a[r, t], a[r, t + 1], a[r, t + 2], a[r, t + 3]
            for c in range(cols):
                out[r, c] += a0 * bt[t, c] + a1 * bt[t + 1, c] + a2 * bt[t + 2, c] + a3 * bt[t + 3, c]
            t += 4
        while t < inner:
            a0 = a[r, t]
            for c in range(cols):
                out[r, c] += a0 * bt[t, c]
            t += 1


@njit(cache=True)
def _mm_acc_ab(p, b, rows, inner, cols, out):
    """out[:rows, :cols] += p[:rows, :inner] @ b[:inner, :cols]   (the backward's dQ_i += dS K_j, whose output
    rows are only d long: the one product left whose vectorised loop runs along d)."""
    for r in range(0, rows - 1, 2):                         # pairs of output rows share the loads of b
        c = 0
        while c + 4 <= inner:
            p0, p1, p2, p3 = p[r, c], p[r, c + 1], p[r, c + 2], p[r, c + 3]
            q0, q1, q2, q3 = p[r + 1, c], p[r + 1, c + 1], p[r + 1, c + 2], p[r + 1, c + 3]
            for t in range(cols):
                v0, v1, v2, v3 = b[c, t], b[c + 1, t], b[c + 2, t], b[c + 3, t]
                out[r, t] += p0 * v0 + p1 * v1 + p2 * v2 + p3 * v3
                out[r + 1, t] += q0 * v0 + q1 * v1 + q2 * v2 + q3 * v3
            c += 4
        while c < inner:
            p0, q0 = p[r, c], p[r + 1, c]
            for t in range(cols):
                out[r, t] += p0 * b[c, t]
                out[r + 1, t] += q0 * b[c, t]
            c += 1
    if rows % 2 == 1:                                       # the last odd row
        r = rows - 1
        c = 0
        while c + 4 <= inner:
            p0, p1, p2, p3 = p[r, c], p[r, c + 1], p[r, c + 2], p[r, c + 3]
            for t in range(cols):
                out[r, t] += p0 * b[c, t] + p1 * b[c + 1, t] + p2 * b[c + 2, t] + p3 * b[c + 3, t]
            c += 4
        while c < inner:
            p0 = p[r, c]
            for t in range(cols):
                out[r, t] += p0 * b[c, t]
            c += 1


@njit(cache=True)
def _mask_tile(s, b, h, r0, c0, br, bc, offset, bias, bst, has_bias, kpm, has_kpm, need_causal):
    """S^masked = MASK(S + bias): add the bias, put -inf at padded keys and above the diagonal.
    The bias is flat with element strides bst (0 on broadcast axes), so it is never expanded."""
    for r in range(br):
        i = r0 + r
        if has_bias:
            row = b * bst[0] + h * bst[1] + i * bst[2]
            for c in range(bc):
                s[r, c] += bias[row + (c0 + c) * bst[3]]
        if has_kpm:
            for c in range(bc):
                if kpm[b, c0 + c]:
                    s[r, c] = -np.inf
        if need_causal:
            for c in range(max(0, i + offset + 1 - c0), bc):      # keys j > i + offset
                s[r, c] = -np.inf


@njit(cache=True)
def _mask_tile_t(st, b, h, r0, c0, br, bc, offset, bias, bst, has_bias, kpm, has_kpm, need_causal):
    """``_mask_tile`` for a key-major tile st[c, r] = S[r0 + r, c0 + c] (the FA-2 forward's layout)."""
    for c in range(bc):
        j = c0 + c
        if has_bias:
            col = b * bst[0] + h * bst[1] + j * bst[3]
            for r in range(br):
                st[c, r] += bias[col + (r0 + r) * bst[2]]
        if has_kpm and kpm[b, j]:
            for r in range(br):
                st[c, r] = -np.inf
        if need_causal:
            for r in range(min(br, max(0, j - offset - r0))):      # queries i < j - offset
                st[c, r] = -np.inf
