"""Norms of rows whose squares overflow: "scale before squaring" for core.layers' layer and RMS norm.

A finite row such as [1e200, -1e200, 0, 1] (float64) or [1e20, ...] (float32) has an infinite
variance in floating point, and the textbook formula returns x_hat = 0 for it. layer_norm_forward
and rms_norm_forward compute every row with the formula, then redo only the rows whose second
moment overflowed with the helpers below, on x 2^-e (a power of two, so nothing is rounded): the
same formula, exact in real arithmetic, and ordinary rows keep their bits. Derivation:
derivations/core.md#layer-norm ("Rows whose squares overflow").
"""

from __future__ import annotations

import numpy as np

__all__ = ["overflowed_rows", "row_exponent", "layer_norm_scaled", "rms_norm_scaled"]


def overflowed_rows(x: np.ndarray, second_moment: np.ndarray):
    """Index of the rows of finite x whose variance (or mean square) overflowed, or None.

    A row such as [1e200, -1e200, 0, 1] (float64) or [1e20, ...] (float32) is finite, but its squares
    are not: those rows (only those) are recomputed by layer_norm_scaled / rms_norm_scaled. Rows
    holding NaN/inf keep the formula's NaN (the non-finite policy, README).
    """
    bad = ~np.isfinite(second_moment[..., 0])                    # (...)
    if not bad.any():
        return None
    bad &= np.all(np.isfinite(x), axis=-1)
    return np.nonzero(bad) if bad.any() else None


def row_exponent(x: np.ndarray) -> np.ndarray:
    """e with max|x_row| = m 2^e, m in [0.5, 1): x * 2^-e has entries below 1 in magnitude (exactly scaled)."""
    return np.frexp(np.max(np.abs(x), axis=-1, keepdims=True))[1]   # (n, 1) int


def layer_norm_scaled(x: np.ndarray, eps: float):
    """x_hat and rstd of rows x (n, d) whose variance overflows, computed on x_s = x 2^-e ("scale
    before squaring"): with s = 2^e, var = s^2 var_s and x_hat = xc_s / sqrt(var_s + eps / s^2), exact
    in real arithmetic; multiplying by a power of two rounds nothing. A constant row gets xc_s = 0
    exactly (x_hat = 0), not the rounding error of its mean over a variance of 0 (eps / s^2 is
    negligible at this scale). rstd = 2^-e / sqrt(var_s + eps_s) is stored unscaled for
    layer_norm_backward."""
    e = row_exponent(x)                                         # (n, 1)
    x_s = np.ldexp(x, -e)                                        # (n, d) |x_s| < 1
    mu_s = np.mean(x_s, axis=-1, keepdims=True)                  # (n, 1)
    flat = np.all(x_s == x_s[:, :1], axis=-1, keepdims=True)     # (n, 1) constant rows
    xc_s = np.where(flat, np.zeros((), x.dtype), x_s - mu_s)     # (n, d)
    var_s = np.mean(xc_s * xc_s, axis=-1, keepdims=True)         # (n, 1) <= 4
    eps_s = np.ldexp(x.dtype.type(eps), -2 * e)                  # (n, 1) underflows to 0: negligible
    den_s = np.sqrt(var_s + eps_s)                               # (n, 1)
    const = var_s == 0                                           # constant row: var = 0, rstd = 1/sqrt(eps)
    safe = np.where(const, np.ones((), x.dtype), den_s)
    x_hat = np.where(const, np.zeros((), x.dtype), xc_s / safe)  # (n, d)
    rstd = np.where(const, x.dtype.type(1.0 / np.sqrt(eps)), np.ldexp(1.0 / safe, -e))   # (n, 1)
    return x_hat, rstd.astype(x.dtype, copy=False)


def rms_norm_scaled(x: np.ndarray, eps: float):
    """x_hat and inv_rms of rows x (n, d) whose mean square overflows, computed on x_s = x 2^-e:
    x_hat = x_s / sqrt(mean(x_s^2) + eps / s^2), inv_rms = 2^-e / sqrt(...) (see layer_norm_scaled).
    mean(x_s^2) >= 1/(4d) > 0 because the largest |x_s| is at least 1/2."""
    e = row_exponent(x)                                         # (n, 1)
    x_s = np.ldexp(x, -e)                                        # (n, d)
    eps_s = np.ldexp(x.dtype.type(eps), -2 * e)                  # (n, 1)
    inv_s = 1.0 / np.sqrt(np.mean(x_s * x_s, axis=-1, keepdims=True) + eps_s)   # (n, 1)
    return x_s * inv_s, np.ldexp(inv_s, -e).astype(x.dtype, copy=False)
