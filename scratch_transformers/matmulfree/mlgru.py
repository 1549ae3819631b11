"""MLGRU: the MatMul-free linear GRU token mixer (Zhu et al., arXiv 2406.02528, §3.3), every projection a BitLinear.

Paper form (``variant="paper"``, the default), per time step t, rows x_t (B, d):

    f_t  = sigmoid(x_t (*) W_f + b_f)                  forget gate
    c_t  = silu(x_t (*) W_c + b_c)                     candidate
    h_t  = f_t * h_{t-1} + (1 - f_t) * c_t             hidden state (the GRU's leaky update, 2406.02528 Eq. 4)
    g_t  = sigmoid(x_t (*) W_g + b_g)                  output gate
    o'_t = g_t * h_t
    o_t  = o'_t (*) W_o + b_o                          (*) = BitLinear (bitlinear.py)

No hidden-to-hidden weights: the gates depend on x only, so the three input projections run over all T at once
and only the elementwise recurrence h_t = f_t h_{t-1} + (1 - f_t) c_t runs over time.

Official-code form (``variant="official"``: ridgerchu/matmulfreellm ``HGRNBitAttention``), documented option:
no biases; an optional forget-gate lower bound l (d,) in [0, 1) as in HGRN (arXiv 2311.04823; the model passes
one per layer, increasing with depth): f_t = l + (1 - l) sigmoid(a_f); the input term is silu(a_c) * (1 - f_t) (the
same recurrence); and the output gate is RMSNorm(a_g) * gate_norm * silu(h_t) instead of sigmoid(a_g) * h_t.

Backward through time (derivations/matmulfree.md#mlgru), with dh_t the gradient reaching h_t from o'_t only:

    lam_T = dh_T (+ the gradient of the returned final state),  lam_t = dh_t + f_{t+1} * lam_{t+1}
    df_t = lam_t * (h_{t-1} - c_t),   dc_t = lam_t * (1 - f_t),   dh_0 = f_1 * lam_1  (in 1-based time)

Glossary (code symbol -> paper)
    x (B, T, d)       token-mixer input x_t;  d: model width = state width (2406.02528: "hidden state d, not 2d")
    a_f, a_c, a_g     pre-activations x (*) W + b;  f, c, g: the gates / candidate;  h (B, T, d): states h_1..h_T
    h0 (B, d)         initial state h_0 (zeros by default);  lower_bound (d,): HGRN's l_k (official variant)
    params            w_f, w_c, w_g, w_o (d, d) latent weights; n_f, n_c, n_g, n_o (d,) BitLinear norm weights;
                      paper: b_f, b_c, b_g, b_o (d,);  official: gate_norm (d,)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import sigmoid, silu_backward, silu_forward
from ..core.layers import rms_norm_backward, rms_norm_forward
from .bitlinear import RMS_EPS, bitlinear_backward, bitlinear_forward

__all__ = ["VARIANTS", "mlgru_param_shapes", "mlgru_init", "MLGRUCache", "mlgru_forward", "mlgru_backward",
           "mlgru_step"]

VARIANTS = ("paper", "official")
_PROJ = ("f", "c", "g")   # the three input projections


def mlgru_param_shapes(d: int, variant: str = "paper") -> dict[str, tuple]:
    """Names and shapes of one MLGRU's parameters."""
    d = validate.positive_int(d, "d")
    variant = validate.option(variant, "variant", VARIANTS)
    shapes = {f"w_{k}": (d, d) for k in _PROJ + ("o",)}
    shapes.update({f"n_{k}": (d,) for k in _PROJ + ("o",)})
    if variant == "paper":
        shapes.update({f"b_{k}": (d,) for k in _PROJ + ("o",)})
    else:
        shapes["gate_norm"] = (d,)
    return shapes


def mlgru_init(d: int, rng, variant: str = "paper", std: float = 0.02, dtype=np.float64) -> dict[str, np.ndarray]:
    """Weights N(0, std^2) (reference init std 0.02), norm weights 1, biases 0."""
    rng = validate.rng(rng)
    params = {}
    for name, shape in mlgru_param_shapes(d, variant).items():
        if name.startswith("w_"):
            params[name] = (std * rng.standard_normal(shape)).astype(dtype)
        elif name.startswith("b_"):
            params[name] = np.zeros(shape, dtype)
        else:
            params[name] = np.ones(shape, dtype)
    return params


def _check(params, d, dtype, variant, lower_bound):
    variant = validate.option(variant, "variant", VARIANTS)
    if not isinstance(params, dict):
        validate.fail("params", "a dict of arrays", type(params).__name__)
    for name, shape in mlgru_param_shapes(d, variant).items():
        if name not in params:
            validate.fail("params", f"a key {name!r} ({variant} variant)", sorted(params))
        validate.array(params[name], f"params[{name!r}]", shape=shape, dtype=dtype)
    if lower_bound is not None:
        if variant != "official":
            validate.fail("lower_bound", "None for the paper variant (HGRN's bound is the official code's)", "an array")
        lower_bound = validate.array(lower_bound, "lower_bound", shape=(d,), dtype=dtype)
        if not np.all((lower_bound >= 0) & (lower_bound < 1)):   # NaN fails this too: the gate would be undefined
            validate.fail("lower_bound", "values in [0, 1)", f"range [{np.min(lower_bound)}, {np.max(lower_bound)}]")
    return variant, lower_bound


def _gates(a_f, a_c, lower_bound):
    """f (forget gate), c (candidate), and what their backward needs."""
    s_f = sigmoid(a_f)                                           # sigmoid(a_f)
    f = s_f if lower_bound is None else lower_bound + (1 - lower_bound) * s_f
    c, silu_cache = silu_forward(a_c)
    return f, c, s_f, silu_cache


class MLGRUCache(NamedTuple):
    variant: str
    proj: dict          # "f", "c", "g", "o" -> BitLinearCache
    s_f: np.ndarray     # (B, T, d) sigmoid(a_f)
    f: np.ndarray       # (B, T, d) forget gate
    c_cache: Any        # SiluCache of a_c: c = silu(a_c)
    h: np.ndarray       # (B, T, d) states h_1 .. h_T
    h0: np.ndarray      # (B, d) initial state
    has_h0: bool
    gate: Any           # paper: g (B, T, d);  official: (RMSNormCache of a_g, SiluCache of h)
    lower_bound: np.ndarray | None   # (d,)
    has_bias: bool


def _scan(f, c, h0):
    """h_t = f_t * h_{t-1} + (1 - f_t) * c_t over t (the only sequential part). f, c: (B, T, d); h0: (B, d)."""
    h = np.empty_like(f)
    prev = h0
    for t in range(f.shape[1]):
        prev = f[:, t] * prev + (1 - f[:, t]) * c[:, t]              # (B, d)
        h[:, t] = prev
    return h


def mlgru_forward(x, params, *, h0=None, variant: str = "paper", lower_bound=None, quantize: bool = True,
                  eps: float = RMS_EPS):
    """MLGRU over a whole sequence (2406.02528 §3.3).

    x: (B, T, d); params: see ``mlgru_param_shapes``; h0: (B, d) or None (zeros); lower_bound: (d,) or None
    (official variant only). Returns o (B, T, d) and an MLGRUCache (``cache.h[:, -1]`` is the final state).
    """
    quantize = validate.flag(quantize, "quantize")
    x = validate.float_array(x, "x", ndim=3)
    B, T, d = x.shape
    variant, lower_bound = _check(params, d, x.dtype, variant, lower_bound)
    if h0 is not None:
        h0 = validate.array(h0, "h0", shape=(B, d), dtype=x.dtype)
    h0_arr = np.zeros((B, d), x.dtype) if h0 is None else h0
    paper = variant == "paper"
    proj, a = {}, {}
    for k in _PROJ:                                              # three BitLinears of x, all T at once
        a[k], proj[k] = bitlinear_forward(x, params[f"w_{k}"], params[f"n_{k}"], quantize=quantize, eps=eps)
        if paper:
            a[k] = a[k] + params[f"b_{k}"]                       # (B, T, d)
    f, c, s_f, c_cache = _gates(a["f"], a["c"], lower_bound)
    h = _scan(f, c, h0_arr)                                      # (B, T, d)
    if paper:
        g = sigmoid(a["g"])                                      # (B, T, d) output gate
        o_prime, gate = g * h, g
    else:
        q, q_cache = rms_norm_forward(a["g"], params["gate_norm"], eps)   # RMSNorm(a_g) * gate_norm
        sh, sh_cache = silu_forward(h)
        o_prime, gate = q * sh, (q_cache, sh_cache, q, sh)
    o, proj["o"] = bitlinear_forward(o_prime, params["w_o"], params["n_o"], quantize=quantize, eps=eps)
    if paper:
        o = o + params["b_o"]
    return o, MLGRUCache(variant, proj, s_f, f, c_cache, h, h0_arr, h0 is not None, gate, lower_bound, paper)


def mlgru_backward(do, cache: MLGRUCache, dh_last=None):
    """Backward through time of mlgru_forward; derivations/matmulfree.md#mlgru.

    do: (B, T, d); dh_last: (B, d) gradient of the final state ``cache.h[:, -1]`` or None.
    Returns (dx (B, T, d), grads dict of every parameter [+ "lower_bound"], dh0 (B, d) or None when no h0 was given).
    """
    if not isinstance(cache, MLGRUCache):
        validate.fail("cache", "an MLGRUCache from mlgru_forward", type(cache).__name__)
    h, f = cache.h, cache.f
    c = cache.c_cache.x * cache.c_cache.s                        # (B, T, d) c = silu(a_c)
    if not (f.shape == h.shape == c.shape == cache.s_f.shape and cache.h0.shape == (h.shape[0], h.shape[2])):
        validate.fail("cache", "consistent shapes", f"h {h.shape}, f {f.shape}, h0 {cache.h0.shape}")
    do = validate.float_array(do, "do", shape=h.shape)
    B, T, d = h.shape
    if dh_last is not None:
        dh_last = validate.array(dh_last, "dh_last", shape=(B, d), dtype=h.dtype)
    grads = {}
    do_prime, grads["w_o"], grads["n_o"] = bitlinear_backward(do, cache.proj["o"])
    da = {}
    if cache.variant == "paper":
        grads["b_o"] = do.sum(axis=(0, 1))
        g = cache.gate
        dh_out = do_prime * g                                    # (B, T, d) gradient of h_t through o'_t only
        da["g"] = do_prime * h * g * (1 - g)                     # sigmoid'
    else:
        q_cache, sh_cache, q, sh = cache.gate
        dh_out = silu_backward(do_prime * q, sh_cache)
        da["g"], grads["gate_norm"] = rms_norm_backward(do_prime * sh, q_cache)
    # reverse recurrence: lam_t = dh_t + f_{t+1} lam_{t+1}
    h_prev = np.concatenate([cache.h0[:, None], h[:, :-1]], axis=1)   # (B, T, d) h_{t-1}
    lam = np.empty_like(h)
    carry = np.zeros((B, d), h.dtype) if dh_last is None else dh_last
    for t in range(T - 1, -1, -1):
        carry = dh_out[:, t] + carry                             # lam_t
        lam[:, t] = carry
        carry = f[:, t] * carry                                  # f_t lam_t: flows to h_{t-1}
    dh0 = carry if cache.has_h0 else None
    df = lam * (h_prev - c)                                      # (B, T, d)
    da["c"] = silu_backward(lam * (1 - f), cache.c_cache)
    s_f = cache.s_f
    if cache.lower_bound is None:
        da["f"] = df * s_f * (1 - s_f)
    else:
        lb = cache.lower_bound
        da["f"] = df * (1 - lb) * s_f * (1 - s_f)
        grads["lower_bound"] = np.sum(df * (1 - s_f), axis=(0, 1))
    dx = np.zeros_like(h)
    for k in _PROJ:
        if cache.has_bias:
            grads[f"b_{k}"] = da[k].sum(axis=(0, 1))
        dxk, grads[f"w_{k}"], grads[f"n_{k}"] = bitlinear_backward(da[k], cache.proj[k])
        dx += dxk
    return dx, grads, dh0


def mlgru_step(x_t, h_prev, params, *, variant: str = "paper", lower_bound=None, quantize: bool = True,
               eps: float = RMS_EPS, linear=None):
    """One decoding step: (o_t (B, d), h_t (B, d)) from x_t (B, d) and h_{t-1} (B, d); same equations as
    mlgru_forward, whose output at step t it equals (per-token quantisation makes each step independent).

    linear: optional callable ``linear(x, name) -> x (*) W_name`` replacing the BitLinear of weight ``name``
    (e.g. the packed add/subtract kernel at inference, see model.py); default bitlinear_forward on params.
    """
    quantize = validate.flag(quantize, "quantize")
    x_t = validate.float_array(x_t, "x_t", ndim=2)
    B, d = x_t.shape
    variant, lower_bound = _check(params, d, x_t.dtype, variant, lower_bound)
    h_prev = validate.array(h_prev, "h_prev", shape=(B, d), dtype=x_t.dtype)
    if linear is None:
        def linear(z, name):
            return bitlinear_forward(z, params[f"w_{name}"], params[f"n_{name}"], quantize=quantize, eps=eps)[0]
    paper = variant == "paper"
    a = {k: linear(x_t, k) + (params[f"b_{k}"] if paper else 0) for k in _PROJ}
    f, c, _, _ = _gates(a["f"], a["c"], lower_bound)
    h_t = f * h_prev + (1 - f) * c
    if paper:
        o_prime = sigmoid(a["g"]) * h_t
    else:
        o_prime = rms_norm_forward(a["g"], params["gate_norm"], eps)[0] * silu_forward(h_t)[0]
    o_t = linear(o_prime, "o") + (params["b_o"] if paper else 0)
    return o_t, h_t
