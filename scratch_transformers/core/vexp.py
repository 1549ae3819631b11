"""A vectorisable exponential (and the softplus built on it) for the numba kernels (FlashAttention's softmax tiles,
Mamba's selective scan).

numba compiles ``np.exp`` on a scalar to a libm call per element (no SVML here), the one operation of those loops
that LLVM cannot vectorise. These loops compute the textbook range-reduced exponential instead, in the buffer's
own precision: exp(x) = 2^k exp(r) with k = round(x / ln 2) and r = x - k ln 2 (Cody-Waite: ln 2 split into a
high part, exact in k * ln2_hi, and a low part), |r| <= ln(2)/2, exp(r) by its Taylor polynomial (degree 13 in
float64, 7 in float32: truncation below half an ulp), and 2^k written into the IEEE-754 exponent field. Measured
against NumPy: <= 2 ulp in float64, <= 3 float32 ulps (tests/core/test_vexp.py). Below x = -708 (float32: -87),
-inf included, the result is 0 (the true value is subnormal or zero); above 709 (88) it is inf; NaN stays NaN
(as np.exp: a NaN score must not turn into a finite weight). ``softplus_from_exp`` is the softplus of the
Mamba scan's step size, log1p by a series in the same vectorisable style.

Usage inside a kernel: ``exp_buffer(x, bits64, bits32)`` with int64 / int32 scratch of at least x.size entries
(the one of the other precision may be empty). These are kernel building blocks, called from numba loops: they do
not validate their arguments (a check per call would cost more than the work); the public functions whose
kernels call them do.
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
_TWO_F = np.float32(2.0)                # float32 constants of softplus_from_exp's series
_S1, _S2, _S3, _S4 = np.float32(1.0 / 3), np.float32(1.0 / 5), np.float32(1.0 / 7), np.float32(1.0 / 9)
_S5, _S6, _S7 = np.float32(1.0 / 11), np.float32(1.0 / 13), np.float32(1.0 / 15)


@njit(cache=True)
def exp_inplace(x, bits):
    """x <- exp(x) for a 1-D float64 buffer, in a loop LLVM can vectorise (a libm call per element cannot be).

    exp(x) = 2^k exp(r) with k = round(x / ln 2), r = x - k ln 2, |r| <= ln(2)/2; exp(r) by its Taylor polynomial
    of degree 13 (relative error < 3e-16); 2^k is built from its IEEE-754 bits (exponent field k + 1023).
    exp(x) = 0 below x = -708 (where it would be subnormal), inf above 709, NaN for NaN (the clamps and selects
    keep NaN: its k, r and p are NaN, and so is the product; the integer k of a NaN is meaningless and unused).
    bits: int64 scratch of x's size.
    """
    n = x.size
    for i in range(n):
        v = x[i]
        vc = -708.0 if v < -708.0 else v                 # clamp; every select below lets NaN through
        vc = 709.0 if vc > 709.0 else vc
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
        p = 0.0 if v < -708.0 else p
        x[i] = np.inf if v > 709.0 else p
        bits[i] = (np.int64(k) + 1023) << 52
    two_k = bits.view(np.float64)
    for i in range(n):
        x[i] *= two_k[i]


@njit(cache=True)
def exp_inplace_f32(x, bits):
    """float32 twin of exp_inplace (16 lanes per AVX-512 vector): Taylor degree 7 (error < 6e-9, below float32's
    rounding), 2^k from the float32 exponent field k + 127, 0 below x = -87, inf above 88, NaN for NaN.
    bits: int32 scratch."""
    n = x.size
    for i in range(n):
        v = x[i]
        vc = _LO_F if v < _LO_F else v
        vc = _HI_F if vc > _HI_F else vc
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
        p = _ZERO_F if v < _LO_F else p
        x[i] = _INF_F if v > _HI_F else p
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    two_k = bits.view(np.float32)
    for i in range(n):
        x[i] *= two_k[i]


@njit(cache=True)
def exp_buffer(x, bits64, bits32):
    """exp in place in the buffer's own precision (float64: exp_inplace, float32: exp_inplace_f32)."""
    if x.itemsize == 8:
        exp_inplace(x, bits64[:x.size])
    else:
        exp_inplace_f32(x, bits32[:x.size])


@njit(cache=True, error_model="numpy")
def softplus_from_exp(x, e, nd):
    """x[j] <- softplus(x[j]) = max(x, 0) + log1p(e[j]) for j < nd, given e[j] = exp(-|x[j]|) in [0, 1].

    log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...) with s = e / (2 + e) in [0, 1/3]: a vectorisable
    polynomial (a libm log1p per element is not), accurate also for tiny e (no 1 + e is formed). float64: terms
    up to s^32/33 (truncation < 2e-18 relative); float32: up to s^14/15 (< 2e-9). error_model="numpy": no
    Python zero-division check in the loop (2 + e > 0 anyway), which would block vectorisation. NaN in x (hence
    in e) gives NaN.
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
