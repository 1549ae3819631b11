"""GLU channel mixer with BitLinear projections (Zhu et al., arXiv 2406.02528, §3.3; Llama-style SwiGLU):

    g_t = x_t (*) W_g,   u_t = x_t (*) W_u,   p_t = silu(g_t) * u_t,   d_t = p_t (*) W_d

with (*) = BitLinear (bitlinear.py). As in the reference code (``HGRNBitMLP``), W_g and W_u are one BitLinear
d -> 2I (one RMSNorm, one per-tensor ternary scale) whose output is split gate first, then up; the paper keeps
the GLU at 8 d^2 parameters with I = 8d/3 (``glu_hidden``).

Backward (derivations/matmulfree.md#glu): dg = dp * u * silu'(g), du = dp * silu(g), then the two BitLinear
backwards (straight-through when quantised).

Glossary (code symbol -> paper)
    x (..., d)            channel-mixer input x_t
    w_gu (d, 2I), n_gu (d,)   [W_g | W_u] and its BitLinear norm weight
    w_d (I, d), n_d (I,)      W_d and its norm weight;  g, u, p (..., I) as in the equations
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import silu_backward, silu_forward
from .bitlinear import RMS_EPS, bitlinear_backward, bitlinear_forward

__all__ = ["glu_hidden", "glu_param_shapes", "glu_init", "GLUCache", "glu_forward", "glu_backward"]


def glu_hidden(d: int, multiple: int = 1) -> int:
    """I = 8d/3 rounded up to ``multiple`` (reference code: 256 at d = 2048; 8 d^2 parameters, 2406.02528 §3.3)."""
    d = validate.positive_int(d, "d")
    multiple = validate.positive_int(multiple, "multiple")
    return -(-(8 * d // 3) // multiple) * multiple


def glu_param_shapes(d: int, hidden: int) -> dict[str, tuple]:
    d, hidden = validate.positive_int(d, "d"), validate.positive_int(hidden, "hidden")
    return {"w_gu": (d, 2 * hidden), "n_gu": (d,), "w_d": (hidden, d), "n_d": (hidden,)}


def glu_init(d: int, hidden: int, rng, std: float = 0.02, dtype=np.float64) -> dict[str, np.ndarray]:
    """Weights N(0, std^2), norm weights 1."""
    rng = validate.rng(rng)
    return {k: (std * rng.standard_normal(s)).astype(dtype) if k.startswith("w_") else np.ones(s, dtype)
            for k, s in glu_param_shapes(d, hidden).items()}


class GLUCache(NamedTuple):
    gu: Any        # BitLinearCache of [g | u] = x (*) W_gu
    silu: Any      # SiluCache of g (..., I)
    u: np.ndarray  # (..., I)
    down: Any      # BitLinearCache of d = p (*) W_d


def glu_forward(x, params, *, quantize: bool = True, eps: float = RMS_EPS):
    """x: (..., d); params: w_gu (d, 2I), n_gu (d,), w_d (I, d), n_d (I,). Returns y (..., d) and a GLUCache."""
    quantize = validate.flag(quantize, "quantize")
    x = validate.float_array(x, "x", min_ndim=1)
    if not isinstance(params, dict) or "w_d" not in params:
        validate.fail("params", "a dict with w_gu, n_gu, w_d, n_d", type(params).__name__)
    w_d = validate.float_array(params["w_d"], "params['w_d']", ndim=2)
    for name, shape in glu_param_shapes(x.shape[-1], w_d.shape[0]).items():
        validate.array(params.get(name), f"params[{name!r}]", shape=shape, dtype=x.dtype)
    hidden = w_d.shape[0]
    gu, gu_cache = bitlinear_forward(x, params["w_gu"], params["n_gu"], quantize=quantize, eps=eps)
    g, u = gu[..., :hidden], gu[..., hidden:]                    # gate first, then up (reference split order)
    sg, silu_cache = silu_forward(g)
    y, down_cache = bitlinear_forward(sg * u, w_d, params["n_d"], quantize=quantize, eps=eps)
    return y, GLUCache(gu_cache, silu_cache, u, down_cache)


def glu_backward(dy, cache: GLUCache):
    """Returns (dx (..., d), grads {w_gu, n_gu, w_d, n_d})."""
    if not isinstance(cache, GLUCache):
        validate.fail("cache", "a GLUCache from glu_forward", type(cache).__name__)
    if cache.silu.x.shape != cache.u.shape:
        validate.fail("cache", "consistent shapes", f"g {cache.silu.x.shape}, u {cache.u.shape}")
    grads = {}
    dp, grads["w_d"], grads["n_d"] = bitlinear_backward(dy, cache.down)      # (..., I)
    sg = cache.silu.x * cache.silu.s
    dg = silu_backward(dp * cache.u, cache.silu)                 # dp * u * silu'(g)
    du = dp * sg
    dx, grads["w_gu"], grads["n_gu"] = bitlinear_backward(np.concatenate([dg, du], axis=-1), cache.gu)
    return dx, grads
