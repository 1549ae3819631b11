"""Elementwise and row-wise activations, each as a forward/backward pair.

Every op ``f`` comes in three forms:

    y = f(x)                       plain forward, no cache (for use inside other code)
    y, cache = f_forward(x)        forward keeping what the backward needs
    dx = f_backward(dy, cache)     vector-Jacobian product dL/dx given dL/dy

Derivations of every backward: ``derivations/core.md`` (sections named after the ops).

Glossary (code symbol -> derivations/core.md symbol)
    x, y         input / output of the op
    dy, dx       dL/dy, dL/dx (same shape as y / x)
    s            sigmoid(x) = sigma(x)
    phi, Phi     standard normal density / cumulative distribution (GELU, Hendrycks & Gimpel 2016)

Numerics: softmax and log-softmax subtract the row max; rows whose entries are all ``-inf``
(fully masked) give softmax 0 and log-softmax -inf, never NaN. sigmoid and softplus are written so
that exp is only ever taken of a non-positive number, so x = +-1e4 is fine in both dtypes.
Infinite inputs give the function's limit where it has one (softmax of a row with one +inf entry is
that entry's one-hot; silu(-inf) = gelu(-inf) = 0, and the derivatives' limits 0 and 1), and NaN
where it has none (two +inf entries in a softmax row) or where the input is NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import validate

__all__ = [
    "softmax", "softmax_forward", "softmax_backward",
    "log_softmax", "log_softmax_forward", "log_softmax_backward",
    "sigmoid", "sigmoid_forward", "sigmoid_backward",
    "silu", "silu_forward", "silu_backward",
    "gelu", "gelu_forward", "gelu_backward",
    "softplus", "softplus_forward", "softplus_backward",
    "erf", "erfc",
]


def _axis(axis, x: np.ndarray) -> int:
    axis = validate.integer(axis, "axis", low=-x.ndim, high=x.ndim - 1)
    return axis % x.ndim


# --------------------------------------------------------------------------------------------
# softmax / log-softmax
# --------------------------------------------------------------------------------------------


class SoftmaxCache(NamedTuple):
    y: np.ndarray  # (...) softmax output, same shape as x
    axis: int      # the normalised axis


def _row_max(x: np.ndarray, axis: int) -> np.ndarray:
    """Row max with rows that are entirely -inf mapped to 0, so x - m never gives inf - inf."""
    m = np.max(x, axis=axis, keepdims=True)
    return np.where(np.isfinite(m), m, np.zeros((), dtype=x.dtype))


def _plus_inf_rows(x: np.ndarray, axis: int, log: bool):
    """(rows, limit) for the rows holding +inf (and no NaN), or None if there are none.

    As x_i -> +inf alone, softmax(x) -> one-hot(i) and log_softmax(x) -> 0 at i, -inf elsewhere.
    With two or more +inf entries the split between them has no limit (it depends on how they grow):
    those entries are NaN, the finite entries still get their limit 0 (log: -inf).
    """
    rows = np.isposinf(np.max(x, axis=axis, keepdims=True))     # a row with NaN has max NaN: not here
    if not rows.any():
        return None
    hit = np.isposinf(x)
    unique = np.sum(hit, axis=axis, keepdims=True) == 1
    at_hit = np.where(unique, x.dtype.type(0.0 if log else 1.0), x.dtype.type(np.nan))
    return rows, np.where(hit, at_hit, x.dtype.type(-np.inf if log else 0.0))


def _finite_limit(x: np.ndarray, y: np.ndarray, at_minus_inf=None, at_plus_inf=None) -> np.ndarray:
    """y with its limit substituted where x = -inf / +inf (the formula's inf * 0 there is NaN)."""
    if at_minus_inf is not None:
        y = np.where(np.isneginf(x), x.dtype.type(at_minus_inf), y)
    if at_plus_inf is not None:
        y = np.where(np.isposinf(x), x.dtype.type(at_plus_inf), y)
    return y


def softmax(x, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``: y_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j.

    x: (...) float32/float64, entries may be -inf (masked). Returns y with x's shape and dtype;
    rows that are entirely -inf give all zeros; a row with one +inf entry gives its one-hot (the
    limit), with several +inf entries NaN on those (no limit); a NaN makes its row NaN.
    """
    x = validate.float_array(x, "x", min_ndim=1)
    axis = _axis(axis, x)
    inf_rows = _plus_inf_rows(x, axis, log=False)
    if inf_rows is not None:
        x = np.where(inf_rows[0], np.zeros((), dtype=x.dtype), x)   # computed below, then replaced
    e = np.exp(x - _row_max(x, axis))                        # (...) in (0, 1], 0 where x = -inf
    z = np.sum(e, axis=axis, keepdims=True)                  # (..., 1, ...) >= 1 unless fully masked
    y = e / np.where(z == 0, np.ones((), dtype=x.dtype), z)  # z = 0: fully masked; z = NaN stays NaN
    return y if inf_rows is None else np.where(inf_rows[0], inf_rows[1], y)


def softmax_forward(x, axis: int = -1):
    """Softmax with cache. x: (...). Returns y (...), SoftmaxCache."""
    x = validate.float_array(x, "x", min_ndim=1)
    axis = _axis(axis, x)
    y = softmax(x, axis)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dy, cache: SoftmaxCache) -> np.ndarray:
    """dx = y * (dy - sum(dy * y)) along the axis (Jacobian diag(y) - y y^T); core.md#softmax."""
    validate.cache(cache, SoftmaxCache, "softmax_forward")
    y, axis = cache
    dy = validate.float_array(dy, "dy", shape=y.shape)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


class LogSoftmaxCache(NamedTuple):
    p: np.ndarray  # (...) softmax(x) = exp(log_softmax(x)), same shape as x
    axis: int


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """log softmax along ``axis``: y_i = x_i - m - log sum_j exp(x_j - m).

    x: (...). Returns y with x's shape and dtype; fully -inf rows give -inf (not NaN); rows with
    +inf entries give softmax's limit in log form (see softmax).
    """
    x = validate.float_array(x, "x", min_ndim=1)
    axis = _axis(axis, x)
    inf_rows = _plus_inf_rows(x, axis, log=True)
    if inf_rows is not None:
        x = np.where(inf_rows[0], np.zeros((), dtype=x.dtype), x)   # computed below, then replaced
    shifted = x - _row_max(x, axis)                          # (...) <= 0
    z = np.sum(np.exp(shifted), axis=axis, keepdims=True)    # (..., 1, ...)
    # fully masked rows: z = 0; use log 1 so the row stays -inf - 0 = -inf (no inf - inf); NaN stays NaN
    y = shifted - np.log(np.where(z == 0, np.ones((), dtype=x.dtype), z))
    return y if inf_rows is None else np.where(inf_rows[0], inf_rows[1], y)


def log_softmax_forward(x, axis: int = -1):
    """log-softmax with cache. x: (...). Returns y (...), LogSoftmaxCache."""
    x = validate.float_array(x, "x", min_ndim=1)
    axis = _axis(axis, x)
    y = log_softmax(x, axis)
    return y, LogSoftmaxCache(np.exp(y), axis)


def log_softmax_backward(dy, cache: LogSoftmaxCache) -> np.ndarray:
    """dx = dy - softmax(x) * sum(dy) along the axis; core.md#log-softmax."""
    validate.cache(cache, LogSoftmaxCache, "log_softmax_forward")
    p, axis = cache
    dy = validate.float_array(dy, "dy", shape=p.shape)
    return dy - p * np.sum(dy, axis=axis, keepdims=True)


# --------------------------------------------------------------------------------------------
# sigmoid / silu / softplus
# --------------------------------------------------------------------------------------------


class SigmoidCache(NamedTuple):
    y: np.ndarray  # (...) sigmoid(x)


def sigmoid(x) -> np.ndarray:
    """sigma(x) = 1 / (1 + exp(-x)), evaluated as e/(1+e) with e = exp(-|x|) <= 1 for x < 0.

    x: (...). Returns sigma(x), same shape and dtype; no overflow for any finite x.
    """
    x = validate.float_array(x, "x")
    e = np.exp(-np.abs(x))                                   # (...) in (0, 1]
    one = np.ones((), dtype=x.dtype)
    return np.where(x >= 0, one / (one + e), e / (one + e))


def sigmoid_forward(x):
    """sigmoid with cache. x: (...). Returns y (...), SigmoidCache."""
    y = sigmoid(x)
    return y, SigmoidCache(y)


def sigmoid_backward(dy, cache: SigmoidCache) -> np.ndarray:
    """dx = dy * y * (1 - y); core.md#activations."""
    validate.cache(cache, SigmoidCache, "sigmoid_forward")
    (y,) = cache
    dy = validate.float_array(dy, "dy", shape=y.shape)
    return dy * y * (1 - y)


class SiluCache(NamedTuple):
    x: np.ndarray  # (...) input
    s: np.ndarray  # (...) sigmoid(x)


def silu(x) -> np.ndarray:
    """SiLU / swish, y = x * sigma(x) (Elfwing et al. 2018; Ramachandran et al. 2017). x: (...).

    silu(-inf) = 0, its limit (the product -inf * 0 would be NaN)."""
    x = validate.float_array(x, "x")
    with np.errstate(invalid="ignore"):
        return _finite_limit(x, x * sigmoid(x), at_minus_inf=0.0)


def silu_forward(x):
    """SiLU with cache. x: (...). Returns y (...), SiluCache."""
    x = validate.float_array(x, "x")
    s = sigmoid(x)
    with np.errstate(invalid="ignore"):
        return _finite_limit(x, x * s, at_minus_inf=0.0), SiluCache(x, s)


def silu_backward(dy, cache: SiluCache) -> np.ndarray:
    """dx = dy * s * (1 + x (1 - s)); core.md#activations. At x = -inf / +inf the limits 0 / 1."""
    validate.cache(cache, SiluCache, "silu_forward")
    x, s = cache
    dy = validate.float_array(dy, "dy", shape=x.shape)
    with np.errstate(invalid="ignore"):
        ds = _finite_limit(x, s * (1 + x * (1 - s)), at_minus_inf=0.0, at_plus_inf=1.0)
    return dy * ds


class SoftplusCache(NamedTuple):
    x: np.ndarray  # (...) input


def softplus(x) -> np.ndarray:
    """softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for any finite x.

    x: (...). At x = 1e4 gives 1e4 (no overflow); at x = -1e4 gives exp(-1e4) = 0 (the exact
    value underflows); for moderate negative x, log1p keeps full relative accuracy (~exp(x)).
    """
    x = validate.float_array(x, "x")
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_forward(x):
    """softplus with cache. x: (...). Returns y (...), SoftplusCache."""
    x = validate.float_array(x, "x")
    return softplus(x), SoftplusCache(x)


def softplus_backward(dy, cache: SoftplusCache) -> np.ndarray:
    """d softplus / dx = sigma(x); core.md#activations."""
    validate.cache(cache, SoftplusCache, "softplus_forward")
    (x,) = cache
    dy = validate.float_array(dy, "dy", shape=x.shape)
    return dy * sigmoid(x)


# --------------------------------------------------------------------------------------------
# erf (no SciPy) and GELU
# --------------------------------------------------------------------------------------------

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SERIES_TERMS = 60     # erf series below |x| = 1.5 (at most; stops once converged): relative error ~1e-15
_CF_TERMS = 100        # erfc continued fraction from |x| = 1.5 up: relative error ~1.3e-15
_SPLIT = 1.5           # erfc(1.5) = 0.034, so 1 - series loses at most ~30x eps below the split


def _erf_series(a: np.ndarray) -> np.ndarray:
    """erf(a) = 2/sqrt(pi) exp(-a^2) sum_n 2^n a^(2n+1) / (1*3*...*(2n+1))  (A&S 7.1.6).

    Every term is positive, so there is no cancellation; used for |a| < 1.5.
    """
    a2 = a * a
    term = a.copy()
    total = a.copy()
    for n in range(1, _SERIES_TERMS):
        term = term * (2.0 * a2) / (2 * n + 1)
        total = total + term
        if n % 8 == 0 and not np.any(term > 1e-17 * total):   # converged everywhere (~25 terms at 1.5)
            break
    return _TWO_OVER_SQRT_PI * np.exp(-a2) * total


def _erfc_cf(a: np.ndarray) -> np.ndarray:
    """erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))  (A&S 7.1.14).

    Evaluated bottom-up with a fixed depth; for a >= 1.5 only.
    """
    t = a.copy()
    for n in range(_CF_TERMS, 0, -1):
        t = a + (0.5 * n) / t
    return np.exp(-a * a) / (math.sqrt(math.pi) * t)


def erfc(x) -> np.ndarray:
    """Complementary error function, vectorised, to ~1e-14 relative accuracy in float64.

    x: (...) float32/float64; computed in float64 and returned in x's dtype. erfc(-x) = 2 - erfc(x).
    """
    x = validate.float_array(x, "x")
    a = np.abs(x.astype(np.float64))
    small = a < _SPLIT
    out = np.empty_like(a)
    out[small] = 1.0 - _erf_series(a[small])
    out[~small] = _erfc_cf(a[~small])
    out = np.where(x < 0, 2.0 - out, out)
    return out.astype(x.dtype, copy=False)


def erf(x) -> np.ndarray:
    """Error function erf(x) = 2/sqrt(pi) int_0^x exp(-t^2) dt, vectorised, no SciPy.

    x: (...). Series (A&S 7.1.6) for |x| < 1.5, continued fraction of erfc (A&S 7.1.14) above;
    agrees with ``math.erf`` to 1e-14 (tests). Returned in x's dtype.
    """
    x = validate.float_array(x, "x")
    a = np.abs(x.astype(np.float64))
    small = a < _SPLIT
    out = np.empty_like(a)
    out[small] = _erf_series(a[small])
    out[~small] = 1.0 - _erfc_cf(a[~small])
    out = np.where(np.signbit(x), -out, out)
    return out.astype(x.dtype, copy=False)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = erfc(-x / sqrt 2) / 2 (accurate in both tails)."""
    return 0.5 * erfc(-x / np.sqrt(np.asarray(2.0, dtype=x.dtype)))


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715
_GELU_CLIP = 30.0   # tanh(u(30)) == +-1 exactly in float64; clipping only keeps x^3 from overflowing


class GeluCache(NamedTuple):
    x: np.ndarray        # (...) input
    approximate: str     # "tanh" or "erf"


def _gelu_tanh_parts(x):
    xc = np.clip(x, -_GELU_CLIP, _GELU_CLIP)
    u = _GELU_C * (xc + _GELU_A * (xc * xc * xc))           # (...) argument of tanh (x*x*x: pow() is ~100x slower)
    return xc, np.tanh(u)


def gelu(x, approximate: str = "tanh") -> np.ndarray:
    """GELU, y = x Phi(x) (Hendrycks & Gimpel 2016, eq. in §2).

    approximate="erf": exact, Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    approximate="tanh": y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's form).
    x: (...). Returns y, same shape and dtype; gelu(-inf) = 0 (the limit).
    """
    x = validate.float_array(x, "x")
    validate.option(approximate, "approximate", ("tanh", "erf"))
    with np.errstate(invalid="ignore"):                      # -inf * 0 at x = -inf: its limit 0 below
        if approximate == "erf":
            return _finite_limit(x, x * _normal_cdf(x), at_minus_inf=0.0)
        _, t = _gelu_tanh_parts(x)
        return _finite_limit(x, 0.5 * x * (1 + t), at_minus_inf=0.0)


def gelu_forward(x, approximate: str = "tanh"):
    """GELU with cache. x: (...). Returns y (...), GeluCache."""
    x = validate.float_array(x, "x")
    validate.option(approximate, "approximate", ("tanh", "erf"))
    return gelu(x, approximate), GeluCache(x, approximate)


def gelu_backward(dy, cache: GeluCache) -> np.ndarray:
    """erf: dy/dx = Phi(x) + x phi(x);  tanh: 0.5(1+t) + 0.5 x (1-t^2) c (1 + 3a x^2).

    See derivations/core.md#activations.
    """
    validate.cache(cache, GeluCache, "gelu_forward")
    x, approximate = cache
    dy = validate.float_array(dy, "dy", shape=x.shape)
    if approximate == "erf":
        phi = np.exp(-0.5 * x * x) / np.asarray(math.sqrt(2 * math.pi), dtype=x.dtype)
        with np.errstate(invalid="ignore"):                  # x phi(x) -> 0 at x = +-inf
            x_phi = _finite_limit(x, x * phi, at_minus_inf=0.0, at_plus_inf=0.0)
        return dy * (_normal_cdf(x) + x_phi)
    xc, t = _gelu_tanh_parts(x)
    du = _GELU_C * (1 + 3 * _GELU_A * xc * xc)
    return dy * (0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * du)
