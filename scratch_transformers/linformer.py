"""Linformer: self-attention with keys and values projected along the sequence axis (arXiv 2006.04768).

Wang et al. 2020, §4, eq. (7): one head of linear self-attention is

    head = softmax( Q (E K)^T / sqrt(d) ) (F V)            E, F: (k, n), k << n
           \\__________ P_bar: (n, k) ________/  \\ (k, d) /

so the scores are (n, k) instead of (n, n): time and memory O(n k), linear in n for fixed k. The
paper prints E_i, F_i as n x k but uses them as k x n (E_i K W_i^K must be k x d); here they are
(k, n) as used. Theorem 2 (eq. 8) says that k = O(d log d / eps^2), independent of n, suffices for
some E, F (random Gaussian, JL Lemma 1, eqs. 11-12); the model learns them.

Glossary (code symbol -> paper symbol, eq. 7 and derivations/linformer.md):

    q, k, v        Q W^Q, K W^K, V W^V   (B, H, N, d): the projected, head-split inputs
    E, F           E_i, F_i              (k_proj, n) shared by the heads, or (H, k_proj, n) one per head
    kp, vp         E K W^K, F V W^V      (B, H, k_proj, d): the k_proj "projected slots"
    a              Q (E K)^T / sqrt(d)   (B, H, N, k_proj) scores, ``scale`` = 1/sqrt(d) by default
    p              P_bar                 softmax over the k_proj slots
    out            head_i                (B, H, N, dv)

Choices the paper leaves open (stated, tested):
- Shorter sequences (N < n): the first N columns of E and F are used (fairseq's ``weight[:, 0:tgt_len]``).
- Key padding: padded positions are zeroed in K and V *before* the projection, so they contribute
  nothing to E K or F V. (The authors' fairseq module does not apply the mask to the compressed keys.)
  A mask cannot be applied after the projection: a slot mixes all positions.
- Causal attention is refused: every projected slot mixes all n positions, future ones included, so
  the method as published cannot be causal (the paper trains bidirectional masked LMs only).
- Sharing (§4, "Parameter sharing"): ``SHARING`` modes decide which parameter E and F are
  (:func:`projection_names`); a backward returns dE and dF separately, and the model sums them where the
  two are one matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .attention.reference import check_qkv
from .core import validate

SHARING = ("none", "headwise", "kv", "layerwise")
NOT_CAUSAL = ("Linformer cannot be causal: each of the k projected keys E K (and values F V) is a mix of all "
              "n positions, future ones included, so masking the scores cannot hide the future "
              "(arXiv 2006.04768 trains bidirectional masked LMs only); use causal=False")


class LinformerCache(NamedTuple):
    q: np.ndarray            # (B, H, Nq, d)
    k: np.ndarray            # (B, H, N, d)  keys with padded rows zeroed
    v: np.ndarray            # (B, H, N, dv) values with padded rows zeroed
    e: np.ndarray            # (k_proj, N) or (H, k_proj, N): the columns of E in use
    f: np.ndarray            # (k_proj, N) or (H, k_proj, N)
    kp: np.ndarray           # (B, H, k_proj, d)  E K
    vp: np.ndarray           # (B, H, k_proj, dv) F V
    p: np.ndarray            # (B, H, Nq, k_proj) P_bar
    out: np.ndarray          # (B, H, Nq, dv)
    keep: np.ndarray | None  # (B, 1, N, 1) bool, False at padded positions (None: no padding)
    scale: float
    n_proj: int              # n: columns of the full E and F (their gradients have this many)


class LinformerGrads(NamedTuple):
    """The backward's result; the first four entries match attention_backward's (dq, dk, dv, dbias)."""
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dbias: None
    dE: np.ndarray
    dF: np.ndarray


def projection_names(prefix: str, layer: int, sharing: str) -> tuple[str, str]:
    """Parameter names of (E, F) for one layer under a sharing mode (§4 "Parameter sharing"):

    none:      per layer, one (H, k, n) E and F, a matrix per head     -> 'prefix.E', 'prefix.F'
    headwise:  per layer, one (k, n) E and F shared by every head      -> 'prefix.E', 'prefix.F'
    kv:        per layer, one (k, n) matrix with E = F                  -> 'prefix.E' twice
    layerwise: one (k, n) matrix for every layer, head, key and value   -> 'linformer.E' twice
    """
    validate.option(sharing, "sharing", SHARING)
    layer = validate.integer(layer, "layer", low=0)
    if sharing == "layerwise":
        return "linformer.E", "linformer.E"
    if sharing == "kv":
        return f"{prefix}.E", f"{prefix}.E"
    return f"{prefix}.E", f"{prefix}.F"


def projection_shapes(n_layers: int, n_heads: int, k_proj: int, n: int, sharing: str, prefix="blocks.{i}.attn"):
    """{parameter name: shape} of every E / F of a model (``prefix`` formatted with the layer i)."""
    shapes = {}
    for i in range(validate.positive_int(n_layers, "n_layers")):
        shape = (n_heads, k_proj, n) if sharing == "none" else (k_proj, n)
        for name in projection_names(prefix.format(i=i), i, sharing):
            shapes[name] = shape
    return shapes


def init_projection(rng, shape, dtype=np.float64) -> np.ndarray:
    """E or F ~ N(0, 1/k) entrywise: the random projection R of Lemma 1 (eqs. 11-12), which the
    proofs of Theorems 1-2 use, so training starts from a JL projection (the authors' code uses
    Xavier-uniform instead)."""
    rng = validate.rng(rng)
    k_proj = shape[-2]
    return (rng.standard_normal(shape) / math.sqrt(k_proj)).astype(dtype)


def cumulative_singular_values(p) -> np.ndarray:
    """The spectrum analysis of §3 (Figure 1): for each context-mapping matrix P (..., n, n) the
    normalised cumulative singular values c(t) = sum_{i<=t} sigma_i / sum_i sigma_i, t = 1..n (the
    paper does not write the normalisation out; this is the natural reading). c(t) near 1 for t << n
    means P is close to rank t (Eckart-Young-Mirsky, eq. 6). Rejects non-finite input (an SVD
    analysis cannot propagate NaN meaningfully). Returns (..., n) float64.
    """
    p = validate.float_array(p, "p", min_ndim=2, finite=True)
    if p.shape[-1] != p.shape[-2] or p.shape[-1] < 1:
        validate.fail("p", "square matrices (..., n, n)", p.shape)
    sigma = np.linalg.svd(p.astype(np.float64), compute_uv=False)              # (..., n) descending
    total = sigma.sum(axis=-1, keepdims=True)
    return np.cumsum(sigma, axis=-1) / np.where(total > 0, total, 1.0)


def _check_projection(x, name, h, n_keys, dtype):
    x = validate.array(x, name, dtype=dtype)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[0] != h):
        validate.fail(name, f"shape (k, n) or ({h}, k, n) (one per head)", x.shape)
    if x.shape[-2] < 1 or x.shape[-1] < n_keys:
        validate.fail(name, f"k >= 1 rows and at least the sequence length {n_keys} columns", x.shape)
    return x


def linformer_attention_forward(q, k, v, E, F, *, scale=None, causal=False, causal_alignment="top_left",
                                bias=None, key_padding_mask=None, dropout_p=0.0, dropout_mask=None):
    """Linear self-attention, eq. (7): out = softmax(scale Q (E K)^T) (F V).

    q: (B, H, Nq, d); k: (B, H, N, d); v: (B, H, N, dv), one float dtype. E, F: (k_proj, n) or
    (H, k_proj, n) with n >= N (the first N columns are used). key_padding_mask: bool (B, N), True =
    padded: those rows of K and V are zeroed before the projection. causal=True raises (see NOT_CAUSAL);
    bias and dropout are not supported (a bias over key positions has no meaning over projected slots).
    causal_alignment is accepted for the multi-head layer's interface and unused.
    Returns out (B, H, Nq, dv) and a LinformerCache.
    """
    if validate.flag(causal, "causal"):
        raise ValueError(f"causal: {NOT_CAUSAL}")
    q, k, v = check_qkv(q, k, v)
    b, h, n_q, d = q.shape
    n = k.shape[2]
    E = _check_projection(E, "E", h, n, q.dtype)
    F = _check_projection(F, "F", h, n, q.dtype)
    if E.shape[-2] != F.shape[-2]:
        validate.fail("F", f"the same number of rows k as E ({E.shape[-2]})", F.shape)
    scale = 1.0 / math.sqrt(d) if scale is None else validate.positive(scale, "scale")
    validate.option(causal_alignment, "causal_alignment", ("top_left", "bottom_right"))
    if bias is not None:
        validate.fail("bias", "None (Linformer scores are over projected slots, not key positions)", "a bias")
    if validate.probability(dropout_p, "dropout_p") > 0 or dropout_mask is not None:
        validate.fail("dropout_p", "0 and no dropout_mask (attention dropout is not implemented here)", dropout_p)
    keep = None
    if key_padding_mask is not None:
        key_padding_mask = validate.bool_array(key_padding_mask, "key_padding_mask", shape=(b, n))
        keep = ~key_padding_mask[:, None, :, None]                             # (B, 1, N, 1)
        k = np.where(keep, k, 0).astype(q.dtype, copy=False)                   # padded rows contribute nothing,
        v = np.where(keep, v, 0).astype(q.dtype, copy=False)                   # even if they hold NaN
    e, f = E[..., :n], F[..., :n]                                              # shorter input: first N columns
    kp = e @ k                                                                 # E K   (B, H, k_proj, d)
    vp = f @ v                                                                 # F V   (B, H, k_proj, dv)
    a = q @ kp.swapaxes(-1, -2)                                                # (B, H, Nq, k_proj)
    a *= q.dtype.type(scale)
    a -= a.max(axis=-1, keepdims=True)                                         # stable softmax over slots
    p = np.exp(a, out=a)
    p /= p.sum(axis=-1, keepdims=True)                                         # P_bar (B, H, Nq, k_proj)
    out = p @ vp                                                               # eq. (7)  (B, H, Nq, dv)
    return out, LinformerCache(q, k, v, e, f, kp, vp, p, out, keep, float(scale), E.shape[-1])


def _projection_grad(dxp, x, like):
    """dE = sum over the batch (and the heads when E is shared) of dxp x^T, as one matrix product per E:
    dxp (B, H, k_proj, d), x (B, H, N, d) -> (k_proj, N), or (H, k_proj, N) for one E per head. Never forms
    the (B, H, k_proj, N) products (their sum is all that is needed)."""
    b, h, k_proj, d = dxp.shape
    n = x.shape[2]
    if like.ndim == 2:                                                         # contract over (b, h, c)
        return dxp.transpose(2, 0, 1, 3).reshape(k_proj, b * h * d) @ x.transpose(0, 1, 3, 2).reshape(b * h * d, n)
    return dxp.transpose(1, 2, 0, 3).reshape(h, k_proj, b * d) @ x.transpose(1, 0, 3, 2).reshape(h, b * d, n)


def _full_columns(g, n_proj):
    """Gradient of the used first N columns -> gradient of the whole (.., k_proj, n) matrix (0 beyond N)."""
    if g.shape[-1] == n_proj:
        return g
    full = np.zeros(g.shape[:-1] + (n_proj,), dtype=g.dtype)
    full[..., :g.shape[-1]] = g
    return full


def linformer_attention_backward(dout, cache: LinformerCache) -> LinformerGrads:
    """Backward of linformer_attention_forward (derivations/linformer.md#backward):

        dVp = P^T dO              dP = dO Vp^T          D_i = sum_j dO_ij O_ij
        dA  = P o (dP - D)        dQ = scale dA Kp      dKp = scale dA^T Q
        dE  = sum_{b(,h)} dKp K^T     dK = E^T dKp      (zero at padded rows)
        dF  = sum_{b(,h)} dVp V^T     dV = F^T dVp      (zero at padded rows)

    dE, dF have E's and F's full shapes; columns beyond the sequence length get 0. When E and F are
    one matrix (kv or layerwise sharing) its gradient is dE + dF, summed by the caller.
    """
    validate.cache(cache, LinformerCache, "linformer_attention_forward")
    dout = validate.array(dout, "dout", shape=cache.out.shape, dtype=cache.out.dtype)
    q, k, v, e, f, kp, vp, p, out, keep, scale, n_proj = cache
    t = q.dtype.type
    dvp = p.swapaxes(-1, -2) @ dout                                            # (B, H, k_proj, dv)
    da = dout @ vp.swapaxes(-1, -2)                                            # dP_bar (B, H, Nq, k_proj)
    da -= np.sum(dout * out, axis=-1, keepdims=True)                           # - D_i, D = rowsum(dO o O)
    da *= p                                                                    # dA = P_bar o (dP_bar - D)
    dq = da @ kp                                                               # (B, H, Nq, d)
    dq *= t(scale)
    dkp = t(scale) * (da.swapaxes(-1, -2) @ q)                                 # (B, H, k_proj, d)
    dk = e.swapaxes(-1, -2) @ dkp                                              # (B, H, N, d)
    dv = f.swapaxes(-1, -2) @ dvp                                              # (B, H, N, dv)
    if keep is not None:
        dk = np.where(keep, dk, 0).astype(q.dtype, copy=False)
        dv = np.where(keep, dv, 0).astype(q.dtype, copy=False)
    dE = _full_columns(_projection_grad(dkp, k, e), n_proj)                    # sum_b(,h) dKp K^T (.., k_proj, n)
    dF = _full_columns(_projection_grad(dvp, v, f), n_proj)                    # sum_b(,h) dVp V^T
    return LinformerGrads(dq, dk, dv, None, dE, dF)
