"""The baseline: a small decoder-only pre-LN transformer LM with a hand-written backward.

GPT-2 layout (Radford et al. 2019, §2.3: layer norm moved to the input of each sub-block, a final
layer norm after the last block; Vaswani et al. 2017 §3 for the blocks themselves):

    h_0 = E[tokens] (+ P[positions])                          token (+ learned or sinusoidal) embedding
    h  <- h + Dropout(MHA(LN_1(h)))                           for each of the n_layers blocks
    h  <- h + Dropout(W_2 GELU(W_1 LN_2(h) + b_1) + b_2)      GELU in its tanh form (GPT-2)
    logits = LN_f(h) W_head                                   (W_head = E^T with tie_embeddings)

One difference from GPT-2 by default: the LM head is a separate, untied matrix ``lm_head``
(``tie_embeddings=False``); GPT-2 ties it to the token embedding (W_head = E^T, Vaswani §3.4), which
``tie_embeddings=True`` gives. The experiments use the untied default.

Positions: "learned" (a trained table P), "sinusoidal" (Vaswani §3.5, a constant table), "rope"
(RoFormer: q and k rotated inside attention; ``rope_scale`` is the position-interpolation factor that
divides positions), "alibi" (Press et al.: a per-head linear bias; ``alibi_scale`` multiplies the
slopes), "none" (causal masking alone). Everything position-specific is in :func:`position_inputs`.

Parameters (flat dict, GPT-2-style init: N(0, 0.02^2), residual output projections ``attn.wo`` and
``mlp.w2`` with std 0.02 / sqrt(2 n_layers), layer norms at weight 1 and bias 0, biases 0):

    tok_emb (V, D)   pos_emb (max_len, D) ["learned" only]   lm_head (D, V) [unless tie_embeddings]
    blocks.{i}.ln1.weight/bias (D,)   blocks.{i}.attn.wq/wk/wv/wo (D, D), .bq/bk/bv/bo (D,)
    blocks.{i}.ln2.weight/bias (D,)   blocks.{i}.mlp.w1 (D, F) .b1 (F,)  .w2 (F, D) .b2 (D,)
    ln_f.weight/bias (D,)

``forward(..., kv_cache=new_kv_cache(config, B))`` decodes incrementally (forward-only); ``generate``
uses it and its logits equal the full forward's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..attention.multihead import KVCache
from ..core import validate
from ..core.layers import (add_grads, check_linears, cross_entropy_backward, cross_entropy_forward,
                           dropout_backward, dropout_forward, embedding_backward, embedding_forward,
                           layer_norm_backward, layer_norm_forward, linear_backward, linear_forward,
                           project_backward, project_forward)
from .blocks import (INIT_STD, BlockCache, block_backward, block_forward, check_config_sizes,  # noqa: F401
                     check_config_tail, init_trunk, trunk_shapes)

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
ROPE_LAYOUTS = ("half", "interleaved")


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters; every value is validated on construction (ValueError naming the field)."""

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None          # default 4 * d_model
    max_len: int = 256               # learned table size and KV-cache capacity
    positions: str = "learned"
    attention: str = "reference"     # a core name of attention.multihead.CORES
    dropout: float = 0.0             # embeddings, attention probabilities, residual branches
    rope_base: float = 10000.0
    rope_layout: str = "half"
    rope_scale: float = 1.0          # position interpolation: positions are divided by this factor
    alibi_scale: float = 1.0         # ALiBi slopes are multiplied by this factor
    tie_embeddings: bool = False     # GPT-2 ties (True); the default here is an untied lm_head
    ln_eps: float = 1e-5

    def __post_init__(self):
        validate.positive_int(self.vocab_size, "vocab_size")
        check_config_sizes(self, POSITIONS)              # d_model .. dropout, shared with the encoder
        validate.real(self.rope_base, "rope_base", low=1.0, low_open=True)
        validate.option(self.rope_layout, "rope_layout", ROPE_LAYOUTS)
        validate.positive(self.rope_scale, "rope_scale")
        validate.positive(self.alibi_scale, "alibi_scale")
        check_config_tail(self)                          # tie_embeddings, ln_eps, position parity

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _check_config(config) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        validate.fail("config", "a TransformerConfig", type(config).__name__)
    return config


def param_shapes(config: TransformerConfig) -> dict[str, tuple]:
    """The shape of every parameter, by name (the keys of init_params and of the gradients)."""
    _check_config(config)
    shapes = trunk_shapes(config)                    # embeddings, blocks, ln_f (models/blocks.py)
    if not config.tie_embeddings:
        shapes["lm_head"] = (config.d_model, config.vocab_size)
    return shapes


def init_params(config: TransformerConfig, rng, dtype=np.float64) -> dict[str, np.ndarray]:
    """GPT-2-style initialisation: weights N(0, 0.02^2), residual projections (attn.wo, mlp.w2) with
    std 0.02 / sqrt(2 n_layers) (GPT-2 §2.3), biases 0, layer norms (1, 0)."""
    _check_config(config)
    rng = validate.rng(rng)
    dtype = validate.float_dtype(dtype)
    params = init_trunk(config, rng)                 # embeddings, blocks, ln_f (models/blocks.py)
    if not config.tie_embeddings:
        params["lm_head"] = INIT_STD * rng.standard_normal((config.d_model, config.vocab_size))
    return {k: v.astype(dtype) for k, v in params.items()}


def new_kv_cache(config: TransformerConfig, batch: int, dtype=np.float64) -> list[KVCache]:
    """One empty KVCache per layer, capacity config.max_len, for forward(..., kv_cache=...) / generate."""
    _check_config(config)
    return [KVCache.empty(batch, config.n_heads, config.max_len, config.head_dim, dtype)
            for _ in range(config.n_layers)]


# --- positions --------------------------------------------------------------------------------------

class PositionInputs(NamedTuple):
    additive: np.ndarray | None    # (T, D) constant added to the embeddings (sinusoidal)
    rope: dict | None              # keyword arguments of rope_forward for q and k
    attn_bias: np.ndarray | None   # (H, T, offset + T) additive attention bias (ALiBi)


def position_inputs(config: TransformerConfig, n_new: int, offset: int = 0) -> PositionInputs:
    """What the position scheme contributes for tokens at positions offset .. offset + n_new - 1.

    "learned" is a parameter and handled in forward; the others are constants computed here:
    sinusoidal table rows (Vaswani §3.5), RoPE positions m / rope_scale (position interpolation
    divides positions by the extension factor), ALiBi bias with slopes * alibi_scale.
    """
    n_total = offset + n_new
    if config.positions == "sinusoidal":
        from ..positional.sinusoidal import sinusoidal_table
        return PositionInputs(sinusoidal_table(n_total, config.d_model)[offset:], None, None)
    if config.positions == "rope":
        positions = np.arange(offset, n_total, dtype=np.float64) / config.rope_scale      # (T,)
        return PositionInputs(None, {"positions": positions, "base": config.rope_base,
                                     "layout": config.rope_layout}, None)
    if config.positions == "alibi":
        from ..positional.alibi import alibi_bias, alibi_slopes
        slopes = alibi_slopes(config.n_heads) * config.alibi_scale                      # (H,)
        return PositionInputs(None, None, alibi_bias(config.n_heads, n_new, n_total, slopes=slopes, causal=True))
    return PositionInputs(None, None, None)


# --- forward / backward -----------------------------------------------------------------------------

class TransformerCache(NamedTuple):
    emb: Any                       # embedding cache of the tokens
    drop_emb: Any
    blocks: list                   # BlockCache per layer
    ln_f: Any
    head: Any
    tied: bool
    learned_pos: tuple | None      # (offset, T, max_len, D) for the pos_emb gradient
    decoding: bool
    dtype: np.dtype


def _check_params(params, config, linears):
    """The params' dtype, after checking every array of param_shapes(config) (weights that ``linears``
    overrides may be absent)."""
    return validate.params(params, param_shapes(config), skip=linears or ())


def forward(params, config, tokens, *, rng=None, training=False, kv_cache=None, linears=None):
    """Logits of the next token at every position.

    tokens: (B, T) int in [0, V). training=True with config.dropout > 0 draws dropout masks from
    ``rng``. kv_cache: a list from new_kv_cache (decode step: tokens continue the cached prefix;
    forward-only). linears: projection overrides by weight name (LoRA). Returns logits (B, T, V) in
    the params' dtype and a TransformerCache for backward.
    """
    config = _check_config(config)
    check_linears(linears)
    dtype = _check_params(params, config, linears)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    B, T = tokens.shape
    if T < 1:
        validate.fail("tokens", "at least one position", tokens.shape)
    validate.flag(training, "training")
    p_drop = config.dropout if training else 0.0
    if p_drop > 0:
        rng = validate.rng(rng, "rng")
    offset = 0
    if kv_cache is not None:
        if not isinstance(kv_cache, list) or len(kv_cache) != config.n_layers:
            validate.fail("kv_cache", f"a list of {config.n_layers} KVCache (new_kv_cache)", type(kv_cache).__name__)
        layout = [(c.length, c.k.shape, c.k.dtype, c.v.shape) if isinstance(c, KVCache) else None for c in kv_cache]
        if None in layout or len(set(layout)) != 1:
            # every layer's cache is checked before layer 0 writes into its own (a failed call changes
            # nothing: what fails for one layer fails in layer 0, whose mha_forward undoes its write)
            validate.fail("kv_cache", "one KVCache per layer, all of one length and shape (new_kv_cache)",
                          f"lengths {[getattr(c, 'length', None) for c in kv_cache]}")
        offset = kv_cache[0].length
    if config.positions == "learned" and offset + T > config.max_len:
        validate.fail("tokens", f"at most max_len={config.max_len} positions with learned positions",
                      f"{offset + T}")
    pos = position_inputs(config, T, offset)

    h, c_emb = embedding_forward(tokens, params["tok_emb"])                     # (B, T, D)
    learned_pos = None
    if config.positions == "learned":
        h = h + params["pos_emb"][offset:offset + T]
        learned_pos = (offset, T)
    elif pos.additive is not None:
        h = h + pos.additive.astype(dtype)
    h, c_drop_emb = dropout_forward(h, p_drop, rng, training)
    blocks = []
    for i in range(config.n_layers):
        core_options = None
        if p_drop > 0:                                                         # attention-probability dropout
            # One counter-based keep-mask per layer and step, named by a seed: the flash kernel
            # regenerates it tile by tile (nothing N x N is stored), the reference core materialises
            # the same mask from the same seed, so both cores compute the same function.
            seed = int(rng.integers(0, 2 ** 63))
            core_options = {"dropout_p": p_drop, "dropout_seed": seed}
        h, c_block = block_forward(h, params, f"blocks.{i}.", n_heads=config.n_heads, core=config.attention,
                                   causal=True, ln_eps=config.ln_eps, p_drop=p_drop, rng=rng, training=training,
                                   linears=linears, attn_bias=pos.attn_bias, rope=pos.rope,
                                   kv_cache=None if kv_cache is None else kv_cache[i],
                                   core_options=core_options)                 # (B, T, D)
        blocks.append(c_block)
    hf, c_lnf = layer_norm_forward(h, params["ln_f.weight"], params["ln_f.bias"], eps=config.ln_eps)
    if config.tie_embeddings:
        logits, c_head = linear_forward(hf, params["tok_emb"].T)                # (B, T, V)
    else:
        logits, c_head = project_forward(hf, params, "lm_head", None, linears)  # (B, T, V)
    cache = TransformerCache(emb=c_emb, drop_emb=c_drop_emb, blocks=blocks, ln_f=c_lnf, head=c_head,
                             tied=config.tie_embeddings,
                             learned_pos=None if learned_pos is None else (*learned_pos, *params["pos_emb"].shape),
                             decoding=kv_cache is not None, dtype=dtype)
    return logits, cache


def backward(dlogits, cache: TransformerCache) -> dict[str, np.ndarray]:
    """Gradients of every parameter used by forward (same keys as params; with ``linears``, the
    overrides' own keys instead of the weights they replace). Reverse of forward, op by op; the
    residual stream's gradient is the sum of the skip path and the branch (dh += dbranch/dh)."""
    if not isinstance(cache, TransformerCache):
        validate.fail("cache", "the TransformerCache returned by forward", type(cache).__name__)
    if cache.decoding:
        validate.fail("cache", "a cache from forward without kv_cache (decode steps are forward-only)",
                      "a decoding cache")
    dlogits = validate.float_array(dlogits, "dlogits", ndim=3)
    grads: dict = {}
    if cache.tied:
        dhf, dw, _ = linear_backward(dlogits, cache.head)                      # dw: (D, V) = d(E^T)
        add_grads(grads, {"tok_emb": dw.T})
    else:
        dhf, g = project_backward(dlogits, cache.head)
        add_grads(grads, g)
    dh, dw, db = layer_norm_backward(dhf, cache.ln_f)                          # (B, T, D)
    add_grads(grads, {"ln_f.weight": dw, "ln_f.bias": db})
    for i in reversed(range(len(cache.blocks))):
        dh = block_backward(dh, cache.blocks[i], f"blocks.{i}.", grads)       # (B, T, D), grads accumulated
    dh = dropout_backward(dh, cache.drop_emb)
    if cache.learned_pos is not None:
        offset, t, max_len, d = cache.learned_pos
        dpos = np.zeros((max_len, d), dtype=cache.dtype)
        dpos[offset:offset + t] = dh.sum(axis=0)                               # positions shared over the batch
        add_grads(grads, {"pos_emb": dpos})
    add_grads(grads, {"tok_emb": embedding_backward(dh, cache.emb)})
    return grads


def loss_and_grads(params, config, inputs, targets, *, rng=None, linears=None):
    """Mean next-token cross-entropy over targets != -100 and its gradients (training mode: dropout
    from ``rng`` when config.dropout > 0). inputs, targets: (B, T) int. Returns (loss, grads)."""
    config = _check_config(config)
    if config.dropout > 0 and rng is None:
        validate.fail("rng", "a numpy.random.Generator when config.dropout > 0", "None")
    logits, cache = forward(params, config, inputs, rng=rng, training=True, linears=linears)
    loss, c_ce = cross_entropy_forward(logits, targets)
    return loss, backward(cross_entropy_backward(1.0, c_ce), cache)


# --- generation ---------------------------------------------------------------------------------

def sample_logits(logits, rng=None, *, temperature=1.0, top_k=None, greedy=False):
    """One token per row of logits (B, V): argmax if greedy, else a draw from softmax(logits / T)
    restricted to the top_k largest logits (ties at the k-th value are kept). Returns (B,) int64.
    -inf entries are masked tokens; a row with NaN or +inf, or entirely -inf, raises ValueError
    (validate.sampling_logits) rather than becoming token 0, and nothing is drawn from rng then."""
    logits = validate.sampling_logits(logits, "logits")
    V = logits.shape[1]
    if validate.flag(greedy, "greedy"):
        return np.argmax(logits, axis=-1).astype(np.int64)
    rng = validate.rng(rng)
    temperature = validate.positive(temperature, "temperature")
    if top_k is not None:
        top_k = validate.integer(top_k, "top_k", low=1, high=V)
    z = logits.astype(np.float64)
    z = (z - z.max(axis=-1, keepdims=True)) / temperature                    # (B, V) <= 0: no overflow for small T
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, V - top_k][:, None]                      # (B, 1) k-th largest
        z = np.where(z >= kth, z, -np.inf)
    probs = np.exp(z)
    cdf = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)       # (B, V)
    u = rng.random((logits.shape[0], 1))
    return np.minimum(np.sum(cdf < u, axis=-1), V - 1).astype(np.int64)


def generate(params, config, prompt, n_new, *, rng=None, temperature=1.0, top_k=None, greedy=False, linears=None):
    """Continue ``prompt`` (B, T0) by ``n_new`` tokens with a KV cache (one prefill forward, then one
    position per step). rng is required unless greedy. Returns (B, T0 + n_new) int64."""
    config = _check_config(config)
    prompt = validate.int_array(prompt, "prompt", ndim=2, low=0, high=config.vocab_size)
    if prompt.shape[1] < 1:
        validate.fail("prompt", "at least one token", prompt.shape)
    n_new = validate.integer(n_new, "n_new", low=0)
    if prompt.shape[1] + n_new > config.max_len:
        validate.fail("n_new", f"prompt length + n_new <= max_len={config.max_len}", prompt.shape[1] + n_new)
    if not validate.flag(greedy, "greedy"):
        rng = validate.rng(rng)
        validate.positive(temperature, "temperature")
    dtype = _check_params(params, config, linears)
    cache = new_kv_cache(config, prompt.shape[0], dtype)
    logits, _ = forward(params, config, prompt, kv_cache=cache, linears=linears)
    out = [prompt.astype(np.int64)]
    for step in range(n_new):
        tok = sample_logits(logits[:, -1], rng, temperature=temperature, top_k=top_k, greedy=greedy)   # (B,)
        out.append(tok[:, None])
        if step < n_new - 1:
            logits, _ = forward(params, config, tok[:, None], kv_cache=cache, linears=linears)
    return np.concatenate(out, axis=1)
