"""A bidirectional pre-LN transformer encoder with a masked-LM head, and BERT's masking.

BERT (Devlin et al. 2019, arXiv 1810.04805, §3.1 "Task #1: Masked LM"): every position attends to every
other (no causal mask); 15% of the positions are chosen for prediction, of which 80% are replaced by
[MASK], 10% by a random token and 10% kept, and the model is trained with cross-entropy on the chosen
positions only. The blocks are pre-LN like the decoder of ``models/transformer.py`` (GPT-2 layout,
Radford et al. 2019 §2.3; Xiong et al. 2020, arXiv 2002.04745, for pre-LN in BERT-style encoders):

    h_0 = E[tokens] (+ P[positions])                 or h_0 = X (+ P) with X given (forward_embeddings)
    h  <- h + Dropout(MHA(LN_1(h); key padding))     bidirectional: every key visible unless padded
    h  <- h + Dropout(W_2 GELU(W_1 LN_2(h) + b_1) + b_2)
    hidden = LN_f(h)                                 encode(): the final hidden states (B, T, D)
    logits = hidden W_mlm + b_mlm                    (W_mlm = E^T with tie_embeddings)

Tokenizer-agnostic: ``vocab_size`` and ``mask_id`` are configuration; :func:`mask_tokens` takes them
as arguments. The attention core is chosen by name (``config.attention``, a key of
``attention.multihead.CORES``) exactly as in the decoder. Deviations from BERT, stated once: pre-LN
instead of post-LN, no next-sentence head or token-type embeddings, no hidden transform before the
MLM decoder (``LN_f`` plays that role), and dropout on embeddings and residual branches only (not on
the attention probabilities).

Parameters (flat dict; the decoder's names and init, N(0, 0.02^2), residual projections ``attn.wo``
and ``mlp.w2`` with std 0.02 / sqrt(2 n_layers), norms (1, 0), biases 0):

    tok_emb (V, D)   pos_emb (max_len, D) ["learned" only]
    blocks.{i}.ln1.weight/bias (D,)  blocks.{i}.attn.wq/wk/wv/wo (D, D), .bq/bk/bv/bo (D,)
    blocks.{i}.ln2.weight/bias (D,)  blocks.{i}.mlp.w1 (D, F) .b1 (F,)  .w2 (F, D) .b2 (D,)
    ln_f.weight/bias (D,)            mlm_head.w (D, V) [unless tie_embeddings]   mlm_head.b (V,)
    blocks.{i}.attn.E / .F (k, max_len) or linformer.E [attention="linformer"; names and shapes by the
    sharing mode, see linformer.projection_names; initialised N(0, 1/k), the JL projection of Lemma 1]

Soft prompts (Lester et al. 2021) prepend learned vectors to the token embeddings: build the
embeddings with :func:`embed`, concatenate, call :func:`forward_embeddings`, and
:func:`backward_inputs` returns the gradient with respect to those input embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.layers import (cross_entropy_backward, cross_entropy_forward, dropout_backward, dropout_forward,
                           embedding_backward, embedding_forward, layer_norm_backward, layer_norm_forward,
                           add_grads, linear_backward, linear_forward, project_backward, project_forward)
from ..linformer import SHARING, init_projection, projection_names, projection_shapes
from .blocks import (INIT_STD, BlockCache, block_backward, block_forward, check_config_sizes,  # noqa: F401
                     check_config_tail, init_trunk, trunk_shapes)
from .masking import IGNORE, mask_tokens  # noqa: F401  (part of this module's API)

POSITIONS = ("learned", "sinusoidal", "rope", "none")


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters; every value is validated on construction (ValueError naming the field)."""

    vocab_size: int
    mask_id: int                     # the [MASK] token id, in [0, vocab_size)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None          # default 4 * d_model
    max_len: int = 256               # longest sequence (learned position table size)
    positions: str = "learned"
    attention: str = "reference"     # a core name of attention.multihead.CORES
    proj_k: int | None = None        # Linformer (attention="linformer"): projected length k
    sharing: str = "headwise"        # Linformer: how E, F are shared (linformer.SHARING)
    dropout: float = 0.0             # embeddings and residual branches
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    ln_eps: float = 1e-5

    def __post_init__(self):
        validate.positive_int(self.vocab_size, "vocab_size")
        validate.integer(self.mask_id, "mask_id", low=0, high=self.vocab_size - 1)
        check_config_sizes(self, POSITIONS)              # d_model .. dropout, shared with the decoder
        validate.option(self.sharing, "sharing", SHARING)
        if self.attention == "linformer":
            validate.positive_int(self.proj_k, "proj_k")
        elif self.proj_k is not None:
            validate.fail("proj_k", "None unless attention='linformer'", self.proj_k)
        validate.real(self.rope_base, "rope_base", low=1.0, low_open=True)
        check_config_tail(self)                          # tie_embeddings, ln_eps, position parity

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _check_config(config) -> EncoderConfig:
    if not isinstance(config, EncoderConfig):
        validate.fail("config", "an EncoderConfig", type(config).__name__)
    return config


def param_shapes(config: EncoderConfig) -> dict[str, tuple]:
    """The shape of every parameter, by name (the keys of init_params and of the gradients)."""
    _check_config(config)
    D, V = config.d_model, config.vocab_size
    shapes = trunk_shapes(config)                    # embeddings, blocks, ln_f (models/blocks.py)
    if not config.tie_embeddings:
        shapes["mlm_head.w"] = (D, V)
    shapes["mlm_head.b"] = (V,)
    if config.attention == "linformer":                       # E, F: (k, max_len) or (H, k, max_len)
        shapes.update(projection_shapes(config.n_layers, config.n_heads, config.proj_k, config.max_len,
                                        config.sharing))
    return shapes


def _core_params(config, layer):
    """The attention core's parameters of one layer (Linformer's E, F by sharing mode), else None."""
    if config.attention != "linformer":
        return None
    e, f = projection_names(f"blocks.{layer}.attn", layer, config.sharing)
    return {"E": e, "F": f}


def init_params(config: EncoderConfig, rng, dtype=np.float64) -> dict[str, np.ndarray]:
    """The decoder's initialisation (GPT-2 §2.3): weights N(0, 0.02^2), residual projections with
    std 0.02 / sqrt(2 n_layers), biases 0, layer norms (1, 0)."""
    _check_config(config)
    rng = validate.rng(rng)
    dtype = np.dtype(dtype)
    if dtype not in validate.FLOAT_DTYPES:
        validate.fail("dtype", "float32 or float64", dtype)
    D, V = config.d_model, config.vocab_size
    params = init_trunk(config, rng)                 # embeddings, blocks, ln_f (models/blocks.py)
    if not config.tie_embeddings:
        params["mlm_head.w"] = INIT_STD * rng.standard_normal((D, V))
    params["mlm_head.b"] = np.zeros(V)
    for name, shape in param_shapes(config).items():
        if name not in params:                                 # Linformer's E, F: the JL projection
            params[name] = init_projection(rng, shape)
    return {k: v.astype(dtype) for k, v in params.items()}


# --- forward / backward ------------------------------------------------------------------------------

class EncoderCache(NamedTuple):
    emb: Any                       # EmbeddingCache of the tokens; None when embeddings were given
    drop_emb: Any
    blocks: list                   # BlockCache per layer
    ln_f: Any
    head: Any                      # projection / linear cache of the MLM head; None: hidden states out
    tied: bool
    learned_pos: tuple | None      # (T, max_len, D) for the pos_emb gradient
    x_shape: tuple                 # (B, T, D)
    out_shape: tuple               # (B, T, V) logits or (B, T, D) hidden states
    dtype: np.dtype


def _check_params(params, config, linears):
    if not isinstance(params, dict):
        validate.fail("params", "a dict name -> array", type(params).__name__)
    if "tok_emb" not in params:
        validate.fail("params", "a key 'tok_emb'", "none")
    dtype = validate.float_array(params["tok_emb"], "params['tok_emb']").dtype
    for name, shape in param_shapes(config).items():
        if linears is not None and name in linears:
            continue
        if name not in params:
            validate.fail("params", f"a key {name!r} (see param_shapes(config))", "none")
        validate.array(params[name], f"params[{name!r}]", shape=shape, dtype=dtype)
    return dtype


def embed(params, config, tokens) -> np.ndarray:
    """Token embeddings E[tokens] (B, T, D), without positions: what forward_embeddings expects."""
    config = _check_config(config)
    if not isinstance(params, dict) or "tok_emb" not in params:
        validate.fail("params", "a dict with a key 'tok_emb'", type(params).__name__)
    validate.float_array(params["tok_emb"], "params['tok_emb']", shape=(config.vocab_size, config.d_model))
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    return params["tok_emb"][tokens]


def forward(params, config, tokens, *, padding_mask=None, rng=None, training=False, linears=None,
            return_hidden=False):
    """MLM logits (B, T, V), or with return_hidden=True the final hidden states LN_f(h) (B, T, D).

    tokens: (B, T) int in [0, V), T <= max_len. padding_mask: bool (B, T), True = padded position (never
    attended to; its own output is computed but meaningless). training=True with config.dropout > 0
    draws dropout masks from ``rng``. linears: projection overrides by weight name (LoRA).
    Returns (output, EncoderCache) for backward.
    """
    training = validate.flag(training, "training")
    return_hidden = validate.flag(return_hidden, "return_hidden")
    config = _check_config(config)
    _check_params(params, config, linears)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    x, c_emb = embedding_forward(tokens, params["tok_emb"])                      # (B, T, D)
    return _encode(params, config, x, c_emb, padding_mask, rng, training, linears, return_hidden)


def forward_embeddings(params, config, embeddings, *, padding_mask=None, rng=None, training=False, linears=None,
                       return_hidden=False):
    """forward() from input embeddings X (B, T, D) instead of token ids (positions are still added).

    For soft prompts: X = concat(prompt vectors, embed(params, config, tokens)). backward_inputs gives
    dL/dX. Non-finite values in X propagate to NaN in the outputs, as the formula does.
    """
    training = validate.flag(training, "training")
    return_hidden = validate.flag(return_hidden, "return_hidden")
    config = _check_config(config)
    dtype = _check_params(params, config, linears)
    x = validate.array(embeddings, "embeddings", ndim=3, dtype=dtype)
    if x.shape[2] != config.d_model:
        validate.fail("embeddings", f"shape (B, T, {config.d_model})", x.shape)
    return _encode(params, config, x, None, padding_mask, rng, training, linears, return_hidden)


def encode(params, config, tokens, **kw):
    """The final hidden states LN_f(h) (B, T, D) and the cache: forward(..., return_hidden=True)."""
    return forward(params, config, tokens, return_hidden=True, **kw)


def _encode(params, config, x, c_emb, padding_mask, rng, training, linears, return_hidden):
    B, T, D = x.shape
    if T < 1 or T > config.max_len:
        validate.fail("tokens", f"between 1 and max_len={config.max_len} positions", T)
    if padding_mask is not None:
        padding_mask = validate.bool_array(padding_mask, "padding_mask", shape=(B, T))
    validate.flag(training, "training")
    validate.flag(return_hidden, "return_hidden")
    if linears is not None and not isinstance(linears, dict):
        validate.fail("linears", "a dict weight name -> linear object", type(linears).__name__)
    p_drop = config.dropout if training else 0.0
    if p_drop > 0:
        rng = validate.rng(rng, "rng")
    dtype = x.dtype

    h = x
    learned_pos = None
    rope = None
    if config.positions == "learned":
        h = h + params["pos_emb"][:T]
        learned_pos = (T, config.max_len, D)
    elif config.positions == "sinusoidal":
        from ..positional.sinusoidal import sinusoidal_table
        h = h + sinusoidal_table(T, D).astype(dtype)
    elif config.positions == "rope":
        rope = {"positions": np.arange(T, dtype=np.float64), "base": config.rope_base}
    h, c_drop_emb = dropout_forward(h, p_drop, rng, training)                      # (B, T, D)
    blocks = []
    for i in range(config.n_layers):
        h, c_block = block_forward(h, params, f"blocks.{i}.", n_heads=config.n_heads, core=config.attention,
                                   causal=False, ln_eps=config.ln_eps, p_drop=p_drop, rng=rng, training=training,
                                   linears=linears, rope=rope, key_padding_mask=padding_mask,
                                   core_params=_core_params(config, i))      # (B, T, D)
        blocks.append(c_block)
    hf, c_lnf = layer_norm_forward(h, params["ln_f.weight"], params["ln_f.bias"], eps=config.ln_eps)
    c_head = None
    out = hf                                                                      # (B, T, D)
    if not return_hidden:
        if config.tie_embeddings:
            out, c_head = linear_forward(hf, params["tok_emb"].T, params["mlm_head.b"])     # (B, T, V)
        else:
            out, c_head = project_forward(hf, params, "mlm_head.w", "mlm_head.b", linears)  # (B, T, V)
    cache = EncoderCache(emb=c_emb, drop_emb=c_drop_emb, blocks=blocks, ln_f=c_lnf, head=c_head,
                         tied=bool(config.tie_embeddings), learned_pos=learned_pos, x_shape=x.shape,
                         out_shape=out.shape, dtype=dtype)
    return out, cache


def backward_inputs(dout, cache: EncoderCache):
    """Gradient with respect to the input embeddings X (B, T, D) and the parameters' gradients.

    dout: dL/dlogits (B, T, V), or dL/dhidden (B, T, D) when the forward returned hidden states.
    For a forward from tokens, X = E[tokens] and the grads dict has no 'tok_emb' entry from the
    input side (backward() adds it); for forward_embeddings, dX is what a soft prompt is trained on.
    """
    validate.cache(cache, EncoderCache, "forward / forward_embeddings")
    dout = validate.array(dout, "dout", shape=cache.out_shape, dtype=cache.dtype)
    grads: dict = {}
    dhf = dout
    if cache.head is not None:
        if cache.tied:
            dhf, dw, db = linear_backward(dout, cache.head)                        # dw = d(E^T): (D, V)
            add_grads(grads, {"tok_emb": dw.T, "mlm_head.b": db})
        else:
            dhf, g = project_backward(dout, cache.head)
            add_grads(grads, g)
    dh, dw, db = layer_norm_backward(dhf, cache.ln_f)                             # (B, T, D)
    add_grads(grads, {"ln_f.weight": dw, "ln_f.bias": db})
    for i in reversed(range(len(cache.blocks))):
        dh = block_backward(dh, cache.blocks[i], f"blocks.{i}.", grads)          # (B, T, D), grads accumulated
    dh = dropout_backward(dh, cache.drop_emb)                                     # dL/dh_0 (B, T, D)
    if cache.learned_pos is not None:
        t, max_len, d = cache.learned_pos
        dpos = np.zeros((max_len, d), dtype=cache.dtype)
        dpos[:t] = dh.sum(axis=0)                                                 # positions shared over the batch
        add_grads(grads, {"pos_emb": dpos})
    return dh, grads                                                              # h_0 = X + P: dX = dh_0


def backward(dout, cache: EncoderCache) -> dict[str, np.ndarray]:
    """Gradients of every parameter used by forward (same keys as params; with ``linears``, the
    overrides' keys instead of the weights they replace). Reverse of forward, op by op."""
    dx, grads = backward_inputs(dout, cache)
    if cache.emb is not None:
        add_grads(grads, {"tok_emb": embedding_backward(dx, cache.emb)})
    return grads


def mlm_loss_and_grads(params, config, inputs, targets, *, padding_mask=None, rng=None, linears=None):
    """Masked-LM loss: mean cross-entropy over the positions with targets != -100 (BERT §3.1), and its
    gradients (training mode: dropout from ``rng`` when config.dropout > 0).

    inputs: (B, T) corrupted tokens and targets (B, T) from mask_tokens. Returns (loss, grads).
    """
    config = _check_config(config)
    if config.dropout > 0 and rng is None:
        validate.fail("rng", "a numpy.random.Generator when config.dropout > 0", "None")
    logits, cache = forward(params, config, inputs, padding_mask=padding_mask, rng=rng, training=True,
                            linears=linears)
    loss, c_ce = cross_entropy_forward(logits, targets, ignore_index=IGNORE)
    return loss, backward(cross_entropy_backward(1.0, c_ce), cache)


def mlm_loss(params, config, inputs, targets, *, padding_mask=None, linears=None, batch=64) -> float:
    """Mean masked-LM cross-entropy (nats per scored position) in evaluation mode, ``batch`` rows at a time."""
    config = _check_config(config)
    inputs = validate.int_array(inputs, "inputs", ndim=2, low=0, high=config.vocab_size)
    targets = validate.int_array(targets, "targets", shape=inputs.shape)
    batch = validate.positive_int(batch, "batch")
    total, count = 0.0, 0
    for s in range(0, len(inputs), batch):
        pm = None if padding_mask is None else padding_mask[s:s + batch]
        logits, _ = forward(params, config, inputs[s:s + batch], padding_mask=pm, linears=linears)
        t = targets[s:s + batch]
        n = int(np.sum(t != IGNORE))
        if n:
            loss, _ = cross_entropy_forward(logits, t, ignore_index=IGNORE, reduction="sum")
            total += loss
            count += n
    return total / max(count, 1)
