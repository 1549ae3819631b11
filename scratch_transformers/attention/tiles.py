"""The on-chip tile primitives of the FlashAttention kernels (``attention.flash``, ``attention.flash1``), in numba,
and the small option records those kernels take.

Kept apart so that the kernels read as the papers' algorithms; each helper works on one "SRAM" tile:

- ``tile_matmul``: every tile product of the algorithms (S = tau Q_i K_j^T, dP = dO_i V_j^T, the transposed
  updates of O~, dK_j, dV_j, and dQ_i += dS K_j), as loops whose innermost index runs along a contiguous
  row and accumulates element-wise, so LLVM vectorises them without fastmath (no floating-point
  reduction is reassociated; results are deterministic).
- ``mask_tile`` / ``mask_tile_t``: MASK(S + bias) of FA-1 Algorithm 2 line 11 on a query-major / key-major tile.
- ``Masking`` and ``Tiles``: the options as NamedTuples numba accepts, so a kernel call reads
  ``kernel(q, k, v, scale, masking, dropout, tiles, out, lse)`` (``Dropout`` is in ``attention.dropout``).

The numba functions are kernel building blocks: they trust their arguments; the public functions of the
modules that call them validate. See derivations/flashattention.md ("Inner products without fastmath",
"Key-major tiles").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

NO_CAUSAL = np.iinfo(np.int64).max // 4   # "allowed iff j <= i + offset" with an offset no j reaches


class Masking(NamedTuple):
    """MASK of FA-1 Algorithm 2 line 11 as the kernels read it (see ``make_masking``)."""
    offset: int                   # query i sees key j iff j <= i + offset (NO_CAUSAL when not causal)
    bias: np.ndarray              # the bias, flat (contiguous 1-D), or a single unread 0
    bias_strides: np.ndarray      # (4,) int64 element strides over (B, H, Nq, Nk), 0 on broadcast axes
    has_bias: bool
    key_padding: np.ndarray       # (B, Nk) bool, True = padded key (all False and unread when there is none)
    has_key_padding: bool


class Tiles(NamedTuple):
    block_q: int                  # B_r: query rows per tile (at most Nq)
    block_k: int                  # B_c: key rows per tile (at most Nk)
    n_workers: int                # prange workers of the kernel


def flat_broadcast(x, dtype):
    """An array broadcastable to (B, H, Nq, Nk) as (contiguous 1-D data, (4,) int64 element strides with 0 on
    its broadcast axes): one kernel signature for every bias / mask shape, nothing expanded. (The strides are an
    array, not a tuple: numba's parallel loops do not take a tuple nested in a record.)"""
    strides = np.zeros(4, np.int64)
    if x is None:
        return np.zeros(1, dtype), strides
    x4 = np.ascontiguousarray(x.reshape((1,) * (4 - x.ndim) + x.shape))
    step = 1
    for ax in range(3, -1, -1):
        strides[ax] = step if x4.shape[ax] != 1 else 0
        step *= x4.shape[ax]
    return x4.reshape(-1), strides


def make_masking(n_b, n_k, dtype, offset, bias, key_padding_mask):
    """The Masking record of already validated options (offset: see ``Masking``)."""
    flat, strides = flat_broadcast(bias, dtype)
    if key_padding_mask is None:
        key_padding = np.zeros((n_b, n_k), dtype=np.bool_)
    else:
        key_padding = np.ascontiguousarray(key_padding_mask)
    return Masking(np.int64(offset), flat, strides, bias is not None, key_padding, key_padding_mask is not None)


def make_tiles(block_q, block_k, n_q, n_k, n_workers):
    """The Tiles record: a block longer than the sequence is the whole sequence (same result; a short sequence
    does not pay for 512-row tiles)."""
    return Tiles(min(block_q, n_q), min(block_k, n_k), n_workers)


# ----------------------------------------------------------------------------------------------
# The tile product: the small matrix products of the algorithms, written as loops whose
# innermost index is contiguous, so LLVM vectorises them without fastmath (each is an element-wise
# multiply-add over a row, never a floating-point reduction). The middle index is unrolled by 4
# so every load/store of the output row carries 4 multiply-adds instead of 1.

@njit(cache=True)
def tile_matmul(a, b, rows, cols, inner, out, accumulate):
    """out[:rows, :cols] (+)= a[:rows, :inner] @ b[:inner, :cols]: "+=" if accumulate, else "=".

    E.g. S = (tau Q_i) K_j^T with b the K_j^T tile; dK_j^T += (tau Q_i)^T dS with a the transposed view of
    Q_i's tile; dQ_i += dS K_j. Two output rows at a time share every load of b; 4 terms of the inner index
    per pass, each added to out in index order (the sum's order is fixed, so results are deterministic)."""
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
                k0, k1, k2, k3 = b[t, c], b[t + 1, c], b[t + 2, c], b[t + 3, c]
                out[r, c] += a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
                out[r + 1, c] += b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
            t += 4
        while t < inner:
            a0, b0 = a[r, t], a[r + 1, t]
            for c in range(cols):
                out[r, c] += a0 * b[t, c]
                out[r + 1, c] += b0 * b[t, c]
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
                out[r, c] += a0 * b[t, c] + a1 * b[t + 1, c] + a2 * b[t + 2, c] + a3 * b[t + 3, c]
            t += 4
        while t < inner:
            a0 = a[r, t]
            for c in range(cols):
                out[r, c] += a0 * b[t, c]
            t += 1


@njit(cache=True)
def mask_tile(s, b, h, r0, c0, br, bc, masking, need_causal):
    """S^masked = MASK(S + bias) on the tile s[r, c] = S[r0 + r, c0 + c]: add the bias, put -inf at padded keys
    and (need_causal) above the diagonal. The bias is flat with element strides (0 on broadcast axes), so it is
    never expanded."""
    offset, bias, bst, kpm = masking.offset, masking.bias, masking.bias_strides, masking.key_padding
    s3 = bst[3]
    for r in range(br):
        i = r0 + r
        if masking.has_bias:
            row = b * bst[0] + h * bst[1] + i * bst[2]
            for c in range(bc):
                s[r, c] += bias[row + (c0 + c) * s3]
        if masking.has_key_padding:
            for c in range(bc):
                if kpm[b, c0 + c]:
                    s[r, c] = -np.inf
        if need_causal:
            for c in range(max(0, i + offset + 1 - c0), bc):      # keys j > i + offset
                s[r, c] = -np.inf


@njit(cache=True)
def mask_tile_t(st, b, h, r0, c0, br, bc, masking, need_causal):
    """``mask_tile`` for a key-major tile st[c, r] = S[r0 + r, c0 + c] (the FA-2 forward's layout)."""
    offset, bias, bst, kpm = masking.offset, masking.bias, masking.bias_strides, masking.key_padding
    s2 = bst[2]
    for c in range(bc):
        j = c0 + c
        if masking.has_bias:
            col = b * bst[0] + h * bst[1] + j * bst[3]
            for r in range(br):
                st[c, r] += bias[col + (r0 + r) * s2]
        if masking.has_key_padding and kpm[b, j]:
            for r in range(br):
                st[c, r] = -np.inf
        if need_causal:
            for r in range(min(br, max(0, j - offset - r0))):      # queries i < j - offset
                st[c, r] = -np.inf
