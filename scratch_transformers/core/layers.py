"""The layers every model shares, each as a forward/backward pair (cs231n style).

    y, cache = layer_forward(x, params...)
    dx, dparams... = layer_backward(dy, cache)      # pure: returns gradients, accumulates nothing

Derivations: ``derivations/core.md`` (one section per layer, same symbols as the code).

Glossary (code symbol -> derivations/core.md symbol)
    x (..., d_in)      input rows;  "..." is any number of leading (batch, time) axes
    w (d_in, d_out)    weight stored NumPy-style, y = x @ w (papers' column form: y = W^T x)
    mu, rstd           row mean and 1/sqrt(var + eps) (layer norm); inv_rms (RMS norm)
    x_hat              normalised input, (x - mu) * rstd or x * inv_rms
    p                  softmax probabilities (cross-entropy), keep-mask (dropout)
    K                  conv1d kernel width; tap k = K-1 multiplies the current time step
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import validate
from .functional import log_softmax
from .norm_scaling import layer_norm_scaled, overflowed_rows, rms_norm_scaled

__all__ = [
    "linear_forward", "linear_backward",
    "ProjectionCache", "project_forward", "project_backward", "add_grads", "check_linears",
    "embedding_forward", "embedding_backward",
    "layer_norm_forward", "layer_norm_backward",
    "rms_norm_forward", "rms_norm_backward",
    "dropout_forward", "dropout_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "causal_conv1d_forward", "causal_conv1d_backward",
]


def _lead_axes(a: np.ndarray) -> tuple[int, ...]:
    """All axes but the last (the ones a per-feature parameter is broadcast over)."""
    return tuple(range(a.ndim - 1))


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------


class LinearCache(NamedTuple):
    x: np.ndarray     # (..., d_in)
    w: np.ndarray     # (d_in, d_out)
    has_bias: bool


def linear_forward(x, w, b=None):
    """Affine map y = x @ w + b.

    x: (..., d_in), w: (d_in, d_out), b: (d_out,) or None, all of one float dtype.
    Returns y (..., d_out) and a LinearCache.
    """
    x = validate.float_array(x, "x", min_ndim=1)
    w = validate.array(w, "w", shape=(x.shape[-1], None), dtype=x.dtype)
    if b is not None:
        b = validate.array(b, "b", shape=(w.shape[1],), dtype=x.dtype)
    # One 2-D matmul over all rows: numpy's broadcast x @ w on (B, T, d_in) runs B separate
    # (T, d_in) @ (d_in, d_out) products, several times slower for the same arithmetic.
    y = (x.reshape(-1, w.shape[0]) @ w).reshape(x.shape[:-1] + (w.shape[1],))   # (..., d_out)
    if b is not None:
        y = y + b
    return y, LinearCache(x, w, b is not None)


def linear_backward(dy, cache: LinearCache):
    """dx = dy w^T, dw = sum over rows of x^T dy, db = sum over rows of dy; core.md#linear.

    dy: (..., d_out). Returns (dx (..., d_in), dw (d_in, d_out), db (d_out,) or None).
    """
    validate.cache(cache, LinearCache, "linear_forward")
    x, w, has_bias = cache
    dy = validate.float_array(dy, "dy", shape=x.shape[:-1] + (w.shape[1],))
    x2 = x.reshape(-1, w.shape[0])                               # (rows, d_in)
    dy2 = dy.reshape(-1, w.shape[1])                             # (rows, d_out)
    dx = (dy2 @ w.T).reshape(x.shape)                            # (..., d_in)
    dw = x2.T @ dy2                                              # (d_in, d_out)
    db = dy2.sum(axis=0) if has_bias else None                   # (d_out,)
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# projection: a named linear of a params dict, or the override that replaces it (LoRA)
# --------------------------------------------------------------------------------------------


class ProjectionCache(NamedTuple):
    w_name: str            # params key of the weight (d_in, d_out), or of the override in linears
    b_name: str | None     # params key of the bias that was added, None when none was
    override: Any          # linears[w_name] when the projection was overridden, else None
    inner: Any             # LinearCache of the plain linear, or the override's own cache


def check_linears(linears) -> dict | None:
    """``linears`` (projection overrides, see project_forward) must be None or a dict weight name -> object."""
    if linears is not None and not isinstance(linears, dict):
        validate.fail("linears", "None or a dict weight name -> linear object", type(linears).__name__)
    return linears


def project_forward(x, params, w_name, b_name=None, linears=None):
    """y = x @ params[w_name] + params[b_name], or ``linears[w_name].forward(x, params)`` when overridden.

    x: (..., d_in); params: dict name -> array; b_name: None, or a key that may be absent (no bias,
    e.g. a model built with bias=False). linears: None or a dict weight name -> object with
    ``forward(x, params) -> (y, cache)`` (bias included) and ``backward(dy, cache) -> (dx, grads)``
    (LoRA's adapted linear). Returns y (..., d_out) and a ProjectionCache.
    """
    validate.params(params, {})
    check_linears(linears)
    if linears is not None and w_name in linears:
        y, inner = linears[w_name].forward(x, params)
        return y, ProjectionCache(w_name, None, linears[w_name], inner)
    if w_name not in params:
        validate.fail("params", f"a key {w_name!r}", "none")
    b = params.get(b_name) if b_name is not None else None
    y, inner = linear_forward(x, params[w_name], b)
    return y, ProjectionCache(w_name, None if b is None else b_name, None, inner)


def project_backward(dy, cache: ProjectionCache):
    """(dx, grads) of project_forward: grads = {w_name: dw, b_name: db} of the plain linear
    (core.md#linear), or the override's own gradients dict."""
    if not isinstance(cache, ProjectionCache):
        validate.fail("cache", "the ProjectionCache returned by project_forward", type(cache).__name__)
    if cache.override is not None:
        dx, grads = cache.override.backward(dy, cache.inner)
        return dx, dict(grads)
    dx, dw, db = linear_backward(dy, cache.inner)
    grads = {cache.w_name: dw}
    if cache.b_name is not None:
        grads[cache.b_name] = db
    return dx, grads


def add_grads(total: dict, new: dict) -> dict:
    """Accumulate the gradients dict ``new`` into ``total`` (in place; a key in both is summed, as for a
    parameter used twice). Returns ``total``."""
    for k, g in new.items():
        total[k] = total[k] + g if k in total else g
    return total


# --------------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------------


class EmbeddingCache(NamedTuple):
    ids: np.ndarray        # (...) int token ids in [0, V)
    table_shape: tuple     # (V, d)
    dtype: np.dtype


def embedding_forward(ids, table):
    """Row lookup y[...] = table[ids[...]].

    ids: (...) integer array with values in [0, V); table: (V, d) float.
    Returns y (..., d) and an EmbeddingCache.
    """
    table = validate.float_array(table, "table", ndim=2)
    ids = validate.int_array(ids, "ids", low=0, high=table.shape[0])
    return table[ids], EmbeddingCache(ids, table.shape, table.dtype)


def embedding_backward(dy, cache: EmbeddingCache) -> np.ndarray:
    """dtable[v] = sum of dy over every position whose id is v (scatter-add); core.md#embedding.

    dy: (..., d). Returns dtable (V, d).
    """
    validate.cache(cache, EmbeddingCache, "embedding_forward")
    ids, (V, d), dtype = cache
    dy = validate.float_array(dy, "dy", shape=ids.shape + (d,))
    dtable = np.zeros((V, d), dtype=dtype)
    np.add.at(dtable, ids.reshape(-1), dy.reshape(-1, d))        # repeated ids accumulate
    return dtable


# --------------------------------------------------------------------------------------------
# layer norm / RMS norm
# --------------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray   # (..., d) (x - mu) * rstd
    rstd: np.ndarray    # (..., 1) 1 / sqrt(var + eps)
    weight: np.ndarray  # (d,)


def layer_norm_forward(x, weight, bias, eps: float = 1e-5):
    """LayerNorm over the last axis (Ba, Kiros & Hinton 2016, eqs. 3-4 with gain and bias):

        mu = mean(x),  var = mean((x - mu)^2),  x_hat = (x - mu) / sqrt(var + eps),
        y = x_hat * weight + bias.

    x: (..., d), weight: (d,), bias: (d,). Returns y (..., d) and a LayerNormCache.
    """
    x = validate.float_array(x, "x", min_ndim=1)
    weight = validate.array(weight, "weight", shape=(x.shape[-1],), dtype=x.dtype)
    bias = validate.array(bias, "bias", shape=(x.shape[-1],), dtype=x.dtype)
    eps = validate.positive(eps, "eps")
    with np.errstate(over="ignore", invalid="ignore"):          # overflowing rows are redone below
        mu = np.mean(x, axis=-1, keepdims=True)                 # (..., 1)
        xc = x - mu                                              # (..., d)
        var = np.mean(xc * xc, axis=-1, keepdims=True)           # (..., 1) biased variance
        rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))            # (..., 1)
        x_hat = xc * rstd                                        # (..., d)
    redo = overflowed_rows(x, var)
    if redo is not None:
        x_hat[redo], rstd[redo] = layer_norm_scaled(x[redo], eps)
    return x_hat * weight + bias, LayerNormCache(x_hat, rstd, weight)


def layer_norm_backward(dy, cache: LayerNormCache):
    """dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * weight; core.md#layer-norm.

    dy: (..., d). Returns (dx (..., d), dweight (d,), dbias (d,)).
    """
    validate.cache(cache, LayerNormCache, "layer_norm_forward")
    x_hat, rstd, weight = cache
    dy = validate.float_array(dy, "dy", shape=x_hat.shape)
    dweight = np.sum(dy * x_hat, axis=_lead_axes(dy))            # (d,)
    dbias = np.sum(dy, axis=_lead_axes(dy))                      # (d,)
    g = dy * weight                                              # (..., d) dL/dx_hat
    dx = rstd * (g - np.mean(g, axis=-1, keepdims=True)
                 - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    return dx, dweight, dbias


class RMSNormCache(NamedTuple):
    x_hat: np.ndarray    # (..., d) x * inv_rms
    inv_rms: np.ndarray  # (..., 1) 1 / sqrt(mean(x^2) + eps)
    weight: np.ndarray   # (d,)


def rms_norm_forward(x, weight, eps: float = 1e-6):
    """RMSNorm, y = x / sqrt(mean(x^2) + eps) * weight   (Zhang & Sennrich 2019, eq. 4).

    x: (..., d), weight: (d,). Returns y (..., d) and an RMSNormCache.
    """
    x = validate.float_array(x, "x", min_ndim=1)
    weight = validate.array(weight, "weight", shape=(x.shape[-1],), dtype=x.dtype)
    eps = validate.positive(eps, "eps")
    with np.errstate(over="ignore", invalid="ignore"):          # overflowing rows are redone below
        ms = np.mean(x * x, axis=-1, keepdims=True)              # (..., 1)
        inv_rms = 1.0 / np.sqrt(ms + x.dtype.type(eps))          # (..., 1)
        x_hat = x * inv_rms                                      # (..., d)
    redo = overflowed_rows(x, ms)
    if redo is not None:
        x_hat[redo], inv_rms[redo] = rms_norm_scaled(x[redo], eps)
    return x_hat * weight, RMSNormCache(x_hat, inv_rms, weight)


def rms_norm_backward(dy, cache: RMSNormCache):
    """dx = inv_rms * (g - x_hat * mean(g * x_hat)), g = dy * weight; core.md#rms-norm.

    dy: (..., d). Returns (dx (..., d), dweight (d,)).
    """
    validate.cache(cache, RMSNormCache, "rms_norm_forward")
    x_hat, inv_rms, weight = cache
    dy = validate.float_array(dy, "dy", shape=x_hat.shape)
    dweight = np.sum(dy * x_hat, axis=_lead_axes(dy))            # (d,)
    g = dy * weight                                              # (..., d)
    dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    return dx, dweight


# --------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------


class DropoutCache(NamedTuple):
    mask: np.ndarray | None  # (...) bool keep-mask, None when dropout is the identity
    scale: float             # 1 / (1 - p)


def dropout_forward(x, p: float, rng: np.random.Generator | None, training: bool = True):
    """Inverted dropout (Srivastava et al. 2014, §2 with the 1/(1-p) scaling moved to training):

        keep ~ Bernoulli(1 - p) elementwise,  y = x * keep / (1 - p)

    so E[y] = x and inference needs no rescaling. x: (...), p in [0, 1), rng: a Generator
    (may be None when p == 0 or not training: then y is x itself, not a copy, and nothing is drawn).
    Returns y (...) and a DropoutCache holding the keep-mask.
    """
    x = validate.float_array(x, "x")
    p = validate.probability(p, "p")
    validate.flag(training, "training")
    if not training or p == 0.0:
        return x, DropoutCache(None, 1.0)
    rng = validate.rng(rng)
    keep = rng.random(x.shape) >= p                              # (...) True with prob. 1 - p
    scale = 1.0 / (1.0 - p)
    return x * keep * x.dtype.type(scale), DropoutCache(keep, scale)


def dropout_backward(dy, cache: DropoutCache) -> np.ndarray:
    """dx = dy * keep / (1 - p) (the same mask as the forward); identity if the forward was."""
    validate.cache(cache, DropoutCache, "dropout_forward")
    mask, scale = cache
    dy = validate.float_array(dy, "dy")
    if mask is None:
        return dy
    validate.array(dy, "dy", shape=mask.shape)
    return dy * mask * dy.dtype.type(scale)


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------


class CrossEntropyCache(NamedTuple):
    p: np.ndarray        # (..., V) softmax(logits)
    targets: np.ndarray  # (...) int, ignore_index where not scored
    valid: np.ndarray    # (...) bool, targets != ignore_index
    denom: float         # number of scored targets (mean) or 1 (sum); 1 if none are scored


def cross_entropy_forward(logits, targets, ignore_index: int = -100, reduction: str = "mean"):
    """Cross-entropy of integer targets under softmax(logits):

        loss = (1/n) sum_{i scored} -log softmax(logits_i)[t_i]      (reduction="mean")
        loss =       sum_{i scored} -log softmax(logits_i)[t_i]      (reduction="sum")

    with n the number of targets != ignore_index (all ignored: loss 0, gradient 0).
    logits: (..., V) float; targets: (...) int in [0, V) or == ignore_index.
    Returns loss (Python float) and a CrossEntropyCache. Uses a stable log-softmax, so
    logits of 1e4 are fine.
    """
    logits = validate.float_array(logits, "logits", min_ndim=1)
    V = logits.shape[-1]
    ignore_index = validate.integer(ignore_index, "ignore_index")
    reduction = validate.option(reduction, "reduction", ("mean", "sum"))
    targets = validate.int_array(targets, "targets", shape=logits.shape[:-1])
    valid = targets != ignore_index                              # (...)
    bad = valid & ((targets < 0) | (targets >= V))
    if np.any(bad):
        validate.fail("targets", f"values in [0, {V}) or == ignore_index ({ignore_index})",
                      f"{targets[bad].reshape(-1)[0]}")
    logp = log_softmax(logits, axis=-1)                          # (..., V)
    safe_t = np.where(valid, targets, 0)                         # (...) any index for ignored
    nll = -np.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]   # (...)
    n = int(valid.sum())
    denom = float(n) if (reduction == "mean" and n > 0) else 1.0
    loss = float(np.sum(nll, where=valid, dtype=np.float64)) / denom
    return loss, CrossEntropyCache(np.exp(logp), targets, valid, denom)


def cross_entropy_backward(dloss, cache: CrossEntropyCache) -> np.ndarray:
    """dlogits_i = dloss * (softmax(logits_i) - onehot(t_i)) / n for scored i, 0 otherwise.

    core.md#cross-entropy. dloss: scalar. Returns dlogits (..., V).
    """
    validate.cache(cache, CrossEntropyCache, "cross_entropy_forward")
    p, targets, valid, denom = cache
    if np.ndim(dloss) != 0:
        validate.fail("dloss", "a scalar", f"shape {np.shape(dloss)}")
    dloss = validate.real(float(np.asarray(dloss)), "dloss")
    dlogits = p.copy()                                           # (..., V)
    safe_t = np.where(valid, targets, 0)
    np.put_along_axis(dlogits, safe_t[..., None],
                      np.take_along_axis(dlogits, safe_t[..., None], axis=-1) - 1, axis=-1)
    dlogits *= valid[..., None]                                  # ignored rows get no gradient
    dlogits *= p.dtype.type(dloss / denom)
    return dlogits


# --------------------------------------------------------------------------------------------
# causal depthwise conv1d
# --------------------------------------------------------------------------------------------


class CausalConv1dCache(NamedTuple):
    x_pad: np.ndarray   # (B, K-1+L, C) x with K-1 zero steps prepended
    w: np.ndarray       # (C, K)
    has_bias: bool


def causal_conv1d_forward(x, w, b=None):
    """Causal depthwise 1-D convolution over time (the short conv of Mamba, Gu & Dao 2023, Fig. 3):

        y[b, t, c] = b[c] + sum_{k=0}^{K-1} w[c, k] * x[b, t - (K-1) + k, c],   x[b, <0, c] = 0

    i.e. PyTorch ``Conv1d(C, C, K, groups=C, padding=K-1)`` truncated to the first L outputs;
    w[:, K-1] multiplies the current step, so y[:, t] depends only on x[:, :t+1].
    x: (B, L, C), w: (C, K), b: (C,) or None. Returns y (B, L, C) and a CausalConv1dCache.
    """
    x = validate.float_array(x, "x", ndim=3)
    B, L, C = x.shape
    w = validate.array(w, "w", ndim=2, dtype=x.dtype)
    validate.array(w, "w", shape=(C, None))
    if w.shape[1] < 1:
        validate.fail("w", "kernel width K >= 1", w.shape)
    if b is not None:
        b = validate.array(b, "b", shape=(C,), dtype=x.dtype)
    K = w.shape[1]
    x_pad = np.concatenate([np.zeros((B, K - 1, C), dtype=x.dtype), x], axis=1)  # (B, K-1+L, C)
    y = np.zeros((B, L, C), dtype=x.dtype) if b is None else np.broadcast_to(b, (B, L, C)).copy()
    for k in range(K):                                           # tap k reads x at t-(K-1)+k
        y += x_pad[:, k:k + L, :] * w[:, k]                      # (B, L, C) * (C,)
    return y, CausalConv1dCache(x_pad, w, b is not None)


def causal_conv1d_backward(dy, cache: CausalConv1dCache):
    """dx[t'] = sum_k w[:, k] dy[t' + (K-1) - k];  dw[c, k] = sum_{b,t} dy x_pad[t + k];  db = sum dy.

    core.md#causal-conv1d. dy: (B, L, C). Returns (dx (B, L, C), dw (C, K), db (C,) or None).
    """
    validate.cache(cache, CausalConv1dCache, "causal_conv1d_forward")
    x_pad, w, has_bias = cache
    B, Lp, C = x_pad.shape
    K = w.shape[1]
    L = Lp - (K - 1)
    dy = validate.float_array(dy, "dy", shape=(B, L, C))
    dx_pad = np.zeros_like(x_pad)                                # (B, K-1+L, C)
    dw = np.empty_like(w)                                        # (C, K)
    for k in range(K):
        dx_pad[:, k:k + L, :] += dy * w[:, k]
        dw[:, k] = np.sum(dy * x_pad[:, k:k + L, :], axis=(0, 1))
    db = dy.sum(axis=(0, 1)) if has_bias else None
    return dx_pad[:, K - 1:, :], dw, db
