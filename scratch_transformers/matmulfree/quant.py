"""BitNet b1.58 quantisers: absmean ternary weights and per-token absmax int8 activations.

Ma et al., *The Era of 1-bit LLMs* (arXiv 2402.17764), eqs. (1)-(3), as used by the MatMul-free LM
(Zhu et al., arXiv 2406.02528, §3.1):

    W~ = RoundClip(W / (gamma + eps), -1, 1),   RoundClip(x, a, b) = max(a, min(b, round(x))),
    gamma = mean_ij |W_ij|                                                     (2402.17764, eqs. 1-3)

    x~ = Clip(round(x * Q_b / eta), -Q_b, Q_b - 1),   eta = max_j |x_j| per token, Q_b = 128
                                                       (BitNet 2310.11453 absmax, per token in b1.58)

Glossary (code symbol -> paper symbol)
    codes      W~ in {-1, 0, 1} (int8) / x~ in [-128, 127] (int8)
    scale      the dequantisation multiplier: gamma for weights, eta / 127 for activations, so that
               values = codes * scale approximates the input
    floor      1e-5: the official code (ridgerchu/matmulfreellm, mmfreelm/ops/fusedbitnet.py) floors the
               *denominator* max(mean|W|, 1e-5) (resp. max(max|x|, 1e-5)) instead of the paper's gamma + eps.
               We follow the code: an all-zero matrix or token then gives codes 0 and values 0, never 0/0 = NaN,
               and a non-zero matrix is quantised with exactly its gamma (no eps bias).

Rounding: ``np.rint``, round half to even, as PyTorch's ``Tensor.round`` in the reference BitLinear (the fused
Triton kernel rounds half away from zero; only exact .5 ties differ). The activation scale maps max|x| to 127,
so the code -128 is reached only when the caller passes a fixed clipping range ``max_abs`` smaller than the
data (static calibration); the clip to [-128, 127] keeps the asymmetric int8 end as the reference does.

Non-finite input: quantisation codes cannot carry NaN, so NaN/inf input is rejected (ValueError naming the argument).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate

__all__ = ["Quantized", "absmean_ternary", "absmax_int8", "SCALE_FLOOR", "INT8_MAX"]

SCALE_FLOOR = 1e-5   # floor of gamma = mean|W| and of eta = max|x| (official code)
INT8_MAX = 127       # Q_b - 1: max|x| is mapped to this code


class Quantized(NamedTuple):
    codes: np.ndarray   # int8, same shape as the input: {-1,0,1} (weights) or [-128,127] (activations)
    scale: np.ndarray   # float, () for weights (gamma), (..., 1) per token for activations (eta / 127)
    values: np.ndarray  # float, codes * scale: the dequantised input, same shape and dtype as the input


def absmean_ternary(w, floor: float = SCALE_FLOOR) -> Quantized:
    """Ternary code of a weight tensor with one per-tensor scale (2402.17764, eqs. 1-3).

    w: any shape, float32/float64, finite. gamma = max(mean|w|, floor);
    codes = clip(rint(w / gamma), -1, 1) (int8); values = codes * gamma (dtype of w).
    Returns Quantized(codes, scale=gamma as a 0-d array, values).
    """
    w = validate.float_array(w, "w", finite=True)
    floor = validate.positive(floor, "floor")
    if w.size == 0:
        validate.fail("w", "a non-empty array", f"shape {w.shape}")
    gamma = np.asarray(max(np.mean(np.abs(w)), floor), dtype=w.dtype)   # ()  per-tensor absmean
    codes = np.clip(np.rint(w / gamma), -1, 1).astype(np.int8)          # RoundClip(W / gamma, -1, 1)
    return Quantized(codes, gamma, codes.astype(w.dtype) * gamma)


def absmax_int8(x, floor: float = SCALE_FLOOR, max_abs=None) -> Quantized:
    """Per-token absmax int8 code of activations (BitNet absmax, per token as the b1.58 text 2402.17764 states).

    x: (..., d) float32/float64, finite; the token axis is the last one.
    eta = max(max_j |x_j|, floor) per token, or ``max_abs`` (a positive number or an array broadcastable to
    (..., 1): a fixed clipping range) when given; c = 127 / eta;
    codes = clip(rint(x * c), -128, 127) (int8); scale = eta / 127 (..., 1); values = codes * scale.
    """
    x = validate.float_array(x, "x", min_ndim=1, finite=True)
    floor = validate.positive(floor, "floor")
    if max_abs is None:
        eta = np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), floor)  # (..., 1)
    else:
        max_abs = validate.float_array(np.asarray(max_abs, dtype=x.dtype), "max_abs", finite=True)
        validate.broadcastable(max_abs, "max_abs", x.shape[:-1] + (1,))
        if np.any(max_abs <= 0):
            validate.fail("max_abs", "positive values", f"min {max_abs.min()}")
        eta = np.broadcast_to(np.maximum(max_abs, floor), x.shape[:-1] + (1,)).astype(x.dtype)
    c = INT8_MAX / eta                                                     # (..., 1) the code's "scale"
    codes = np.clip(np.rint(x * c), -128, 127).astype(np.int8)            # (..., d)
    scale = (eta / INT8_MAX).astype(x.dtype)                               # (..., 1)
    return Quantized(codes, scale, codes.astype(x.dtype) * scale)
