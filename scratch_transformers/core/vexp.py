"""A vectorisable exponential for the numba kernels (FlashAttention's softmax tiles, Mamba's selective scan).

numba compiles ``np.exp`` on a scalar to a libm call per element (no SVML here), the one operation of those loops
that LLVM cannot vectorise. These loops compute the textbook range-reduced exponential instead, in the buffer's
own precision: exp(x) = 2^k exp(r) with k = round(x / ln 2) and r = x - k ln 2 (Cody-Waite: ln 2 split into a
high part, exact in k * ln2_hi, and a low part), |r| <= ln(2)/2, exp(r) by its Taylor polynomial (degree 13 in
float64, 7 in float32: truncation below half an ulp), and 2^k written into the IEEE-754 exponent field. Measured
against NumPy: <= 2 ulp in float64, <= 3 float32 ulps (tests/core/test_vexp.py). Below x = -708 (float32: -87),
-inf included, the result is 0 (the true value is subnormal or zero); above 709 (88) it is inf.

Usage inside a kernel: ``_exp_buffer(x, bits64, bits32)`` with int64 / int32 scratch of at least x.size entries
(the one of the other precision may be empty). Private names: these are kernel building blocks that do not
validate their arguments; the public functions that call them do.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01    # ln 2 split in two so that k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
# float32 versions (typed constants keep the float32 loop in float32 arithmetic)
_INV_LN2_F = np.float32(1.4426950408889634)
_LN2_HI_F = np.float32(0.693145751953125)
_LN2_LO_F = np.float32(1.428606765330187e-06)
_LO_F, _HI_F, _HALF_F, _ZERO_F, _INF_F = (np.float32(-87.0), np.float32(88.0), np.float32(0.5), np.float32(0.0),
                                          np.float32(np.inf))
_C0 = np.float32(1.0)
_C1 = np.float32(1.0)
_C2 = np.float32(0.5)
_C3 = np.float32(0.16666666666666666)
_C4 = np.float32(0.041666666666666664)
_C5 = np.float32(0.008333333333333333)
_C6 = np.float32(0.001388888888888889)
_C7 = np.float32(0.0001984126984126984)


@njit(cache=True)
def _exp_inplace(x, bits):
    """x <- exp(x) for a 1-D float64 buffer, in a loop LLVM can vectorise (a libm call per element cannot be).

    exp(x) = 2^k exp(r) with k = round(x / ln 2), r = x - k ln 2, |r| <= ln(2)/2; exp(r) by its Taylor polynomial
    of degree 13 (relative error < 3e-16); 2^k is built from its IEEE-754 bits (exponent field k + 1023).
    exp(x) = 0 below x = -708 (where it would be subnormal), inf above 709. bits: int64 scratch of x's size.
    """
    n = x.size
    for i in range(n):
        v = x[i]
        vc = v if v > -708.0 else -708.0
        vc = vc if vc < 709.0 else 709.0
        k = np.floor(vc * _INV_LN2 + 0.5)
        r = (vc - k * _LN2_HI) - k * _LN2_LO
        p = 1.6059043836821613e-10
        p = p * r + 2.08767569878681e-09
        p = p * r + 2.505210838544172e-08
        p = p * r + 2.755731922398589e-07
        p = p * r + 2.7557319223985893e-06
        p = p * r + 2.48015873015873e-05
        p = p * r + 0.0001984126984126984
        p = p * r + 0.001388888888888889
        p = p * r + 0.008333333333333333
        p = p * r + 0.041666666666666664
        p = p * r + 0.16666666666666666
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        p = p if v >= -708.0 else 0.0
        x[i] = p if v <= 709.0 else np.inf
        bits[i] = (np.int64(k) + 1023) << 52
    two_k = bits.view(np.float64)
    for i in range(n):
        x[i] *= two_k[i]


@njit(cache=True)
def _exp_inplace_f32(x, bits):
    """float32 twin of _exp_inplace (16 lanes per AVX-512 vector): Taylor degree 7 (error < 6e-9, below float32's
    rounding), 2^k from the float32 exponent field k + 127, 0 below x = -87, inf above 88. bits: int32 scratch."""
    n = x.size
    for i in range(n):
        v = x[i]
        vc = v if v > _LO_F else _LO_F
        vc = vc if vc < _HI_F else _HI_F
        k = np.floor(vc * _INV_LN2_F + _HALF_F)
        r = (vc - k * _LN2_HI_F) - k * _LN2_LO_F
        p = _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = p * r + _C1
        p = p * r + _C0
        p = p if v >= _LO_F else _ZERO_F
        x[i] = p if v <= _HI_F else _INF_F
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    two_k = bits.view(np.float32)
    for i in range(n):
        x[i] *= two_k[i]


@njit(cache=True)
def _exp_buffer(x, bits64, bits32):
    """exp in place in the buffer's own precision (float64: _exp_inplace, float32: _exp_inplace_f32)."""
    if x.itemsize == 8:
        _exp_inplace(x, bits64[:x.size])
    else:
        _exp_inplace_f32(x, bits32[:x.size])
