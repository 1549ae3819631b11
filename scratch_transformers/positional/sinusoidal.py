"""The fixed sinusoidal position encoding (Vaswani et al. 2017, "Attention Is All You Need", §3.5).

    PE[pos, 2i]   = sin(pos / base^(2i/d_model))
    PE[pos, 2i+1] = cos(pos / base^(2i/d_model)),        i = 0..d_model/2 - 1, base = 10000

added once to the (sqrt(d_model)-scaled, §3.4) token embeddings. The wavelengths form a geometric
progression from 2 pi to base * 2 pi. The paper's motivation: for a fixed offset k, PE[pos + k] is
a linear function of PE[pos] (``sinusoidal_shift_matrix``). The table is a constant (no backward);
the gradient of the embedding sum goes to the token embedding only.

Feature order: interleaved (sin, cos) pairs as in the paper; some code concatenates [sin | cos]
instead, a fixed permutation that matters only when loading someone else's weights.
"""

from __future__ import annotations

import numpy as np

from ..core import validate


def _frequencies(d_model: int, base: float) -> np.ndarray:
    """omega_i = base^(-2i/d_model), i = 0..d_model/2-1, float64 (d_model/2,)."""
    return base ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)


def sinusoidal_table(n_positions: int, d_model: int, *, base: float = 10000.0) -> np.ndarray:
    """PE of §3.5 for positions 0..n_positions-1: float64 (n_positions, d_model), d_model even."""
    n_positions = validate.positive_int(n_positions, "n_positions")
    d_model = validate.positive_int(d_model, "d_model")
    if d_model % 2:
        validate.fail("d_model", "an even integer", d_model)
    base = validate.real(base, "base", low=1.0, low_open=True)
    angles = np.multiply.outer(np.arange(n_positions, dtype=np.float64), _frequencies(d_model, base))  # (P, d/2)
    pe = np.empty((n_positions, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)                                # PE[pos, 2i]
    pe[:, 1::2] = np.cos(angles)                                # PE[pos, 2i+1]
    return pe


def sinusoidal_shift_matrix(k: float, d_model: int, *, base: float = 10000.0) -> np.ndarray:
    """M_k with PE[pos + k] = PE[pos] @ M_k.T for every pos (§3.5's "linear function" claim).

    Block diagonal: pair i maps (s, c) -> (s cos k w_i + c sin k w_i, -s sin k w_i + c cos k w_i),
    the angle-addition formulas. float64 (d_model, d_model).
    """
    k = validate.real(k, "k")
    d_model = validate.positive_int(d_model, "d_model")
    if d_model % 2:
        validate.fail("d_model", "an even integer", d_model)
    base = validate.real(base, "base", low=1.0, low_open=True)
    M = np.zeros((d_model, d_model))
    for i, w in enumerate(_frequencies(d_model, base)):
        c, s = np.cos(k * w), np.sin(k * w)
        M[2 * i, 2 * i], M[2 * i, 2 * i + 1] = c, s             # sin(a + b) = sin a cos b + cos a sin b
        M[2 * i + 1, 2 * i], M[2 * i + 1, 2 * i + 1] = -s, c    # cos(a + b) = cos a cos b - sin a sin b
    return M
