"""Ternary inference as the MatMul-free LM means it (Zhu et al., arXiv 2406.02528, §3.1): weights packed at 2 or
1.6 bits, outputs formed from int8 activations by integer additions and subtractions only, one float scale last.

    y_j = s_x * gamma * sum_i x~_i W~_ij,     sum_i x~_i W~_ij = sum_{i: W~_ij = 1} x~_i - sum_{i: W~_ij = -1} x~_i

Packing (along d_in: byte b of output j holds inputs G b .. G b + G - 1; ``PackedTernary.data`` is (n_bytes, d_out)
uint8, outputs contiguous, so the kernel streams row b past the table of group b):

    "2bit"   4 weights per byte, weight k of the group in bits 2k..2k+1: 0 -> 00, +1 -> 01, -1 -> 10 (11 unused)
    "base3"  5 weights per byte (3^5 = 243 <= 256, log2(3) = 1.585 -> 1.6 bits): byte = sum_k (W~_k + 1) 3^k
    a last partial group is padded with weight 0.

Kernel: the lookup-table formulation of bitnet.cpp's TL kernels (Wang et al., "Bitnet.cpp: Efficient Edge
Inference for Ternary LLMs", arXiv 2502.11880: Ternary Lookup Table, TL). For every group of G activations
(G = 4 for "2bit", 5 for "base3") a table holds the signed sum for every possible byte:

    T[b, v] = sum_k sign_k(v) x~_{G b + k},   built by additions/subtractions only (``_build_tables``)

so one output needs one table lookup and one integer addition per byte, i.e. per G weights: no multiplication by
a weight anywhere, and the packed byte *is* the table index (the base-3 format costs no decoding). Accumulators
are int32 (exact: |sum| <= 128 d_in < 2^31 for d_in <= 2^24), so the result equals the integer product of the
codes exactly, and y = acc * (s_x gamma) equals the dequantised dense product (x~ s_x) (W~ gamma) to float rounding.

Glossary (code symbol -> paper)
    codes (d_in, d_out) int8   W~ in {-1, 0, 1};  x_codes (M, d_in) int8: x~ (M tokens)
    scale                      gamma (weights, per tensor);  x_scale (M, 1): s_x = eta / 127 (per token)
    table (n_groups, n_entries, M) int16   T above;  acc (d_out, M) int32
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange

from ..core import validate
from ..core.layers import rms_norm_forward
from .quant import absmax_int8, absmean_ternary

__all__ = ["FORMATS", "PackedTernary", "pack_ternary", "unpack_ternary", "pack_weight", "ternary_matmul_int",
           "ternary_linear", "bitlinear_packed"]

FORMATS = {"2bit": (4, 4), "base3": (5, 3)}   # format -> (weights per byte G, base of one digit)
_MAX_D_IN = 1 << 24                            # int32 accumulators stay exact up to here


class PackedTernary(NamedTuple):
    data: np.ndarray   # (n_bytes, d_out) uint8, n_bytes = ceil(d_in / G)
    d_in: int
    d_out: int
    fmt: str           # "2bit" | "base3"
    scale: float       # gamma: the float weight is codes * scale (1.0 for bare codes)


def _digit_values(fmt: str) -> np.ndarray:
    """Weight value of each digit: 2bit 0, +1, -1, (unused 0); base3 -1, 0, +1."""
    return np.array([0, 1, -1, 0] if fmt == "2bit" else [-1, 0, 1], dtype=np.int8)


def pack_ternary(codes, fmt: str = "2bit", scale: float = 1.0) -> PackedTernary:
    """Pack ternary codes (d_in, d_out) int8 in {-1, 0, 1} into ``fmt`` ("2bit": 4 per byte, "base3": 5 per byte)."""
    fmt = validate.option(fmt, "fmt", tuple(FORMATS))
    codes = validate.int_array(codes, "codes", ndim=2, low=-1, high=2)
    scale = validate.real(scale, "scale")
    d_in, d_out = codes.shape
    if d_in > _MAX_D_IN or d_in == 0 or d_out == 0:
        validate.fail("codes", f"shape with 1 <= d_in <= {_MAX_D_IN} and d_out >= 1", codes.shape)
    G, base = FORMATS[fmt]
    n_bytes = -(-d_in // G)
    c = np.zeros((n_bytes * G, d_out), np.int64)                  # pad with weight 0
    c[:d_in] = codes
    digits = np.where(c < 0, 2, c) if fmt == "2bit" else c + 1    # (n_bytes * G, d_out)
    digits = digits.reshape(n_bytes, G, d_out)
    data = np.sum(digits * (base ** np.arange(G))[:, None], axis=1).astype(np.uint8)   # (n_bytes, d_out)
    return PackedTernary(data, d_in, d_out, fmt, scale)


def _check_packed(packed) -> PackedTernary:
    if not isinstance(packed, PackedTernary):
        validate.fail("packed", "a PackedTernary from pack_ternary", type(packed).__name__)
    validate.option(packed.fmt, "packed.fmt", tuple(FORMATS))
    G, _ = FORMATS[packed.fmt]
    validate.array(packed.data, "packed.data", shape=(-(-packed.d_in // G), packed.d_out), dtype=np.uint8)
    return packed


def unpack_ternary(packed: PackedTernary) -> np.ndarray:
    """Inverse of pack_ternary: codes (d_in, d_out) int8, bit-exact. Rejects bytes no ternary group packs to."""
    packed = _check_packed(packed)
    G, base = FORMATS[packed.fmt]
    digits = (packed.data[:, None, :].astype(np.int64) // (base ** np.arange(G))[:, None]) % base   # (n_bytes, G, d_out)
    if packed.fmt == "2bit" and np.any(digits == 3) or packed.fmt == "base3" and np.any(packed.data > 242):
        validate.fail("packed.data", f"bytes of the {packed.fmt} format", "an invalid byte")
    codes = _digit_values(packed.fmt)[digits].reshape(-1, packed.d_out)[:packed.d_in]
    return np.ascontiguousarray(codes)


def pack_weight(w, fmt: str = "2bit") -> PackedTernary:
    """absmean_ternary(w) packed, with gamma as the scale: what a trained BitLinear weight ships as."""
    q = absmean_ternary(w)
    return pack_ternary(q.codes, fmt, float(q.scale))


@njit(cache=True)
def _build_tables(x_codes, G, base, values, table):
    """T[b, v, m] = sum_k values[digit_k(v)] * x~[m, G b + k], built digit by digit with additions and
    subtractions only: the entries with digit k = d extend the entries of the first k digits by +x, -x or 0."""
    M, d_in = x_codes.shape
    n_groups = table.shape[0]
    for b in range(n_groups):
        for m in range(M):
            table[b, 0, m] = 0
            span = 1                                             # entries filled so far: base^k
            for k in range(G):
                i = G * b + k
                xi = np.int16(x_codes[m, i]) if i < d_in else np.int16(0)   # padding reads as 0
                for d in range(base - 1, -1, -1):                # fill high digits first: low entries stay intact
                    for v in range(span):
                        t = table[b, v, m]
                        if values[d] == 1:
                            t = t + xi
                        elif values[d] == -1:
                            t = t - xi
                        table[b, v + d * span, m] = t
                span *= base


@njit(cache=True)
def _accumulate_block(table, data, acc, j0, j1):
    """acc[j, m] += sum_b T[b, data[b, j], m] for outputs j0 <= j < j1: one table lookup and one integer addition
    per byte (G weights). Row b of ``data`` streams past group b's table (<= 256 entries, in L1). For one token the
    groups are taken four at a time (one read-modify-write of acc[j] per four lookups: ~3x faster)."""
    n_groups = data.shape[0]
    M = table.shape[2]
    start = 0
    if M == 1:
        start = n_groups - n_groups % 4
        for b in range(0, start, 4):
            for j in range(j0, j1):
                acc[j, 0] += (np.int32(table[b, data[b, j], 0]) + np.int32(table[b + 1, data[b + 1, j], 0])
                              + np.int32(table[b + 2, data[b + 2, j], 0]) + np.int32(table[b + 3, data[b + 3, j], 0]))
    for b in range(start, n_groups):
        for j in range(j0, j1):
            v = data[b, j]
            for m in range(M):
                acc[j, m] += table[b, v, m]


@njit(cache=True, parallel=True)
def _lut_accumulate_parallel(table, data, acc, j_block):
    """Threads take blocks of outputs."""
    d_out = data.shape[1]
    for jb in prange((d_out + j_block - 1) // j_block):
        _accumulate_block(table, data, acc, jb * j_block, min(d_out, (jb + 1) * j_block))


@njit(cache=True)
def _lut_accumulate_serial(table, data, acc, j_block):
    """The same on one thread. Threads pay off only for large products (a parallel region costs tens of
    microseconds to start, far more on a busy machine), so small ones (decoding a small model) run here."""
    d_out = data.shape[1]
    for j0 in range(0, d_out, j_block):
        _accumulate_block(table, data, acc, j0, min(d_out, j0 + j_block))


_PARALLEL_MIN_LOOKUPS = 1 << 22


def ternary_matmul_int(x_codes, packed: PackedTernary) -> np.ndarray:
    """Exact integer product x~ W~: x_codes (M, d_in) int8, packed weights -> (M, d_out) int32 (add/subtract only)."""
    packed = _check_packed(packed)
    x_codes = validate.array(x_codes, "x_codes", ndim=2, shape=(None, packed.d_in), dtype=np.int8)
    G, base = FORMATS[packed.fmt]
    M = x_codes.shape[0]
    n_groups = packed.data.shape[0]
    table = np.empty((n_groups, base ** G, M), np.int16)
    _build_tables(x_codes, G, base, _digit_values(packed.fmt), table)
    acc = np.zeros((packed.d_out, M), np.int32)
    # One block of outputs per thread: every block walks all the tables (M x 0.5 KB per group), so more blocks
    # would read the tables again (4 MB at d_in = 4096, M = 8)
    if n_groups * packed.d_out * M >= _PARALLEL_MIN_LOOKUPS:
        _lut_accumulate_parallel(table, packed.data, acc, max(64, -(-packed.d_out // get_num_threads())))
    else:
        _lut_accumulate_serial(table, packed.data, acc, packed.d_out)
    return np.ascontiguousarray(acc.T)


def ternary_linear(x_codes, x_scale, packed: PackedTernary) -> np.ndarray:
    """y = (x~ W~) * (s_x gamma): the integer product, then one float scale per output.
    x_codes (M, d_in) int8, x_scale (M, 1) float. Returns (M, d_out) in x_scale's dtype."""
    x_scale = validate.float_array(x_scale, "x_scale", ndim=2, finite=True)
    acc = ternary_matmul_int(x_codes, packed)
    validate.array(x_scale, "x_scale", shape=(acc.shape[0], 1))
    return acc.astype(x_scale.dtype) * (x_scale * x_scale.dtype.type(packed.scale))   # one scale per output


def bitlinear_packed(x, packed: PackedTernary, norm_weight, eps: float = 1e-6) -> np.ndarray:
    """BitLinear at inference on packed weights: RMSNorm -> absmax int8 -> add/subtract kernel -> scale.
    x: (..., d_in) float, finite. Equals bitlinear_forward(x, w, norm_weight)[0] to float rounding."""
    packed = _check_packed(packed)
    x = validate.float_array(x, "x", min_ndim=1, finite=True)
    if x.shape[-1] != packed.d_in:
        validate.fail("x", f"last axis {packed.d_in} (the packed weight's d_in)", x.shape)
    x_bar, _ = rms_norm_forward(x, norm_weight, eps)
    q = absmax_int8(x_bar.reshape(-1, packed.d_in))
    y = ternary_linear(q.codes, q.scale, packed)
    return y.reshape(x.shape[:-1] + (packed.d_out,))
