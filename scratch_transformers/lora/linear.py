"""The LoRA linear: h = x W0 + b0 + s (x A) B with W0 frozen (Hu et al. 2021, arXiv 2106.09685, eq. 3), its
backward, merging into W0 (§4.1) and the subspace similarity of §7.2 (eq. 4); rsLoRA's scale
(Kalajdzievski 2023, arXiv 2312.03732). Derivations: derivations/lora.md.

Glossary (code symbol -> paper symbol). The paper writes column vectors, h = W0 x + B A x (eq. 3) with
W0 (d x k), A (r x k), B (d x r). We use row batches, h = x W0 + b0 + s (x A) B, so every matrix is the
paper's transposed once:

    w0  (d_in, d_out)   W0^T, frozen                 a  (d_in, r)   A^T, the down-projection
    b0  (d_out,)        frozen bias (not in paper)   b  (r, d_out)  B^T, the up-projection
    s   scale           alpha / r (§4.1) or alpha / sqrt(r) (rsLoRA, Theorem 3.2)
    delta_w = s a b     (d_in, d_out) = (s B A)^T, rank <= r
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate

INITS = ("kaiming_uniform", "gaussian")


# --------------------------------------------------------------------------------------------------
# The LoRA linear pair
# --------------------------------------------------------------------------------------------------

def lora_scale(alpha, r, *, rslora: bool = False) -> float:
    """The adapter's scale s: alpha / r (LoRA §4.1) or alpha / sqrt(r) (rsLoRA, Theorem 3.2)."""
    rslora = validate.flag(rslora, "rslora")
    alpha = validate.real(alpha, "alpha")
    r = validate.positive_int(r, "r")
    return alpha / np.sqrt(r) if rslora else alpha / r


def init_lora(rng, d_in, d_out, r, *, init: str = "kaiming_uniform", dtype=np.float64):
    """A random, B = 0 (LoRA §4.1), so delta_w = s a b = 0 and the adapted model starts at the base.

    init="kaiming_uniform" (default, as loralib and peft): a ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), i.e.
    PyTorch's kaiming_uniform_(a=sqrt(5)) on lora_A (r, d_in): bound = sqrt(1/3) * sqrt(3 / d_in).
    Its variance 1/(3 d_in) does not depend on r, which is the assumption under which rsLoRA's
    Theorem 3.2 ties all r-dependence to the scale s. init="gaussian" (peft's option): a ~ N(0, 1/r^2),
    whose variance shrinks with r. Returns a (d_in, r), b (r, d_out).
    """
    rng = validate.rng(rng)
    d_in = validate.positive_int(d_in, "d_in")
    d_out = validate.positive_int(d_out, "d_out")
    r = validate.positive_int(r, "r")
    validate.option(init, "init", INITS)
    dtype = validate.float_dtype(dtype)
    if init == "kaiming_uniform":
        bound = 1.0 / np.sqrt(d_in)
        a = rng.uniform(-bound, bound, size=(d_in, r))
    else:
        a = rng.normal(0.0, 1.0 / r, size=(d_in, r))
    return a.astype(dtype), np.zeros((r, d_out), dtype=dtype)


class LoRACache(NamedTuple):
    x_drop: np.ndarray       # (N, d_in) dropout(x), flattened over leading axes; x itself without dropout
    keep: np.ndarray | None  # (N, d_in) bool keep-mask of the LoRA-branch dropout, None without dropout
    keep_scale: float        # 1 / (1 - p)
    h: np.ndarray            # (N, r) x_drop @ a
    w0: np.ndarray           # (d_in, d_out)
    a: np.ndarray            # (d_in, r)
    b: np.ndarray            # (r, d_out)
    scale: float             # s
    x_shape: tuple           # (..., d_in)


def lora_linear_forward(x, w0, b0, a, b, *, scale, dropout_p=0.0, rng=None, training=True, dropout_mask=None):
    """h = x w0 + b0 + s * (dropout(x) a) b   (LoRA eq. 3 with the §4.1 scale, transposed for rows).

    x (..., d_in); w0 (d_in, d_out) and b0 (d_out,) | None are frozen; a (d_in, r), b (r, d_out) trainable.
    Dropout (inverted, rate dropout_p) acts on the LoRA branch's input only, as in loralib and peft; it
    is active when training and dropout_p > 0, with the keep-mask drawn from ``rng`` or given as
    ``dropout_mask`` (bool, shape of x). Returns y (..., d_out) and the cache for lora_linear_backward.
    """
    training = validate.flag(training, "training")
    x = validate.float_array(x, "x", min_ndim=1)
    d_in = x.shape[-1]
    w0 = validate.float_array(w0, "w0", ndim=2, shape=(d_in, None))
    validate.same_dtype(w0, "w0", x, "x")
    d_out = w0.shape[1]
    if b0 is not None:
        b0 = validate.array(b0, "b0", shape=(d_out,), dtype=x.dtype)
    a = validate.array(a, "a", ndim=2, shape=(d_in, None), dtype=x.dtype)
    r = a.shape[1]
    if r < 1:
        validate.fail("a", "at least one column (rank r >= 1)", a.shape)
    b = validate.array(b, "b", shape=(r, d_out), dtype=x.dtype)
    scale = validate.real(scale, "scale")
    p = validate.probability(dropout_p, "dropout_p")
    x2 = x.reshape(-1, d_in)                                  # (N, d_in)
    keep, keep_scale = None, 1.0
    if training and (p > 0.0 or dropout_mask is not None):
        if dropout_mask is not None:
            keep = validate.bool_array(dropout_mask, "dropout_mask", shape=x.shape).reshape(-1, d_in)
        else:
            keep = validate.rng(rng, "rng").random(x2.shape) >= p
        keep_scale = 1.0 / (1.0 - p)
        x_drop = x2 * keep * x.dtype.type(keep_scale)         # (N, d_in)
    else:
        x_drop = x2
    h = x_drop @ a                                            # (N, r)
    base = x @ w0                                             # (..., d_out)  frozen path, as linear_forward
    if b0 is not None:
        base = base + b0
    delta = x.dtype.type(scale) * (h @ b)                     # (N, d_out)    s (x A) B
    y = base + delta.reshape(base.shape)                      # (..., d_out)  eq. (3); == base when b = 0
    cache = LoRACache(x_drop, keep, keep_scale, h, w0, a, b, scale, x.shape)
    return y, cache


def lora_linear_backward(dy, cache: LoRACache):
    """Gradients (dx, da, db) of lora_linear_forward; w0 and b0 are frozen and get none.

    dB = s h^T dy,  dh = s dy b^T,  dA = x_drop^T dh,  dx = dy w0^T + dropout'(dh a^T)
    (derivations/lora.md#backward). At init b = 0, so dh = 0 and dA = 0: A starts moving one step after B.
    """
    c = cache
    d_out = c.w0.shape[1]
    dy = validate.array(dy, "dy", shape=(*c.x_shape[:-1], d_out), dtype=c.w0.dtype)
    s = c.w0.dtype.type(c.scale)
    dy2 = dy.reshape(-1, d_out)                               # (N, d_out)
    db = s * (c.h.T @ dy2)                                    # (r, d_out)
    dh = s * (dy2 @ c.b.T)                                    # (N, r)
    da = c.x_drop.T @ dh                                      # (d_in, r)
    dx_drop = dh @ c.a.T                                      # (N, d_in)
    if c.keep is not None:
        dx_drop = dx_drop * c.keep * c.w0.dtype.type(c.keep_scale)
    dx = dy2 @ c.w0.T + dx_drop                               # (N, d_in)
    return dx.reshape(c.x_shape), da, db


def delta_weight(a, b, scale):
    """delta_w = s a b (d_in, d_out), the transpose of the paper's s B A (eq. 3)."""
    a = validate.float_array(a, "a", ndim=2)
    b = validate.array(b, "b", shape=(a.shape[1], None), dtype=a.dtype)
    return a.dtype.type(validate.real(scale, "scale")) * (a @ b)


def merge(w0, a, b, scale):
    """W = W0 + s A B: the deployed weight, no additional inference latency (LoRA §4.1). Returns a new array."""
    w0 = validate.float_array(w0, "w0", ndim=2)
    a = validate.array(a, "a", ndim=2, shape=(w0.shape[0], None), dtype=w0.dtype)
    validate.array(b, "b", shape=(a.shape[1], w0.shape[1]), dtype=w0.dtype)
    return w0 + delta_weight(a, b, scale)


def unmerge(w, a, b, scale):
    """W0 = W - s A B: recover the base weight to switch tasks (LoRA §4.1, "No Additional
    Inference Latency"). Exact up to rounding of
    one add and one subtract (relative error ~ eps * |delta_w| / |W0|)."""
    w = validate.float_array(w, "w", ndim=2)
    a = validate.array(a, "a", ndim=2, shape=(w.shape[0], None), dtype=w.dtype)
    validate.array(b, "b", shape=(a.shape[1], w.shape[1]), dtype=w.dtype)
    return w - delta_weight(a, b, scale)


# --------------------------------------------------------------------------------------------------
# Subspace similarity (LoRA §7.2, eq. 4)
# --------------------------------------------------------------------------------------------------

def subspace_similarity(a1, a2):
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) for all i <= r1, j <= r2 (eq. 4).

    a1 (d_in, r1), a2 (d_in, r2) in our layout (the paper's A^T), so the paper's right-singular vectors of
    A are our left-singular vectors U. Returns phi (r1, r2) with phi[i-1, j-1] in [0, 1]. For independent
    random subspaces E[phi] ~ max(i, j) / d_in.
    """
    # finite only: an SVD analysis cannot carry a NaN through, and an inf entry made LAPACK spin for minutes
    a1 = validate.float_array(a1, "a1", ndim=2, finite=True)
    a2 = validate.array(a2, "a2", ndim=2, shape=(a1.shape[0], None), dtype=a1.dtype, finite=True)
    if a1.shape[1] > a1.shape[0] or a2.shape[1] > a2.shape[0]:
        validate.fail("a1, a2", "rank <= d_in", (a1.shape, a2.shape))
    u1 = np.linalg.svd(a1.astype(np.float64), full_matrices=False)[0]   # (d_in, r1), by singular value
    u2 = np.linalg.svd(a2.astype(np.float64), full_matrices=False)[0]   # (d_in, r2)
    m2 = (u1.T @ u2) ** 2                                               # (r1, r2)
    cum = np.cumsum(np.cumsum(m2, axis=0), axis=1)                      # ||U1^i^T U2^j||_F^2
    i = np.arange(1, a1.shape[1] + 1)[:, None]
    j = np.arange(1, a2.shape[1] + 1)[None, :]
    return cum / np.minimum(i, j)


