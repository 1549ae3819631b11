"""The Tandem M_S attention: queries from M_S, keys/values from projected M_L rows of earlier blocks and
from M_S's own rows of the current block (Tandem Transformers, arXiv 2402.08644, eq. 2).

Glossary (code -> paper, 0-indexed rows r, m):

    a_own (B, T, D)   LN(y^(j)) of M_S's own rows (queries, and the own keys/values)
    a_ml  (B, M, D)   LN(y_hat^(j)), y_hat^(j) = FF_Tandem^(j)(x^(l(j))): M_L rows in M_S's space
    c(r)              how many leading tokens' M_L rows query r may use; eq. 2's k (1-indexed i = r + 1)
    ML_ok[r, m]  = m < c(r)                use projected M_L row m
    OWN_ok[r, m] = c(r) <= m <= r          use own row m

Block conventions (:func:`block_contexts`): "figure" (Fig. 1 caption, Figs. 2 and 4; the default):
c(r) = (r // gamma) gamma, i.e. every position of a block uses own rows of its block and M_L rows of
strictly earlier blocks; "printed" (eq. 2 as printed, k = floor(i / gamma) gamma with 1-indexed i):
c(r) = ((r + 1) // gamma) gamma, so the last position of each block (i = 0 mod gamma) sees only M_L
rows, including its own token's. Both are causal: row r predicts token r + 1 and sees tokens <= r.

One score matrix over the concatenated keys [K_ml; K_own] (B, H, T, M + T_own) with the mask as an
additive -inf bias; the standard attention backward then splits dK, dV into the two halves.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..attention.reference import attention_backward, attention_forward
from ..core import validate
from ..core.layers import linear_backward, linear_forward

CONVENTIONS = ("figure", "printed")


def block_contexts(n, gamma, convention="figure", origin=0) -> np.ndarray:
    """c(r) for rows r = 0..n-1 with blocks of ``gamma`` tokens starting at ``origin`` (rows before the
    origin get c = 0: plain causal M_S). Returns (n,) int64."""
    n = validate.integer(n, "n", low=0)
    gamma = validate.positive_int(gamma, "gamma")
    validate.option(convention, "convention", CONVENTIONS)
    origin = validate.integer(origin, "origin", low=0)
    r = np.arange(n) - origin
    shift = 0 if convention == "figure" else 1
    c = origin + ((r + shift) // gamma) * gamma
    return np.where(r >= 0, c, 0).astype(np.int64)


def tandem_mask(contexts, positions, n_ml, n_own) -> np.ndarray:
    """Visibility (T, n_ml + n_own) of query rows at ``positions`` (T,) with ``contexts`` (T,) over
    [M_L rows 0..n_ml-1 ; own rows 0..n_own-1]: ML_ok = m < c(r), OWN_ok = c(r) <= m <= r."""
    c = np.asarray(contexts)[:, None]                                     # (T, 1)
    r = np.asarray(positions)[:, None]
    ml_ok = np.arange(n_ml)[None, :] < c                                  # (T, n_ml)
    m = np.arange(n_own)[None, :]
    own_ok = (m >= c) & (m <= r)                                          # (T, n_own)
    return np.concatenate([ml_ok, own_ok], axis=1)


def check_contexts(contexts, n, n_ml) -> np.ndarray:
    """contexts (n,) int with 0 <= c(r) <= min(r + 1, n_ml) (a row may use M_L rows up to its own token)."""
    contexts = validate.int_array(contexts, "contexts", shape=(n,), low=0)
    if n and np.any(contexts > np.minimum(np.arange(n) + 1, n_ml)):
        validate.fail("contexts", f"c(r) <= min(r + 1, number of M_L rows = {n_ml})", contexts)
    return contexts


def split_heads(x, n_heads):
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(0, 2, 1, 3)     # (B, H, T, d_h)


def merge_heads(x):
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)                    # (B, T, H d_h)


class TandemAttentionCache(NamedTuple):
    q_lin: tuple          # LinearCache of q = a_own wq + bq
    kv_lin: tuple         # LinearCaches of k, v over the rows [a_ml; a_own]  (B, M + T, D)
    core: tuple           # AttentionCache, scores (B, H, T, M + T)
    o_lin: tuple          # LinearCache of the output projection
    n_ml: int             # M
    n_heads: int
    prefix: str


def tandem_attention_forward(a_own, a_ml, params, *, prefix, n_heads, contexts):
    """y = merge(softmax(tau Q [K_ml; K_own]^T + mask) [V_ml; V_own]) wo + bo   (eq. 2's Atn_S^(j+1)).

    a_own: (B, T, D) own rows 0..T-1 (queries and own keys); a_ml: (B, M, D) projected M_L rows 0..M-1,
    both after M_S's layer norm; params: ``prefix.wq/wk/wv/wo`` (D, D) and ``prefix.bq/bk/bv/bo`` (D,) -
    M_S's own projections serve both key sources. contexts: (T,) c(r) (see :func:`block_contexts`).
    Returns y (B, T, D) and a TandemAttentionCache.
    """
    a_own = validate.float_array(a_own, "a_own", ndim=3)
    b, t, d = a_own.shape
    a_ml = validate.array(a_ml, "a_ml", shape=(b, None, d), dtype=a_own.dtype)
    n_heads = validate.positive_int(n_heads, "n_heads")
    if d % n_heads:
        validate.fail("n_heads", f"a divisor of D={d}", n_heads)
    contexts = check_contexts(contexts, t, a_ml.shape[1])
    w = {}
    for n in "qkvo":
        w[n] = validate.array(params.get(f"{prefix}.w{n}"), f"params[{prefix}.w{n}]", shape=(d, d), dtype=a_own.dtype)
        w["b" + n] = validate.array(params.get(f"{prefix}.b{n}"), f"params[{prefix}.b{n}]", shape=(d,),
                                    dtype=a_own.dtype)
    rows = np.concatenate([a_ml, a_own], axis=1)                            # (B, M + T, D) key rows
    q, c_q = linear_forward(a_own, w["q"], w["bq"])                         # (B, T, D)
    k, c_k = linear_forward(rows, w["k"], w["bk"])                          # (B, M + T, D)
    v, c_v = linear_forward(rows, w["v"], w["bv"])
    mask = tandem_mask(contexts, np.arange(t), a_ml.shape[1], t)           # (T, M + T)
    bias = np.where(mask, 0.0, -np.inf).astype(a_own.dtype)
    out, c_core = attention_forward(split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads),
                                    bias=bias)                              # (B, H, T, d_h)
    y, c_o = linear_forward(merge_heads(out), w["o"], w["bo"])              # (B, T, D)
    return y, TandemAttentionCache(c_q, (c_k, c_v), c_core, c_o, a_ml.shape[1], n_heads, prefix)


def tandem_attention_backward(dy, cache: TandemAttentionCache):
    """Backward of tandem_attention_forward (derivations/tandem.md#backward).

    dy: (B, T, D). Returns (da_own (B, T, D), da_ml (B, M, D), grads {prefix.wq..bo}). The key/value
    weights receive the sum over both key sources: dW_k = [a_ml; a_own]^T [dK_ml; dK_own].
    """
    if not isinstance(cache, TandemAttentionCache):
        validate.fail("cache", "the TandemAttentionCache of tandem_attention_forward", type(cache).__name__)
    dy = validate.array(dy, "dy", shape=cache.q_lin.x.shape, dtype=cache.q_lin.x.dtype)
    p, m = cache.prefix, cache.n_ml
    dmerged, dwo, dbo = linear_backward(dy, cache.o_lin)
    dq, dk, dv, _ = attention_backward(split_heads(dmerged, cache.n_heads), cache.core)
    da_own, dwq, dbq = linear_backward(merge_heads(dq), cache.q_lin)
    drows_k, dwk, dbk = linear_backward(merge_heads(dk), cache.kv_lin[0])   # (B, M + T, D)
    drows_v, dwv, dbv = linear_backward(merge_heads(dv), cache.kv_lin[1])
    drows = drows_k + drows_v
    grads = {f"{p}.wq": dwq, f"{p}.bq": dbq, f"{p}.wk": dwk, f"{p}.bk": dbk, f"{p}.wv": dwv, f"{p}.bv": dbv,
             f"{p}.wo": dwo, f"{p}.bo": dbo}
    return da_own + drows[:, m:], drows[:, :m], grads
