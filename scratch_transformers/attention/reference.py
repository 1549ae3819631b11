"""Materialised softmax attention: the exact reference every other attention core is tested against.

The forward is FA-1's "standard attention" (§2.2 Algorithm 0, with the scale, mask and dropout of the
full forward in App. B.3, unnumbered), the backward is FA-1 App. B.2, equations (3)-(6), as listed in
FA-1 Algorithm 3. Everything is materialised: S and P are (B, H, Nq, Nk) arrays.

Glossary (code symbol -> paper symbol, FA-1 App. B):

    q, k, v, out      Q, K, V, O        (B, H, N, d): row i is q_i, k_j, v_j, o_i
    scale             tau               softmax scale, default 1/sqrt(d)
    s                 S^masked          tau * Q K^T + bias, -inf where masked
    p                 P                 softmax(S^masked), statistics from the undropped P
    z                 Z                 dropout keep-mask / (1 - p_drop)   (None: no dropout)
    lse               L (FA-2)          log-sum-exp of the masked scaled scores per query row
    d_row             D                 D_i = do_i^T o_i   (eq. 4)

Masks: ``causal`` with ``causal_alignment="top_left"`` lets query i see key j iff j <= i;
``"bottom_right"`` iff j <= i + Nk - Nq (flash-attn >= 2.1; the two agree when Nq == Nk).
``key_padding_mask`` (B, Nk) marks padded keys with True. A query row that sees no key gets
out = 0 and lse = -inf, and all its gradients are 0: never NaN.

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 2, 4, 8)) for _ in range(3))
    >>> out, cache = attention_forward(q, k, v, causal=True)
    >>> dq, dk, dv, dbias = attention_backward(np.ones_like(out), cache)
    >>> out.shape, cache.lse.shape, dbias is None
    ((1, 2, 4, 8), (1, 2, 4), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


class AttentionCache(NamedTuple):
    q: np.ndarray            # (B, H, Nq, d)
    k: np.ndarray            # (B, H, Nk, d)
    v: np.ndarray            # (B, H, Nk, dv)
    p: np.ndarray            # (B, H, Nq, Nk) undropped probabilities P (0 where masked)
    z: np.ndarray | None     # (B, H, Nq, Nk) keep-mask / (1 - dropout_p), or None without dropout
    out: np.ndarray          # (B, H, Nq, dv)
    lse: np.ndarray          # (B, H, Nq) log-sum-exp of the masked scaled scores (-inf: fully masked row)
    scale: float             # tau
    bias_shape: tuple | None  # the bias's own shape, for reducing dbias (None: no bias)


def visible_mask(n_q: int, n_k: int, *, causal: bool, causal_alignment: str = "top_left",
                 key_padding_mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean (B|1, 1, Nq, Nk) mask, True where query i may attend to key j.

    Causal (FA-2 §3.1.1: S_ij = -inf for j > i): top_left keeps j <= i, bottom_right keeps
    j <= i + Nk - Nq. key_padding_mask (B, Nk) bool: True = padded key, never visible.
    """
    n_q = validate.positive_int(n_q, "n_q")
    n_k = validate.positive_int(n_k, "n_k")
    causal = validate.flag(causal, "causal")
    validate.option(causal_alignment, "causal_alignment", CAUSAL_ALIGNMENTS)
    if key_padding_mask is not None:   # a bool mask: ~ of an int mask is bitwise (~1 = -2, truthy)
        key_padding_mask = validate.bool_array(key_padding_mask, "key_padding_mask", shape=(None, n_k))
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    if causal:
        shift = 0 if causal_alignment == "top_left" else n_k - n_q
        vis = j <= i + shift                                   # (Nq, Nk)
    else:
        vis = np.ones((n_q, n_k), dtype=bool)
    vis = vis[None, None]                                      # (1, 1, Nq, Nk)
    if key_padding_mask is not None:
        vis = vis & ~key_padding_mask[:, None, None, :]        # (B, 1, Nq, Nk)
    return vis


def _reduce_to_shape(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a broadcast gradient g back to ``shape`` (the adjoint of NumPy broadcasting)."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(a for a, s in enumerate(shape) if s == 1 and g.shape[a] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class AttentionArgs(NamedTuple):
    q: np.ndarray                       # (B, H, Nq, d) float32 | float64
    k: np.ndarray                       # (B, H, Nk, d), q's dtype
    v: np.ndarray                       # (B, H, Nk, dv), q's dtype
    scale: float                        # tau
    bias: np.ndarray | None             # broadcastable to (B, H, Nq, Nk), q's dtype
    key_padding_mask: np.ndarray | None  # (B, Nk) bool, True = padded key
    dropout_p: float
    dropout_mask: np.ndarray | None     # bool, broadcastable to (B, H, Nq, Nk)


def check_qkv(q, k, v):
    """q (B, H, Nq, d), k (B, H, Nk, d), v (B, H, Nk, dv) of one float dtype, every size >= 1 (the check
    every attention core opens with). Returns (q, k, v) as arrays."""
    q = validate.float_array(q, "q", ndim=4)
    b, h, n_q, d = q.shape
    if d < 1 or n_q < 1:
        validate.fail("q", "Nq >= 1 and head dimension d >= 1", q.shape)
    k = validate.array(k, "k", shape=(b, h, None, d), dtype=q.dtype)
    if k.shape[2] < 1:
        validate.fail("k", "at least one key (Nk >= 1)", k.shape)
    v = validate.array(v, "v", shape=(b, h, k.shape[2], None), dtype=q.dtype)
    if v.shape[3] < 1:
        validate.fail("v", "value dimension dv >= 1", v.shape)
    return q, k, v


def check_attention_args(q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p,
                         dropout_mask) -> AttentionArgs:
    """Validate the options every attention core shares (this reference and ``attention.flash``);
    return them normalised (scale defaulted to 1/sqrt(d)). How dropout is driven (an explicit mask
    here, a seed in flash) is each core's own check."""
    q, k, v = check_qkv(q, k, v)
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    scale = float(1.0 / np.sqrt(d)) if scale is None else validate.positive(scale, "scale")
    if not isinstance(causal, (bool, np.bool_)):
        validate.fail("causal", "a bool", repr(causal))
    validate.option(causal_alignment, "causal_alignment", CAUSAL_ALIGNMENTS)
    target = (b, h, n_q, n_k)
    if bias is not None:
        bias = validate.array(bias, "bias", dtype=q.dtype)
        validate.broadcastable(bias, "bias", target)
        if np.any(np.isnan(bias)) or np.any(bias == np.inf):
            validate.fail("bias", "values without NaN or +inf (-inf masks)", "NaN or +inf")
    if key_padding_mask is not None:
        key_padding_mask = validate.bool_array(key_padding_mask, "key_padding_mask", shape=(b, n_k))
    dropout_p = validate.probability(dropout_p, "dropout_p")
    if dropout_mask is not None:
        dropout_mask = validate.bool_array(dropout_mask, "dropout_mask")
        validate.broadcastable(dropout_mask, "dropout_mask", target)
    return AttentionArgs(q, k, v, scale, bias, key_padding_mask, dropout_p, dropout_mask)


def attention_forward(q, k, v, *, scale=None, causal=False, causal_alignment="top_left", bias=None,
                      key_padding_mask=None, dropout_p=0.0, dropout_mask=None, dropout_seed=None):
    """Standard attention O = dropout(softmax(mask(tau Q K^T + bias))) V   (FA-1 §2.2, App. B.3).

    q: (B, H, Nq, d), k: (B, H, Nk, d), v: (B, H, Nk, dv), all float32 or all float64.
    scale: tau (default 1/sqrt(d)). bias: additive, broadcastable to (B, H, Nq, Nk), applied after
    scaling (S = tau Q K^T + bias; -inf entries allowed as extra masking). key_padding_mask: bool
    (B, Nk), True = ignored key. dropout_mask: bool keep-mask broadcastable to (B, H, Nq, Nk),
    applied after the softmax as P * mask / (1 - dropout_p) (FA-1 Alg. 2 line 14); the row
    statistics (lse) come from the undropped P. dropout_p > 0 needs an explicit dropout_mask, or a
    dropout_seed: then the mask is the counter-based keep-mask that ``attention.flash`` applies with
    that seed (``attention.dropout.flash_dropout_mask``), materialised here, so both cores compute the
    same function.

    Returns out (B, H, Nq, dv) in the input dtype and an AttentionCache (with lse (B, H, Nq)).
    """
    q, k, v, scale, bias, key_padding_mask, dropout_p, dropout_mask = check_attention_args(
        q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask)
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    target = (b, h, n_q, n_k)
    if dropout_seed is not None:
        if dropout_mask is not None:
            validate.fail("dropout_seed", "None when an explicit dropout_mask is given", repr(dropout_seed))
        dropout_seed = validate.integer(dropout_seed, "dropout_seed")
        if dropout_p > 0:
            from .dropout import flash_dropout_mask  # the counter-based generator (lazy: numba kernels)
            dropout_mask = flash_dropout_mask(dropout_seed, target, dropout_p)
    if dropout_mask is None and dropout_p > 0:
        validate.fail("dropout_mask", "an explicit boolean keep-mask (or a dropout_seed) when dropout_p > 0", "None")

    # S = tau Q K^T (+ bias), then S^masked = MASK(S)        (App. B.3; Alg. 2 lines 10-11)
    s = scale * (q @ k.swapaxes(-1, -2))                             # (B, H, Nq, Nk)
    if bias is not None:
        s = s + bias
    vis = visible_mask(n_q, n_k, causal=bool(causal), causal_alignment=causal_alignment,
                       key_padding_mask=key_padding_mask)
    s = np.where(vis, s, -np.inf)                                     # (B, H, Nq, Nk)
    # P = softmax(S^masked), max-subtracted; a row with max -inf (fully masked) uses 0 as its shift
    m = np.max(s, axis=-1, keepdims=True)                             # (B, H, Nq, 1)
    m = np.where(np.isfinite(m), m, 0.0).astype(q.dtype)
    e = np.exp(s - m)                                                 # exp(-inf) = 0 where masked
    ell = np.sum(e, axis=-1, keepdims=True)                           # (B, H, Nq, 1)
    empty = ell == 0                                                  # fully masked rows
    p = e / np.where(empty, 1.0, ell).astype(q.dtype)                 # (B, H, Nq, Nk)
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1.0, ell)))[..., 0].astype(q.dtype)
    # P^dropped = P o Z, Z = keep / (1 - p_drop)              (Alg. 2 line 14)
    z = None
    p_used = p
    if dropout_mask is not None:
        z = np.broadcast_to(dropout_mask, target).astype(q.dtype) / q.dtype.type(1.0 - dropout_p)
        p_used = p * z
    out = p_used @ v                                                  # O = P^dropped V   (B, H, Nq, dv)
    cache = AttentionCache(q=q, k=k, v=v, p=p, z=z, out=out, lse=lse, scale=float(scale),
                           bias_shape=None if bias is None else bias.shape)
    return out, cache


def attention_backward(dout, cache: AttentionCache):
    """Backward of attention_forward: FA-1 App. B.2 eqs (3)-(6) (Algorithm 3), with tau and dropout.

        dV = (P o Z)^T dO                                    eq. (3): dv_j = sum_i P_ij Z_ij do_i
        dP = (dO V^T) o Z                                    (Alg. 4 lines 17-18)
        D_i = do_i^T o_i = sum_j P_ij dP_ij                  eq. (4)
        dS_ij = P_ij (dP_ij - D_i)                           (softmax Jacobian, unnumbered)
        dQ = tau dS K                                        eq. (5) with tau (Alg. 4 line 21)
        dK = tau dS^T Q                                      eq. (6) with tau (Alg. 4 line 22)
        dbias = dS summed to the bias's shape                (derived: S = tau Q K^T + bias)

    Masked entries have P = 0, hence dS = 0; a fully masked row has o_i = 0, D_i = 0 and contributes
    nothing. Returns (dq, dk, dv, dbias) with dbias None when the forward had no bias.
    """
    if not isinstance(cache, AttentionCache):
        validate.fail("cache", "the AttentionCache returned by attention_forward", type(cache).__name__)
    dout = validate.array(dout, "dout", shape=cache.out.shape, dtype=cache.out.dtype)
    p_used = cache.p if cache.z is None else cache.p * cache.z
    dv = p_used.swapaxes(-1, -2) @ dout                               # eq. (3)       (B, H, Nk, dv)
    dp = dout @ cache.v.swapaxes(-1, -2)                              # dP = dO V^T   (B, H, Nq, Nk)
    if cache.z is not None:
        dp = dp * cache.z                                             # Alg. 4 line 18
    d_row = np.sum(dout * cache.out, axis=-1, keepdims=True)          # eq. (4)       (B, H, Nq, 1)
    ds = cache.p * (dp - d_row)                                       # dS = P o (dP - D)
    dq = cache.scale * (ds @ cache.k)                                 # eq. (5)       (B, H, Nq, d)
    dk = cache.scale * (ds.swapaxes(-1, -2) @ cache.q)                # eq. (6)       (B, H, Nk, d)
    dbias = None if cache.bias_shape is None else _reduce_to_shape(ds, cache.bias_shape)
    t = cache.q.dtype
    return dq.astype(t, copy=False), dk.astype(t, copy=False), dv.astype(t, copy=False), (
        None if dbias is None else dbias.astype(t, copy=False))
