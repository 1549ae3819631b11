"""Multi-head attention: projections, head split/merge, a pluggable attention core, a KV cache.

Vaswani et al. 2017, §3.2.2 (unnumbered): MultiHead(Q, K, V) = Concat(head_1..head_H) W^O with
head_h = Attention(Q W^Q_h, K W^K_h, V W^V_h). With row-major activations and y = x @ W:

    q = x wq + bq,  k = x wk + bk,  v = x wv + bv        (B, T, D)   projections
    q, k, v -> (B, H, T, d_h), d_h = D / H                           split heads
    q, k <- RoPE(q), RoPE(k)       (optional, positions include the KV-cache offset)
    o = core(q, k, v; causal, bias, padding)              (B, H, T, d_h)
    y = merge(o) wo + bo                                  (B, T, D)

Glossary: ``x`` (B, T, D) input; ``params[prefix + ".wq"]`` (D, D) is W^Q for all heads side by side
(head h uses columns h*d_h:(h+1)*d_h); ``core`` names an entry of :data:`CORES`, imported lazily, whose
forward/backward take the keyword options of ``attention.reference.attention_forward``.

The four projections go through ``core.layers.project_forward``: ``linears`` (used by LoRA) maps a
weight name such as ``"blocks.0.attn.wq"`` to an object with ``forward(x, params) -> (y, cache)`` (bias
included) and ``backward(dy, cache) -> (dx, grads dict)`` that replaces that projection.

``kv_cache`` (a :class:`KVCache`) makes the call an incremental decode step: the new keys/values are
written into the cache (in place, ``length`` advances) and the queries attend to everything cached so
far with bottom-right causal alignment. Decode steps are forward-only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.layers import add_grads, check_linears, project_backward, project_forward

CORES: dict[str, tuple[str, str, str]] = {
    "reference": ("scratch_transformers.attention.reference", "attention_forward", "attention_backward"),
    "flash": ("scratch_transformers.attention.flash", "flash_attention_forward", "flash_attention_backward"),
    "linformer": ("scratch_transformers.linformer", "linformer_attention_forward", "linformer_attention_backward"),
}
# Cores with parameters of their own: the keyword names the core's forward takes them under. Its backward
# returns their gradients after (dq, dk, dv, dbias), in this order. mha_forward(core_params=...) maps each
# keyword to a params key (two keywords may share one key: the gradients are summed).
CORE_PARAMS: dict[str, tuple[str, ...]] = {"linformer": ("E", "F")}
PROJECTIONS = ("q", "k", "v", "o")


def core_functions(name: str):
    """(forward, backward) of the attention core registered under ``name`` in CORES (lazy import)."""
    validate.option(name, "core", tuple(CORES))
    module_name, fwd, bwd = CORES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        validate.fail("core", f"an importable attention core ({module_name} for {name!r})", str(err))
    return getattr(module, fwd), getattr(module, bwd)


def _rope_functions():
    from ..positional.rope import rope_backward, rope_forward   # lazy: positional is optional here
    return rope_forward, rope_backward


@dataclass
class KVCache:
    """Keys and values of one attention layer for incremental decoding (mutable on purpose).

    k: (B, H, T_max, d_h) and v: (B, H, T_max, d_h) preallocated; positions [0, length) are filled.
    mha_forward(..., kv_cache=cache) writes its new keys/values at [length, length + T) and advances
    ``length``. The keys are stored after RoPE, so a cached key is never rotated twice.
    """

    k: np.ndarray
    v: np.ndarray
    length: int = 0

    @classmethod
    def empty(cls, batch: int, n_heads: int, capacity: int, head_dim: int, dtype=np.float64) -> "KVCache":
        batch = validate.positive_int(batch, "batch")
        n_heads = validate.positive_int(n_heads, "n_heads")
        capacity = validate.positive_int(capacity, "capacity")
        head_dim = validate.positive_int(head_dim, "head_dim")
        dtype = validate.float_dtype(dtype)
        shape = (batch, n_heads, capacity, head_dim)
        return cls(k=np.zeros(shape, dtype=dtype), v=np.zeros(shape, dtype=dtype), length=0)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def check_room(self, batch: int, n_heads: int, head_dim: int, dtype, n_new: int) -> int:
        """Check that this cache fits a step of ``n_new`` positions of (batch, n_heads, head_dim) in
        ``dtype``; returns the current length (the new positions' offset)."""
        validate.array(self.k, "kv_cache.k", shape=(batch, n_heads, None, head_dim), dtype=dtype)
        validate.array(self.v, "kv_cache.v", shape=self.k.shape, dtype=dtype)
        if self.length + n_new > self.capacity:
            validate.fail("kv_cache", f"room for {n_new} more positions (capacity {self.capacity})",
                          f"length {self.length}")
        return self.length


def init_mha(rng, d_model, n_heads, *, bias=True, prefix="attn", std=0.02, out_std=None, dtype=np.float64):
    """Parameters of one attention layer: ``prefix.wq/wk/wv/wo`` (D, D) ~ N(0, std^2) (``wo`` with
    ``out_std``, default std; GPT-2 scales residual projections by 1/sqrt(2 n_layers)) and, with
    ``bias``, zero ``prefix.bq/bk/bv/bo`` (D,)."""
    rng = validate.rng(rng)
    d_model = validate.positive_int(d_model, "d_model")
    n_heads = validate.positive_int(n_heads, "n_heads")
    if d_model % n_heads:
        validate.fail("n_heads", f"a divisor of d_model={d_model}", n_heads)
    std = validate.positive(std, "std")
    out_std = std if out_std is None else validate.positive(out_std, "out_std")
    bias = validate.flag(bias, "bias")
    if not isinstance(prefix, str):
        validate.fail("prefix", "a string", type(prefix).__name__)
    dtype = validate.float_dtype(dtype)
    params = {}
    for name in PROJECTIONS:
        s = out_std if name == "o" else std
        params[f"{prefix}.w{name}"] = (s * rng.standard_normal((d_model, d_model))).astype(dtype)
        if bias:
            params[f"{prefix}.b{name}"] = np.zeros(d_model, dtype=dtype)
    return params


def split_heads(x, n_heads):
    """(B, T, D) -> (B, H, T, D/H)."""
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, d_h) -> (B, T, H d_h)."""
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


class MHACache(NamedTuple):
    proj: dict                 # "q"/"k"/"v"/"o" -> projection cache
    rope: tuple | None         # (rope cache of q, rope cache of k) or None
    core: Any                  # the attention core's cache
    core_name: str
    core_params: dict          # core keyword -> params key (CORE_PARAMS), {} for cores without parameters
    n_heads: int
    decoding: bool             # True when a KV cache was used (no backward)
    x_shape: tuple             # (B, T, D)


def mha_forward(x, params, *, prefix="attn", n_heads, core="reference", causal=True, attn_bias=None, rope=None,
                key_padding_mask=None, kv_cache=None, linears=None, core_options=None, core_params=None):
    """Multi-head attention (Vaswani et al. 2017 §3.2.2), y = merge(core(split(x wq), split(x wk), split(x wv))) wo.

    x: (B, T, D) float; params: dict with ``prefix.wq/wk/wv/wo`` (D, D) and optional ``prefix.bq/...``.
    core: name in CORES. causal: causal mask (top-left without a cache; bottom-right with one, so
    the new queries sit at the end of the cached keys). attn_bias: additive bias broadcastable to
    (B, H, T, T_k) (e.g. ALiBi (H, T, T_k)), cast to x's dtype. rope: None or keyword arguments of
    ``positional.rope.rope_forward`` applied to q and k; if it has no ``positions``, the positions are
    cache_length + 0..T-1. key_padding_mask: bool (B, T_k), True = padded key (T_k includes cached keys).
    kv_cache: a KVCache (decode step, forward-only). linears: projection overrides (see module doc).
    core_options: extra keyword options for the core (e.g. dropout_p/dropout_mask, block sizes).
    core_params: for a core with parameters (CORE_PARAMS, e.g. Linformer's E and F), a dict keyword ->
    params key; mha_backward returns their gradients under those keys.
    Returns y (B, T, D) and an MHACache.
    """
    x = validate.float_array(x, "x", ndim=3)
    b, t, d_model = x.shape
    n_heads = validate.positive_int(n_heads, "n_heads")
    if d_model % n_heads:
        validate.fail("n_heads", f"a divisor of d_model={d_model}", n_heads)
    check_linears(linears)
    validate.params(params, {f"{prefix}.w{n}": (d_model, d_model) for n in PROJECTIONS}, dtype=x.dtype,
                    skip=linears or ())
    validate.flag(causal, "causal")
    core_fwd, _ = core_functions(core)
    core_options = {} if core_options is None else dict(core_options)
    wanted = CORE_PARAMS.get(core, ())
    core_params = {} if core_params is None else core_params
    if not isinstance(core_params, dict) or set(core_params) != set(wanted):
        validate.fail("core_params", f"a dict with the keys {wanted} of core {core!r}", repr(core_params))
    for kw, key in core_params.items():
        if key not in params:
            validate.fail("params", f"a key {key!r} (core parameter {kw} of {core!r})", "none")
        core_options[kw] = params[key]
    if rope is not None and not isinstance(rope, dict):
        validate.fail("rope", "None or a dict of rope_forward keyword arguments", type(rope).__name__)
    if kv_cache is not None and not isinstance(kv_cache, KVCache):
        validate.fail("kv_cache", "a KVCache", type(kv_cache).__name__)
    offset = 0 if kv_cache is None else kv_cache.check_room(b, n_heads, d_model // n_heads, x.dtype, t)
    if attn_bias is not None:
        attn_bias = validate.float_array(attn_bias, "attn_bias").astype(x.dtype, copy=False)

    proj = {}
    heads = {}
    for name in ("q", "k", "v"):
        y, proj[name] = project_forward(x, params, f"{prefix}.w{name}", f"{prefix}.b{name}", linears)
        heads[name] = split_heads(y, n_heads)                               # (B, H, T, d_h)
    q, k, v = heads["q"], heads["k"], heads["v"]
    rope_caches = None
    if rope is not None:
        rope_forward, _ = _rope_functions()
        kw = dict(rope)
        positions = kw.pop("positions", None)
        if positions is None:
            positions = np.arange(offset, offset + t, dtype=np.float64)     # (T,) includes the cache offset
        q, rq = rope_forward(q, positions, **kw)                            # (B, H, T, d_h)
        k, rk = rope_forward(k, positions, **kw)
        rope_caches = (rq, rk)
    alignment = "top_left"
    if kv_cache is not None:
        # written now (the core reads the keys in place), undone below if anything after fails
        saved = (kv_cache.k[:, :, offset:offset + t].copy(), kv_cache.v[:, :, offset:offset + t].copy())
        kv_cache.k[:, :, offset:offset + t] = k
        kv_cache.v[:, :, offset:offset + t] = v
        kv_cache.length = offset + t
        k = kv_cache.k[:, :, :offset + t]                                   # (B, H, T_k, d_h)
        v = kv_cache.v[:, :, :offset + t]
        alignment = "bottom_right"
    try:
        out, core_cache = core_fwd(q, k, v, causal=bool(causal), causal_alignment=alignment, bias=attn_bias,
                                   key_padding_mask=key_padding_mask, **core_options)   # (B, H, T, d_h)
        y, proj["o"] = project_forward(merge_heads(out), params, f"{prefix}.wo", f"{prefix}.bo", linears)
    except BaseException:             # a failed call changes nothing it was given: the cache as it was
        if kv_cache is not None:
            kv_cache.k[:, :, offset:offset + t], kv_cache.v[:, :, offset:offset + t] = saved
            kv_cache.length = offset
        raise
    return y, MHACache(proj=proj, rope=rope_caches, core=core_cache, core_name=core,
                       core_params={kw: core_params[kw] for kw in wanted}, n_heads=n_heads,
                       decoding=kv_cache is not None, x_shape=x.shape)


def mha_backward(dy, cache: MHACache):
    """Backward of mha_forward: chain rule through the output projection, the core's own backward,
    RoPE's backward (dx = R^T dy) and the three input projections, whose dx are summed.

    dy: (B, T, D). Returns dx (B, T, D) and a dict of parameter gradients (keys of the params used,
    or those returned by ``linears`` overrides).
    """
    if not isinstance(cache, MHACache):
        validate.fail("cache", "the MHACache returned by mha_forward", type(cache).__name__)
    if cache.decoding:
        validate.fail("cache", "a cache from mha_forward without kv_cache (decode steps are forward-only)",
                      "a decoding cache")
    dy = validate.float_array(dy, "dy", shape=cache.x_shape)
    grads: dict = {}
    dmerged, g = project_backward(dy, cache.proj["o"])                    # (B, T, D)
    add_grads(grads, g)
    _, core_bwd = core_functions(cache.core_name)
    core_grads = core_bwd(split_heads(dmerged, cache.n_heads), cache.core)
    dq, dk, dv = core_grads[:3]                                            # (B, H, T, d_h) each
    for i, key in enumerate(cache.core_params.values()):                   # the core's own parameters
        add_grads(grads, {key: core_grads[4 + i]})
    if cache.rope is not None:
        _, rope_backward = _rope_functions()
        dq = rope_backward(dq, cache.rope[0])
        dk = rope_backward(dk, cache.rope[1])
    dx = None
    for name, dh in (("q", dq), ("k", dk), ("v", dv)):
        dxi, g = project_backward(merge_heads(dh), cache.proj[name])
        add_grads(grads, g)
        dx = dxi if dx is None else dx + dxi
    return dx, grads
