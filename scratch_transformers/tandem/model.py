"""The Tandem secondary model M_S (Tandem Transformers, arXiv 2402.08644, eq. 2), trained with M_L frozen.

For every M_S layer j = 0..L_S-1 (pre-LN residual blocks, GPT-2 layout as ``models.transformer``; eq. 2
writes no residuals or norms):

    y_hat^(j) = x^(l(j)) W_T^(j) + b_T^(j)                          FF_Tandem^(j): M_L row -> M_S width
    y^(j+1)   = y^(j) + Atn_S(LN_1(y^(j)) | LN_1(y_hat^(j))_{m < c(r)}, LN_1(y^(j))_{c(r) <= m <= r})
    y^(j+1)  <- y^(j+1) + MLP(LN_2(y^(j+1)))
    logits    = LN_f(y^(L_S)) W_head                                 M_S's own LM head

x^(l) is M_L's representation after layer l (x^(0): its embeddings); M_L is frozen (the paper's best
configuration, §3), so its rows are inputs here (``ml_states``: {l: (B, S, d_L)}) and get no gradient.
The projected rows go through M_S's own LN_1 and W_K, W_V of layer j (our choice: eq. 2 puts y_hat in
the place of y, and the paper does not say whether the norm applies; see derivations/tandem.md).

Parameters: those of a ``models.transformer`` LM with learned positions and an untied head (so a trained
standalone M_S initialises Tandem's M_S directly) plus ``tandem.{j}.w`` (d_L, D) and ``tandem.{j}.b`` (D,).

Cached decoding (:class:`TandemState`, :func:`add_ml_rows`, :func:`decode`) keeps, per layer, the keys and
values of the projected M_L rows and of M_S's own rows by absolute position; a query with context c
attends to M_L rows < c and own rows c..r, so it equals the full forward (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import gelu, gelu_backward, gelu_forward
from ..core.layers import (embedding_backward, embedding_forward, layer_norm_backward, layer_norm_forward,
                           linear_backward, linear_forward)
from .attention import (CONVENTIONS, block_contexts, merge_heads, split_heads, tandem_attention_backward,
                        tandem_attention_forward, tandem_mask)

INIT_STD = 0.02


@dataclass(frozen=True)
class TandemConfig:
    """M_S hyper-parameters and the Tandem wiring; validated on construction."""

    vocab_size: int
    d_model: int                     # d_S
    n_layers: int                    # L_S
    n_heads: int
    d_large: int                     # d_L, width of M_L's representations
    large_layers: int                # L_L (x^(0..L_L) exist)
    layer_map: tuple | None = None   # l(j) for j = 0..L_S-1; default: M_L's last layer for every j
    gamma: int = 2                   # training block length (the paper trains with 2)
    convention: str = "figure"       # block boundary: "figure" (default) or "printed" (eq. 2 as printed)
    d_ff: int | None = None          # default 4 d_S
    max_len: int = 256
    ln_eps: float = 1e-5

    def __post_init__(self):
        validate.model_widths(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_large", "large_layers",
                                     "gamma", "max_len"))         # then n_heads | d_model, d_ff (4 d_model)
        lm = (self.large_layers,) * self.n_layers if self.layer_map is None else tuple(self.layer_map)
        if len(lm) != self.n_layers or not all(isinstance(v, (int, np.integer)) and 0 <= v <= self.large_layers
                                               for v in lm):
            validate.fail("layer_map", f"{self.n_layers} ints in [0, {self.large_layers}]", self.layer_map)
        object.__setattr__(self, "layer_map", tuple(int(v) for v in lm))
        validate.option(self.convention, "convention", CONVENTIONS)
        validate.positive(self.ln_eps, "ln_eps")

    @property
    def ml_layers(self) -> tuple:
        """The M_L layers whose representations M_S reads, sorted."""
        return tuple(sorted(set(self.layer_map)))


def _check_config(config):
    if not isinstance(config, TandemConfig):
        validate.fail("config", "a TandemConfig", type(config).__name__)
    return config


def param_shapes(config) -> dict:
    config = _check_config(config)
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    shapes = {"tok_emb": (V, D), "pos_emb": (config.max_len, D)}
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.weight": (D,), p + "ln1.bias": (D,)})
        for n in "qkvo":
            shapes.update({p + f"attn.w{n}": (D, D), p + f"attn.b{n}": (D,)})
        shapes.update({p + "ln2.weight": (D,), p + "ln2.bias": (D,), p + "mlp.w1": (D, F), p + "mlp.b1": (F,),
                       p + "mlp.w2": (F, D), p + "mlp.b2": (D,)})
        shapes.update({f"tandem.{i}.w": (config.d_large, D), f"tandem.{i}.b": (D,)})
    shapes.update({"ln_f.weight": (D,), "ln_f.bias": (D,), "lm_head": (D, V)})
    return shapes


def init_params(config, rng, small_params=None, dtype=np.float64) -> dict:
    """M_S from ``small_params`` (a ``models.transformer`` dict of matching shapes, copied) or GPT-2-style
    random init; the projections W_T^(j) ~ N(0, 1/d_L), b_T = 0 (randomly initialised, as in the paper)."""
    config = _check_config(config)
    rng = validate.rng(rng)
    shapes = param_shapes(config)
    params = {}
    res_std = INIT_STD / math.sqrt(2 * config.n_layers)
    for name, shape in shapes.items():
        if small_params is not None and not name.startswith("tandem."):
            if name not in small_params:
                validate.fail("small_params", f"a key {name!r}", "none")
            params[name] = validate.array(small_params[name], f"small_params[{name!r}]", shape=shape).copy()
        elif name.startswith("tandem.") and name.endswith(".w"):
            params[name] = rng.standard_normal(shape) / math.sqrt(config.d_large)
        elif name.endswith((".weight",)):
            params[name] = np.ones(shape)
        elif len(shape) == 1:
            params[name] = np.zeros(shape)
        else:
            std = res_std if name.endswith(("attn.wo", "mlp.w2")) else INIT_STD
            params[name] = std * rng.standard_normal(shape)
    return {k: v.astype(dtype) for k, v in params.items()}


def check_params(params, config) -> np.dtype:
    """Every key of param_shapes(config) present with its shape and one float dtype; returns the dtype.
    (A plain loop, not validate.array per key: decode calls it on every step.)"""
    if not isinstance(params, dict) or "tok_emb" not in params:
        validate.fail("params", "a dict with the keys of param_shapes(config)", type(params).__name__)
    dtype = validate.float_array(params["tok_emb"], "params['tok_emb']").dtype
    for name, shape in param_shapes(config).items():
        x = params.get(name)
        if not isinstance(x, np.ndarray) or x.shape != shape or x.dtype != dtype:
            validate.fail(f"params[{name!r}]", f"an array of shape {shape} and dtype {dtype}",
                          "none" if x is None else getattr(x, "shape", type(x).__name__))
    return dtype


def check_ml_states(ml_states, config, batch, n, dtype) -> dict:
    """{l: (B, n, d_L)} for every l in config.layer_map, finite dtype-matching arrays."""
    if not isinstance(ml_states, dict):
        validate.fail("ml_states", "a dict M_L layer -> (B, S, d_L) array", type(ml_states).__name__)
    for l in config.ml_layers:
        if l not in ml_states:
            validate.fail("ml_states", f"M_L layer {l} (layer_map {config.layer_map})", sorted(ml_states))
        validate.array(ml_states[l], f"ml_states[{l}]", shape=(batch, n, config.d_large), dtype=dtype)
    return ml_states


class LayerCache(NamedTuple):
    proj: Any            # LinearCache of y_hat = x^(l) W_T + b_T    (B, S, D)
    ln1: Any             # LayerNormCache of the own rows
    ln1_ml: Any          # LayerNormCache of the projected M_L rows
    attn: Any            # TandemAttentionCache
    ln2: Any
    fc1: Any
    gelu: Any
    fc2: Any


class TandemCache(NamedTuple):
    emb: Any
    layers: list
    ln_f: Any
    head: Any
    seq: tuple           # (B, S, max_len, D) for the pos_emb gradient


def forward(params, config, tokens, ml_states, *, contexts=None):
    """Teacher-forced Tandem M_S over whole sequences (training; the paper's one-pass setup).

    tokens: (B, S) int; ml_states: {l: (B, S, d_L)} M_L's x^(l) of the same tokens; contexts: (S,) c(r)
    (default: block_contexts(S, config.gamma, config.convention)). Returns logits (B, S, V), TandemCache.
    """
    config = _check_config(config)
    dtype = check_params(params, config)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    B, S = tokens.shape
    if not 1 <= S <= config.max_len:
        validate.fail("tokens", f"1 .. max_len={config.max_len} positions", S)
    ml_states = check_ml_states(ml_states, config, B, S, dtype)
    if contexts is None:
        contexts = block_contexts(S, config.gamma, config.convention)
    h, c_emb = embedding_forward(tokens, params["tok_emb"])                        # (B, S, D)
    h = h + params["pos_emb"][:S]
    layers = []
    for j in range(config.n_layers):
        p = f"blocks.{j}."
        y_hat, c_proj = linear_forward(ml_states[config.layer_map[j]], params[f"tandem.{j}.w"],
                                       params[f"tandem.{j}.b"])                    # (B, S, D)
        a, c_ln1 = layer_norm_forward(h, params[p + "ln1.weight"], params[p + "ln1.bias"], eps=config.ln_eps)
        a_ml, c_ln1m = layer_norm_forward(y_hat, params[p + "ln1.weight"], params[p + "ln1.bias"], eps=config.ln_eps)
        att, c_att = tandem_attention_forward(a, a_ml, params, prefix=p + "attn", n_heads=config.n_heads,
                                              contexts=contexts)                  # (B, S, D)
        h = h + att
        a2, c_ln2 = layer_norm_forward(h, params[p + "ln2.weight"], params[p + "ln2.bias"], eps=config.ln_eps)
        m, c_fc1 = linear_forward(a2, params[p + "mlp.w1"], params[p + "mlp.b1"])    # (B, S, F)
        g, c_gelu = gelu_forward(m, approximate="tanh")
        m2, c_fc2 = linear_forward(g, params[p + "mlp.w2"], params[p + "mlp.b2"])    # (B, S, D)
        h = h + m2
        layers.append(LayerCache(c_proj, c_ln1, c_ln1m, c_att, c_ln2, c_fc1, c_gelu, c_fc2))
    hf, c_lnf = layer_norm_forward(h, params["ln_f.weight"], params["ln_f.bias"], eps=config.ln_eps)
    logits, c_head = linear_forward(hf, params["lm_head"])                         # (B, S, V)
    return logits, TandemCache(c_emb, layers, c_lnf, c_head, (B, S, config.max_len, config.d_model))


def backward(dlogits, cache: TandemCache) -> dict:
    """Gradients of every M_S parameter and projection W_T^(j), b_T^(j) (M_L frozen: none for ml_states)."""
    if not isinstance(cache, TandemCache):
        validate.fail("cache", "the TandemCache of tandem.model.forward", type(cache).__name__)
    B, S, max_len, D = cache.seq
    dlogits = validate.float_array(dlogits, "dlogits", shape=(B, S, cache.head.w.shape[1]))
    grads = {}
    dhf, grads["lm_head"], _ = linear_backward(dlogits, cache.head)
    dh, grads["ln_f.weight"], grads["ln_f.bias"] = layer_norm_backward(dhf, cache.ln_f)
    for j in reversed(range(len(cache.layers))):
        c, p = cache.layers[j], f"blocks.{j}."
        dg, grads[p + "mlp.w2"], grads[p + "mlp.b2"] = linear_backward(dh, c.fc2)
        da2, grads[p + "mlp.w1"], grads[p + "mlp.b1"] = linear_backward(gelu_backward(dg, c.gelu), c.fc1)
        dres, grads[p + "ln2.weight"], grads[p + "ln2.bias"] = layer_norm_backward(da2, c.ln2)
        dh = dh + dres                                                             # skip + MLP branch
        da, da_ml, g = tandem_attention_backward(dh, c.attn)
        grads.update(g)
        dres, dw1, db1 = layer_norm_backward(da, c.ln1)
        dy_hat, dw2, db2 = layer_norm_backward(da_ml, c.ln1_ml)                    # LN_1 shared by both rows
        grads[p + "ln1.weight"], grads[p + "ln1.bias"] = dw1 + dw2, db1 + db2
        _, grads[f"tandem.{j}.w"], grads[f"tandem.{j}.b"] = linear_backward(dy_hat, c.proj)
        dh = dh + dres                                                             # skip + attention branch
    dpos = np.zeros((max_len, D), dtype=dh.dtype)
    dpos[:S] = dh.sum(axis=0)
    grads["pos_emb"] = dpos
    grads["tok_emb"] = embedding_backward(dh, cache.emb)
    return grads


# --- cached incremental decoding (forward only) --------------------------------------------------

@dataclass
class TandemState:
    """Per-layer keys/values (B, H, max_len, d_h) of the projected M_L rows (positions 0..ml_length-1)
    and of M_S's own rows (positions 0..own_length-1, each computed with its own context)."""

    ml_k: list
    ml_v: list
    own_k: list
    own_v: list
    ml_length: int = 0
    own_length: int = 0

    def rollback(self, *, ml_length=None, own_length=None):
        """Forget M_L rows >= ml_length and own rows >= own_length (validated before anything changes)."""
        ml = self.ml_length if ml_length is None else validate.integer(ml_length, "ml_length", low=0,
                                                                           high=self.ml_length)
        own = self.own_length if own_length is None else validate.integer(own_length, "own_length", low=0,
                                                                              high=self.own_length)
        self.ml_length, self.own_length = ml, own


def new_state(config, batch=1, dtype=np.float64) -> TandemState:
    config = _check_config(config)
    batch = validate.positive_int(batch, "batch")
    shape = (batch, config.n_heads, config.max_len, config.d_model // config.n_heads)
    z = lambda: [np.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]   # noqa: E731
    return TandemState(z(), z(), z(), z())


def _check_state(state, config, dtype):
    if not isinstance(state, TandemState) or len(state.ml_k) != config.n_layers:
        validate.fail("state", "a TandemState from new_state(config)", type(state).__name__)
    validate.array(state.ml_k[0], "state.ml_k[0]", shape=(None, config.n_heads, config.max_len, None), dtype=dtype)
    return state.ml_k[0].shape[0]


def add_ml_rows(params, config, state, ml_states):
    """Append M_L's representations of the next tokens (positions ml_length ..): per layer j, project
    with FF_Tandem^(j), normalise with LN_1^(j), store K, V. ml_states: {l: (B, t, d_L)}."""
    config = _check_config(config)
    dtype = check_params(params, config)
    batch = _check_state(state, config, dtype)
    first = ml_states.get(config.ml_layers[0]) if isinstance(ml_states, dict) else None
    t = validate.array(first, "ml_states", ndim=3).shape[1]
    check_ml_states(ml_states, config, batch, t, dtype)
    if state.ml_length + t > config.max_len:
        validate.fail("ml_states", f"at most {config.max_len - state.ml_length} rows (max_len)", t)
    s = state.ml_length
    for j in range(config.n_layers):
        p = f"blocks.{j}."
        y_hat = ml_states[config.layer_map[j]] @ params[f"tandem.{j}.w"] + params[f"tandem.{j}.b"]
        a_ml = _ln(y_hat, params[p + "ln1.weight"], params[p + "ln1.bias"], config.ln_eps)
        state.ml_k[j][:, :, s:s + t] = split_heads(a_ml @ params[p + "attn.wk"] + params[p + "attn.bk"], config.n_heads)
        state.ml_v[j][:, :, s:s + t] = split_heads(a_ml @ params[p + "attn.wv"] + params[p + "attn.bv"], config.n_heads)
    state.ml_length = s + t


def decode(params, config, state, tokens, *, contexts, position=None):
    """Run M_S on new tokens (B, t) at positions position .. position+t-1 (default: state.own_length),
    each query r attending to M_L rows < contexts[r] and own rows contexts[r] .. r. contexts: int or (t,).
    Own rows before ``position`` that a query uses must be in the state. Returns logits (B, t, V)."""
    config = _check_config(config)
    dtype = check_params(params, config)
    batch = _check_state(state, config, dtype)
    tokens = validate.int_array(tokens, "tokens", shape=(batch, None), low=0, high=config.vocab_size)
    t = tokens.shape[1]
    pos0 = state.own_length if position is None else validate.integer(position, "position", low=0)
    if t < 1 or pos0 + t > config.max_len:
        validate.fail("tokens", f"1 .. {config.max_len - pos0} positions (max_len)", t)
    positions = np.arange(pos0, pos0 + t)
    ctx = np.broadcast_to(validate.int_array(np.asarray(contexts), "contexts", low=0), (t,))
    if np.any(ctx > np.minimum(positions + 1, state.ml_length)):
        validate.fail("contexts", f"c(r) <= min(r + 1, ml_length = {state.ml_length})", ctx)
    if pos0 > state.own_length and np.any(ctx < pos0):
        validate.fail("position", f"<= own_length = {state.own_length} when a query uses own rows before it", pos0)
    n_own = pos0 + t
    bias = np.where(tandem_mask(ctx, positions, state.ml_length, n_own), 0.0, -np.inf).astype(dtype)   # (t, M + n_own)
    scale = dtype.type(1.0 / math.sqrt(config.d_model // config.n_heads))
    h = params["tok_emb"][tokens] + params["pos_emb"][pos0:pos0 + t]                  # (B, t, D)
    # The same formulas as forward, written out with plain NumPy (no per-op validation on a decode step);
    # tests check that the logits equal the full forward's.
    for j in range(config.n_layers):
        p = f"blocks.{j}."
        a = _ln(h, params[p + "ln1.weight"], params[p + "ln1.bias"], config.ln_eps)
        q = split_heads(a @ params[p + "attn.wq"] + params[p + "attn.bq"], config.n_heads)   # (B, H, t, d_h)
        state.own_k[j][:, :, pos0:n_own] = split_heads(a @ params[p + "attn.wk"] + params[p + "attn.bk"],
                                                       config.n_heads)
        state.own_v[j][:, :, pos0:n_own] = split_heads(a @ params[p + "attn.wv"] + params[p + "attn.bv"],
                                                       config.n_heads)
        k = np.concatenate([state.ml_k[j][:, :, :state.ml_length], state.own_k[j][:, :, :n_own]], axis=2)
        v = np.concatenate([state.ml_v[j][:, :, :state.ml_length], state.own_v[j][:, :, :n_own]], axis=2)
        s = scale * (q @ k.swapaxes(-1, -2)) + bias                                        # (B, H, t, M + n_own)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        out = (e / e.sum(axis=-1, keepdims=True)) @ v                                       # (B, H, t, d_h)
        h = h + merge_heads(out) @ params[p + "attn.wo"] + params[p + "attn.bo"]
        a2 = _ln(h, params[p + "ln2.weight"], params[p + "ln2.bias"], config.ln_eps)
        h = h + gelu(a2 @ params[p + "mlp.w1"] + params[p + "mlp.b1"]) @ params[p + "mlp.w2"] + params[p + "mlp.b2"]
    state.own_length = n_own
    return _ln(h, params["ln_f.weight"], params["ln_f.bias"], config.ln_eps) @ params["lm_head"]


def _ln(x, w, b, eps):
    """Layer norm (core.layers.layer_norm_forward's formula, without its checks)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + x.dtype.type(eps)) * w + b
