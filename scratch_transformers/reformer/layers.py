"""The two residual branches of a Reformer block (eq. 9: layer norm inside the branch):

    F(x) = merge(core(split(LN(x) W_qk), split(LN(x) W_v))) W_o        shared-QK multi-head attention (§2)
    G(x) = gelu(LN(x) W_1 + b_1) W_2 + b_2                              position-wise feed-forward

``core`` is LSH attention (``lsh.lsh_attention_forward``, with the layer's fixed rotations) or full
shared-QK attention (``lsh.shared_qk_attention_forward``): the same parameters evaluated either way,
as in Table 2. Parameters (flat dict): ``{prefix}.ln.weight/bias`` (D,), ``{prefix}.wqk``, ``.wv``,
``.wo`` (D, D) for attention; ``{prefix}.ln.weight/bias``, ``.w1`` (D, F), ``.b1`` (F,), ``.w2`` (F, D),
``.b2`` (D,) for the feed-forward. Heads: head h uses columns h*d_h:(h+1)*d_h, d_h = D / H.
"""

from __future__ import annotations

from typing import Any, NamedTuple


from ..core import validate
from ..core.functional import gelu_backward, gelu_forward
from ..core.layers import layer_norm_backward, layer_norm_forward, linear_backward, linear_forward
from .lsh import (lsh_attention_backward, lsh_attention_forward, shared_qk_attention_backward,
                  shared_qk_attention_forward)

ATTENTIONS = ("lsh", "full")


def _split(x, n_heads):                      # (B, T, D) -> (B, H, T, D/H)
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(0, 2, 1, 3)


def _merge(x):                               # (B, H, T, d_h) -> (B, T, H d_h)
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


class AttentionLayerCache(NamedTuple):
    ln: Any               # LayerNormCache
    qk: Any               # LinearCache of LN(x) W_qk
    v: Any                # LinearCache of LN(x) W_v
    core: Any             # LSHCache or SharedQKCache
    o: Any                # LinearCache of the output projection
    attention: str
    n_heads: int
    prefix: str


def lsh_self_attention_forward(x, params, *, prefix, n_heads, attention="lsh", rotations=None, bucket_size=None,
                               causal=True, dedup=False, eps=1e-5):
    """F of eq. (9): LN, shared-QK projections, LSH (or full) attention per head, output projection.

    x: (B, T, D); rotations (d_h, n_hashes, n_buckets/2) and bucket_size are needed for "lsh".
    Returns y (B, T, D) and an AttentionLayerCache.
    """
    causal = validate.flag(causal, "causal")
    dedup = validate.flag(dedup, "dedup")
    x = validate.float_array(x, "x", ndim=3)
    n_heads = validate.positive_int(n_heads, "n_heads")
    if x.shape[2] % n_heads:
        validate.fail("n_heads", f"a divisor of D={x.shape[2]}", n_heads)
    validate.option(attention, "attention", ATTENTIONS)
    for name in ("wqk", "wv", "wo"):
        validate.array(params.get(f"{prefix}.{name}"), f"params[{prefix}.{name}]", shape=(x.shape[2],) * 2,
                       dtype=x.dtype)
    h, c_ln = layer_norm_forward(x, params[f"{prefix}.ln.weight"], params[f"{prefix}.ln.bias"], eps)
    qk, c_qk = linear_forward(h, params[f"{prefix}.wqk"])                   # (B, T, D)
    v, c_v = linear_forward(h, params[f"{prefix}.wv"])
    if attention == "lsh":
        o, c_core = lsh_attention_forward(_split(qk, n_heads), _split(v, n_heads), rotations,
                                          bucket_size=bucket_size, causal=causal, dedup=dedup)
    else:
        o, c_core = shared_qk_attention_forward(_split(qk, n_heads), _split(v, n_heads), causal=causal)
    y, c_o = linear_forward(_merge(o), params[f"{prefix}.wo"])              # (B, T, D)
    return y, AttentionLayerCache(c_ln, c_qk, c_v, c_core, c_o, attention, n_heads, prefix)


def lsh_self_attention_backward(dy, cache: AttentionLayerCache):
    """Backward of lsh_self_attention_forward: output projection, the core's backward, the two input
    projections (their dx summed), the layer norm. Returns (dx, grads dict)."""
    validate.cache(cache, AttentionLayerCache, "lsh_self_attention_forward")
    p = cache.prefix
    dmerged, dwo, _ = linear_backward(dy, cache.o)
    core_backward = lsh_attention_backward if cache.attention == "lsh" else shared_qk_attention_backward
    dqk, dv = core_backward(_split(dmerged, cache.n_heads), cache.core)      # (B, H, T, d_h)
    dh1, dwqk, _ = linear_backward(_merge(dqk), cache.qk)
    dh2, dwv, _ = linear_backward(_merge(dv), cache.v)
    dx, dlw, dlb = layer_norm_backward(dh1 + dh2, cache.ln)
    return dx, {f"{p}.ln.weight": dlw, f"{p}.ln.bias": dlb, f"{p}.wqk": dwqk, f"{p}.wv": dwv, f"{p}.wo": dwo}


class FeedForwardCache(NamedTuple):
    ln: Any
    l1: Any
    act: Any
    l2: Any
    prefix: str


def feed_forward_forward(x, params, *, prefix, eps=1e-5):
    """G of eq. (9): gelu(LN(x) W_1 + b_1) W_2 + b_2, position by position. x: (..., T, D)."""
    x = validate.float_array(x, "x", min_ndim=2)
    h, c_ln = layer_norm_forward(x, params[f"{prefix}.ln.weight"], params[f"{prefix}.ln.bias"], eps)
    a, c1 = linear_forward(h, params[f"{prefix}.w1"], params[f"{prefix}.b1"])   # (..., T, F)
    g, c_act = gelu_forward(a)
    y, c2 = linear_forward(g, params[f"{prefix}.w2"], params[f"{prefix}.b2"])   # (..., T, D)
    return y, FeedForwardCache(c_ln, c1, c_act, c2, prefix)


def feed_forward_backward(dy, cache: FeedForwardCache):
    """Backward of feed_forward_forward. Returns (dx, grads dict)."""
    validate.cache(cache, FeedForwardCache, "feed_forward_forward")
    p = cache.prefix
    dg, dw2, db2 = linear_backward(dy, cache.l2)
    da = gelu_backward(dg, cache.act)
    dh, dw1, db1 = linear_backward(da, cache.l1)
    dx, dlw, dlb = layer_norm_backward(dh, cache.ln)
    return dx, {f"{p}.ln.weight": dlw, f"{p}.ln.bias": dlb, f"{p}.w1": dw1, f"{p}.b1": db1,
                f"{p}.w2": dw2, f"{p}.b2": db2}
