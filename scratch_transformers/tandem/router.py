"""Adaptive block length for SPEED (Tandem Transformers, arXiv 2402.08644 §3.1, "Adaptive Block Length").

A small 2-layer MLP, after each token M_S drafts, predicts how far M_S's distribution is from M_L's, and
drafting stops (M_L is called) when that prediction says the next drafts are unlikely to be accepted.

    features  = [entropy of M_S's distribution, its top-k probabilities, M_S's embeddings of the top-k tokens]
    tv_hat    = sigmoid(gelu(features W_1 + b_1) w_2 + b_2)          the paper's 2-layer MLP
    loss      = soft binary cross-entropy toward TV(M_S, M_L)         the paper's target (a "probability of
                                                                       disagreement"; 1 - TV is Leviathan's beta)
    continue drafting while 1 - tv_hat >= tau                         tau = 0.8 in the paper

The paper gives no k; k = 4 here. The stop decision reads only the drafter's own output, so speculative
sampling stays exact (the number of drafts may depend on anything but the target's verdicts).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import gelu_backward, gelu_forward, sigmoid
from ..core.layers import linear_backward, linear_forward


def router_features(logits, embeddings, k=4) -> np.ndarray:
    """(..., 1 + k + k D) features of M_S's next-token logits (..., V) with its embedding table (V, D):
    entropy (nats), the k largest probabilities (descending) and the embeddings of those k tokens."""
    logits = validate.float_array(logits, "logits", min_ndim=1, finite=True)
    embeddings = validate.array(embeddings, "embeddings", shape=(logits.shape[-1], None), dtype=logits.dtype)
    k = validate.integer(k, "k", low=1, high=logits.shape[-1])
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    entropy = -np.sum(p * logp, axis=-1, keepdims=True)                          # (..., 1)
    top = np.argsort(-p, axis=-1, kind="stable")[..., :k]                         # (..., k)
    top_p = np.take_along_axis(p, top, axis=-1)                                   # (..., k)
    emb = embeddings[top].reshape(*top.shape[:-1], -1)                            # (..., k D)
    return np.concatenate([entropy, top_p, emb], axis=-1)


def init_router(n_features, hidden, rng, dtype=np.float64) -> dict:
    rng = validate.rng(rng)
    n_features = validate.positive_int(n_features, "n_features")
    hidden = validate.positive_int(hidden, "hidden")
    return {"router.w1": (rng.standard_normal((n_features, hidden)) / math.sqrt(n_features)).astype(dtype),
            "router.b1": np.zeros(hidden, dtype), "router.w2": (rng.standard_normal((hidden, 1)) / math.sqrt(hidden)).astype(dtype),
            "router.b2": np.zeros(1, dtype)}


class RouterCache(NamedTuple):
    fc1: tuple
    gelu: tuple
    fc2: tuple


def router_forward(features, params):
    """Logit of the predicted TV distance, (...,) for features (..., F). Returns (logit, RouterCache)."""
    features = validate.float_array(features, "features", min_ndim=1)
    for name in ("router.w1", "router.b1", "router.w2", "router.b2"):
        if name not in params:
            validate.fail("params", f"a key {name!r} (init_router)", "none")
    h, c1 = linear_forward(features, params["router.w1"], params["router.b1"])   # (..., H)
    g, cg = gelu_forward(h)
    z, c2 = linear_forward(g, params["router.w2"], params["router.b2"])          # (..., 1)
    return z[..., 0], RouterCache(c1, cg, c2)


def router_backward(dlogit, cache: RouterCache):
    """(d features, {router.w1, b1, w2, b2})."""
    if not isinstance(cache, RouterCache):
        validate.fail("cache", "the RouterCache of router_forward", type(cache).__name__)
    dlogit = validate.float_array(dlogit, "dlogit", shape=cache.fc2.x.shape[:-1])
    dg, dw2, db2 = linear_backward(dlogit[..., None], cache.fc2)
    dx, dw1, db1 = linear_backward(gelu_backward(dg, cache.gelu), cache.fc1)
    return dx, {"router.w1": dw1, "router.b1": db1, "router.w2": dw2, "router.b2": db2}


def router_loss_and_grads(params, features, tv):
    """Mean soft binary cross-entropy of sigmoid(logit) toward the targets tv (...) in [0, 1];
    d logit = (sigmoid(logit) - tv) / N."""
    tv = validate.float_array(tv, "tv")
    if np.any((tv < 0) | (tv > 1)):
        validate.fail("tv", "targets in [0, 1]", f"range [{tv.min()}, {tv.max()}]")
    z, cache = router_forward(features, params)
    if z.shape != tv.shape:
        validate.fail("tv", f"shape {z.shape}", tv.shape)
    log_s = -np.logaddexp(0.0, -z)                                                # log sigmoid(z)
    log_1ms = -np.logaddexp(0.0, z)                                               # log (1 - sigmoid(z))
    loss = float(-np.mean(tv * log_s + (1 - tv) * log_1ms))
    _, grads = router_backward((sigmoid(z) - tv) / z.size, cache)
    return loss, grads


def make_stop_rule(params, embeddings, *, tau=0.8, k=4):
    """stop(logits (V,)) -> True when the router predicts acceptance 1 - tv_hat < tau (call M_L now);
    for ``speculative_decode(..., stop_drafting=...)``."""
    tau = validate.real(tau, "tau", low=0.0, high=1.0)

    def stop(logits):
        z, _ = router_forward(router_features(logits, embeddings, k), params)
        return bool(1.0 - sigmoid(z) < tau)
    return stop
