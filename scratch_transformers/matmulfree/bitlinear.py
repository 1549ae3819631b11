"""BitLinear: RMSNorm -> int8 activations -> ternary weights, trained with the straight-through estimator.

The dense layer of the MatMul-free LM (Zhu et al., arXiv 2406.02528, §3.1, trained as in §3.4), with the
quantisers of BitNet b1.58 (arXiv 2402.17764, eqs. 1-3; see ``quant.py``). Forward, for rows x (M, d_in):

    x_bar = RMSNorm(x) * norm_weight                      (own learnable weight, eps = 1e-6 by default)
    x_q   = absmax_int8(x_bar).values                     per token, codes in [-128, 127]
    W_q   = absmean_ternary(W).values                     per tensor, codes in {-1, 0, 1}
    y     = x_q @ W_q                                     = (int8 codes @ ternary codes) * s_x * gamma

Backward (straight-through estimator, §3.4: ``x + (quant(x) - x).detach()`` in the reference code): each
quantiser's Jacobian is taken as the identity and its scale receives no gradient, so with g = dL/dy

    dW      = x_q^T g            (applied to the latent float W, saturated entries included)
    dx_bar  = g W_q^T            (the dequantised ternary weights)
    dx, dnorm_weight = RMSNorm backward of dx_bar.

quantize=False gives the plain float layer y = (RMSNorm(x) * norm_weight) @ W, whose backward is exact (the
STE formula with x_q = x_bar, W_q = W). Derivation: derivations/matmulfree.md#bitlinear.

Glossary (code symbol -> paper)
    w (d_in, d_out)   latent full-precision weight W (NumPy layout, y = x @ w; the paper writes x W)
    norm_weight (d_in,)   RMSNorm gain inside the layer (reference code: BitLinear's own RMSNorm)
    x_bar, x_q, w_q   normalised input, its int8 dequantisation, the dequantised ternary weight

Non-finite input: with quantize=True a NaN/inf in x or w cannot be quantised and is rejected (ValueError);
with quantize=False it propagates as in any float layer.
"""

from __future__ import annotations

from typing import NamedTuple


from ..core import validate
from ..core.layers import (ProjectionCache, RMSNormCache, project_backward, project_forward, rms_norm_backward,
                           rms_norm_forward)
from .quant import absmax_int8, absmean_ternary

__all__ = ["BitLinearCache", "bitlinear_forward", "bitlinear_backward", "RMS_EPS"]

RMS_EPS = 1e-6   # the reference model's rms_norm_eps


class BitLinearCache(NamedTuple):
    norm: RMSNormCache   # x_hat (..., d_in), inv_rms (..., 1), norm_weight (d_in,)
    lin: ProjectionCache  # inner LinearCache: x_q (..., d_in), w_q (d_in, d_out), the quantised operands
    quantize: bool


def bitlinear_forward(x, w, norm_weight, *, quantize: bool = True, eps: float = RMS_EPS):
    """y = absmax_int8(RMSNorm(x) * norm_weight) @ absmean_ternary(w)   (2406.02528 §3.1).

    x: (..., d_in), w: (d_in, d_out), norm_weight: (d_in,), one float dtype. quantize=False: the float layer.
    Returns y (..., d_out) and a BitLinearCache.
    """
    quantize = validate.flag(quantize, "quantize")
    x = validate.float_array(x, "x", min_ndim=1, finite=quantize)
    w = validate.array(w, "w", shape=(x.shape[-1], None), dtype=x.dtype, finite=quantize)
    norm_weight = validate.array(norm_weight, "norm_weight", shape=(x.shape[-1],), dtype=x.dtype, finite=quantize)
    x_bar, norm_cache = rms_norm_forward(x, norm_weight, eps)        # (..., d_in)
    if quantize:
        x_q = absmax_int8(x_bar).values                             # (..., d_in) int8 codes * s_x
        w_q = absmean_ternary(w).values                             # (d_in, d_out) ternary codes * gamma
    else:
        x_q, w_q = x_bar, w
    y, lin_cache = project_forward(x_q, {"w": w_q}, "w")            # (..., d_out) the plain projection x_q @ w_q
    return y, BitLinearCache(norm_cache, lin_cache, quantize)


def bitlinear_backward(dy, cache: BitLinearCache):
    """Straight-through backward: (dx (..., d_in), dw (d_in, d_out), dnorm_weight (d_in,)).

    dw = x_q^T dy, dx_bar = dy w_q^T, then the RMSNorm backward; derivations/matmulfree.md#bitlinear.
    """
    if not isinstance(cache, BitLinearCache):
        validate.fail("cache", "a BitLinearCache from bitlinear_forward", type(cache).__name__)
    if not isinstance(cache.lin, ProjectionCache):
        validate.fail("cache", "a BitLinearCache whose lin is a ProjectionCache", type(cache.lin).__name__)
    x_q, w_q = cache.lin.inner.x, cache.lin.inner.w
    if cache.norm.x_hat.shape != x_q.shape or w_q.shape[0] != x_q.shape[-1]:
        validate.fail("cache", "consistent shapes", f"x_hat {cache.norm.x_hat.shape}, x_q {x_q.shape}, w_q {w_q.shape}")
    dy = validate.float_array(dy, "dy", shape=x_q.shape[:-1] + (w_q.shape[1],))
    dx_bar, grads = project_backward(dy, cache.lin)                 # STE: d x_bar = d x_q, d W = d W_q
    dw = grads["w"]
    dx, dnorm_weight = rms_norm_backward(dx_bar, cache.norm)
    return dx, dw, dnorm_weight
