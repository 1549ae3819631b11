"""The pre-LN transformer block and the trunk both models share (decoder and encoder).

One block (GPT-2 layout, Radford et al. 2019 §2.3; Vaswani et al. 2017 §3 for the sub-layers):

    h <- h + Dropout(MHA(LN_1(h)))                           causal (decoder) or bidirectional (encoder)
    h <- h + Dropout(W_2 GELU(W_1 LN_2(h) + b_1) + b_2)      GELU in its tanh form (GPT-2)

``models/transformer.py`` calls :func:`block_forward` with ``causal=True`` (its KV cache, RoPE positions,
ALiBi bias and attention-dropout seed); ``models/encoder.py`` with ``causal=False`` (its key padding
mask and the attention core's parameters, e.g. Linformer's E, F). Also here: the configuration checks
both configs share, and the names, shapes and GPT-2 initialisation of the trunk's parameters:

    tok_emb (V, D)   pos_emb (max_len, D) ["learned" only]
    blocks.{i}.ln1.weight/bias (D,)   blocks.{i}.attn.wq/wk/wv/wo (D, D), .bq/bk/bv/bo (D,)
    blocks.{i}.ln2.weight/bias (D,)   blocks.{i}.mlp.w1 (D, F) .b1 (F,)  .w2 (F, D) .b2 (D,)
    ln_f.weight/bias (D,)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..attention.multihead import CORES, init_mha, mha_backward, mha_forward
from ..core import validate
from ..core.functional import gelu_backward, gelu_forward
from ..core.layers import (add_grads, dropout_backward, dropout_forward, layer_norm_backward, layer_norm_forward,
                           project_backward, project_forward)

INIT_STD = 0.02


# --- configuration -----------------------------------------------------------------------------------

def check_config_sizes(config, positions: tuple) -> None:
    """The sizes, position scheme, attention core and dropout of a model config (ValueError naming the
    field); sets the default d_ff = 4 d_model. Called from the configs' __post_init__."""
    validate.model_widths(config, ("d_model", "n_layers", "n_heads"))   # then n_heads | d_model, d_ff
    validate.positive_int(config.max_len, "max_len")
    validate.option(config.positions, "positions", positions)
    validate.option(config.attention, "attention", tuple(CORES))
    validate.probability(config.dropout, "dropout")


def check_config_tail(config) -> None:
    """tie_embeddings, ln_eps, and the parity the position scheme needs (rope: even head dimension;
    sinusoidal: even d_model)."""
    validate.flag(config.tie_embeddings, "tie_embeddings")
    validate.positive(config.ln_eps, "ln_eps")
    if config.positions == "rope" and config.head_dim % 2:
        validate.fail("d_model", "an even head dimension d_model / n_heads for rope", config.head_dim)
    if config.positions == "sinusoidal" and config.d_model % 2:
        validate.fail("d_model", "an even integer for sinusoidal positions", config.d_model)


# --- parameters --------------------------------------------------------------------------------------

def trunk_shapes(config) -> dict[str, tuple]:
    """Shapes of the embeddings, the n_layers blocks and ln_f, by name (the head is the model's own)."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    shapes = {"tok_emb": (V, D)}
    if config.positions == "learned":
        shapes["pos_emb"] = (config.max_len, D)
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.weight": (D,), p + "ln1.bias": (D,)})
        for n in "qkvo":
            shapes[p + f"attn.w{n}"] = (D, D)
            shapes[p + f"attn.b{n}"] = (D,)
        shapes.update({p + "ln2.weight": (D,), p + "ln2.bias": (D,), p + "mlp.w1": (D, F), p + "mlp.b1": (F,),
                       p + "mlp.w2": (F, D), p + "mlp.b2": (D,)})
    shapes.update({"ln_f.weight": (D,), "ln_f.bias": (D,)})
    return shapes


def init_trunk(config, rng) -> dict[str, np.ndarray]:
    """GPT-2 initialisation (§2.3) of the trunk_shapes parameters in float64: weights N(0, 0.02^2), the
    residual projections attn.wo and mlp.w2 with std 0.02 / sqrt(2 n_layers), biases 0, norms (1, 0).
    Draws from ``rng`` in a fixed order (embeddings, then block by block)."""
    D, F = config.d_model, config.d_ff
    res_std = INIT_STD / math.sqrt(2 * config.n_layers)
    params = {"tok_emb": INIT_STD * rng.standard_normal((config.vocab_size, D))}
    if config.positions == "learned":
        params["pos_emb"] = INIT_STD * rng.standard_normal((config.max_len, D))
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        params[p + "ln1.weight"], params[p + "ln1.bias"] = np.ones(D), np.zeros(D)
        params.update(init_mha(rng, D, config.n_heads, prefix=p + "attn", std=INIT_STD, out_std=res_std))
        params[p + "ln2.weight"], params[p + "ln2.bias"] = np.ones(D), np.zeros(D)
        params[p + "mlp.w1"], params[p + "mlp.b1"] = INIT_STD * rng.standard_normal((D, F)), np.zeros(F)
        params[p + "mlp.w2"], params[p + "mlp.b2"] = res_std * rng.standard_normal((F, D)), np.zeros(D)
    params["ln_f.weight"], params["ln_f.bias"] = np.ones(D), np.zeros(D)
    return params


# --- the block ---------------------------------------------------------------------------------------

class BlockCache(NamedTuple):
    ln1: Any          # LN_1 cache of h (B, T, D)
    attn: Any         # mha_forward cache
    drop_attn: Any    # dropout cache of the attention branch (B, T, D)
    ln2: Any          # LN_2 cache of h + attention branch (B, T, D)
    fc1: Any          # projection cache, (B, T, D) -> (B, T, F)
    gelu: Any         # GELU cache (B, T, F)
    fc2: Any          # projection cache, (B, T, F) -> (B, T, D)
    drop_mlp: Any     # dropout cache of the MLP branch (B, T, D)


def block_forward(h, params, prefix, *, n_heads, core, causal, ln_eps, p_drop, rng, training, linears=None,
                  attn_bias=None, rope=None, key_padding_mask=None, kv_cache=None, core_options=None,
                  core_params=None):
    """One pre-LN block on the residual stream h (B, T, D) with the parameters ``prefix``ln1.* / attn.* /
    ln2.* / mlp.* (prefix such as "blocks.0."). The attention keywords go to mha_forward unchanged;
    residual-branch dropout (p_drop, training) draws from ``rng``, attention first, then the MLP.
    The callers validate the inputs. Returns the new h (B, T, D) and a BlockCache."""
    p = prefix
    a, c_ln1 = layer_norm_forward(h, params[p + "ln1.weight"], params[p + "ln1.bias"], eps=ln_eps)
    y, c_attn = mha_forward(a, params, prefix=p + "attn", n_heads=n_heads, core=core, causal=causal,
                            attn_bias=attn_bias, rope=rope, key_padding_mask=key_padding_mask, kv_cache=kv_cache,
                            linears=linears, core_options=core_options, core_params=core_params)   # (B, T, D)
    y, c_d1 = dropout_forward(y, p_drop, rng, training)
    h = h + y
    a2, c_ln2 = layer_norm_forward(h, params[p + "ln2.weight"], params[p + "ln2.bias"], eps=ln_eps)
    m, c_fc1 = project_forward(a2, params, p + "mlp.w1", p + "mlp.b1", linears)       # (B, T, F)
    g, c_gelu = gelu_forward(m, approximate="tanh")
    m2, c_fc2 = project_forward(g, params, p + "mlp.w2", p + "mlp.b2", linears)       # (B, T, D)
    m2, c_d2 = dropout_forward(m2, p_drop, rng, training)
    h = h + m2
    return h, BlockCache(c_ln1, c_attn, c_d1, c_ln2, c_fc1, c_gelu, c_fc2, c_d2)


def block_backward(dh, cache: BlockCache, prefix, grads: dict):
    """Reverse of block_forward: dL/dh (B, T, D) of the block's input from dL/dh of its output.
    The parameters' gradients are accumulated into ``grads`` (add_grads: a name already there is
    summed, e.g. a projection shared by layers). The residual stream's gradient is the sum of the skip
    path and the branch (dh += dbranch/dh). Returns dL/dh_in (B, T, D)."""
    validate.cache(cache, BlockCache, "block_forward")
    p = prefix
    c = cache
    dm2 = dropout_backward(dh, c.drop_mlp)
    dg, g = project_backward(dm2, c.fc2)
    add_grads(grads, g)
    dm = gelu_backward(dg, c.gelu)
    da2, g = project_backward(dm, c.fc1)
    add_grads(grads, g)
    dres, dw, db = layer_norm_backward(da2, c.ln2)
    add_grads(grads, {p + "ln2.weight": dw, p + "ln2.bias": db})
    dh = dh + dres                                                         # residual: skip + branch
    dy = dropout_backward(dh, c.drop_attn)
    da, g = mha_backward(dy, c.attn)
    add_grads(grads, g)
    dres, dw, db = layer_norm_backward(da, c.ln1)
    add_grads(grads, {p + "ln1.weight": dw, p + "ln1.bias": db})
    return dh + dres
