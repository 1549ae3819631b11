"""The Reformer LM (Kitaev et al. 2020, §3-5; layout of trax's ReformerLM): LSH attention inside
reversible blocks with a chunked feed-forward.

    h_0 = E[tokens] + P[positions]                          token + learned position embedding
    x1 = x2 = h_0                                           the two reversible streams (trax: Dup)
    y1 = x1 + Attention(x2),  y2 = x2 + FeedForward(y1)     eq. (9), for each of the n_layers blocks
    logits = LN_f([y1; y2]) W_head                          trax: Concatenate -> LayerNorm(2D) -> Dense

Attention is ``layers.lsh_self_attention_forward`` (shared-QK, LSH with ``n_hashes`` rounds and chunks of
``bucket_size``, or "full" shared-QK attention for comparison); the feed-forward is applied through
``chunked.chunked_forward`` in chunks of ``ff_chunk`` positions. With ``reversible=True`` the blocks run
through ``reversible.reversible_forward`` (inputs reconstructed in the backward); with False through
``reversible.residual_stack_forward`` (same numbers, every activation kept).

Hash rotations: one (d_h, n_hashes, n_buckets/2) Gaussian per layer, shared by the heads and the batch,
drawn from ``rng`` at every forward (as trax and reformer-pytorch do) unless passed in; the forward keeps
them in its cache so the reversible backward recomputes attention with the same buckets. n_buckets
defaults to 2 N_pad / bucket_size (the paper's m = 2l/n_b, §2), N_pad the length padded to 2 * bucket_size.

Parameters: tok_emb (V, D), pos_emb (max_len, D), blocks.{i}.attn.ln.weight/bias, .wqk/.wv/.wo (D, D),
blocks.{i}.ff.ln.weight/bias, .w1 (D, F), .b1, .w2 (F, D), .b2, ln_f.weight/bias (2D,), lm_head (2D, V).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward, embedding_forward,
                           layer_norm_backward, layer_norm_forward, linear_backward, linear_forward)
from .chunked import chunked_backward, chunked_forward
from .layers import (ATTENTIONS, feed_forward_backward, feed_forward_forward, lsh_self_attention_backward,
                     lsh_self_attention_forward)
from .lsh import random_rotations
from .reversible import (RevBlock, RevFunction, residual_stack_backward, residual_stack_forward,
                         reversible_backward, reversible_forward)


@dataclass(frozen=True)
class ReformerConfig:
    """Hyper-parameters, validated on construction (ValueError naming the field)."""

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None          # default 4 * d_model
    max_len: int = 256
    attention: str = "lsh"           # "lsh" or "full" (shared-QK either way)
    n_hashes: int = 2
    bucket_size: int = 16            # chunk length m
    n_buckets: int | None = None     # default 2 * N_pad / bucket_size
    causal: bool = True
    dedup: bool = False              # Appendix A's duplicate correction
    reversible: bool = True
    ff_chunk: int = 64               # feed-forward chunk (positions)
    ln_eps: float = 1e-5

    def __post_init__(self):
        validate.model_widths(self, ("vocab_size", "d_model", "n_layers", "n_heads", "max_len", "n_hashes",
                                     "bucket_size"))              # then n_heads | d_model, d_ff (4 d_model)
        validate.option(self.attention, "attention", ATTENTIONS)
        if self.n_buckets is not None and (validate.integer(self.n_buckets, "n_buckets", low=2) % 2):
            validate.fail("n_buckets", "an even number", self.n_buckets)
        for name in ("causal", "dedup", "reversible"):
            validate.flag(getattr(self, name), name)
        validate.integer(self.ff_chunk, "ff_chunk", low=2)
        validate.positive(self.ln_eps, "ln_eps")


def _check_config(config) -> ReformerConfig:
    if not isinstance(config, ReformerConfig):
        validate.fail("config", "a ReformerConfig", type(config).__name__)
    return config


def param_shapes(config: ReformerConfig) -> dict[str, tuple]:
    """Name -> shape of every parameter."""
    config = _check_config(config)
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    shapes = {"tok_emb": (v, d), "pos_emb": (config.max_len, d), "lm_head": (2 * d, v),
              "ln_f.weight": (2 * d,), "ln_f.bias": (2 * d,)}
    for i in range(config.n_layers):
        a, m = f"blocks.{i}.attn", f"blocks.{i}.ff"
        shapes.update({f"{a}.ln.weight": (d,), f"{a}.ln.bias": (d,), f"{a}.wqk": (d, d), f"{a}.wv": (d, d),
                       f"{a}.wo": (d, d), f"{m}.ln.weight": (d,), f"{m}.ln.bias": (d,), f"{m}.w1": (d, f),
                       f"{m}.b1": (f,), f"{m}.w2": (f, d), f"{m}.b2": (d,)})
    return shapes


def _check_params(params, config) -> np.dtype:
    if not isinstance(params, dict):
        validate.fail("params", "a dict name -> array", type(params).__name__)
    dtype = None
    for name, shape in param_shapes(config).items():
        if name not in params:
            validate.fail("params", f"a key {name!r}", "none")
        a = validate.float_array(params[name], f"params[{name!r}]", shape=shape, dtype=dtype)
        dtype = a.dtype
    return dtype


def init_params(config: ReformerConfig, rng, dtype=np.float64, std=0.02) -> dict[str, np.ndarray]:
    """GPT-2-style init: N(0, std^2), residual output projections wo, w2 with std / sqrt(2 n_layers)."""
    config = _check_config(config)
    rng = validate.rng(rng)
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    out_std = std / np.sqrt(2 * config.n_layers)
    shapes = {"tok_emb": ((v, d), std), "pos_emb": ((config.max_len, d), std), "lm_head": ((2 * d, v), std)}
    for i in range(config.n_layers):
        a, m = f"blocks.{i}.attn", f"blocks.{i}.ff"
        shapes.update({f"{a}.wqk": ((d, d), std), f"{a}.wv": ((d, d), std), f"{a}.wo": ((d, d), out_std),
                       f"{m}.w1": ((d, f), std), f"{m}.w2": ((f, d), out_std)})
    params = {k: (s * rng.standard_normal(shape)).astype(dtype) for k, (shape, s) in shapes.items()}
    for i in range(config.n_layers):
        for ln in (f"blocks.{i}.attn.ln", f"blocks.{i}.ff.ln"):
            params[f"{ln}.weight"], params[f"{ln}.bias"] = np.ones(d, dtype), np.zeros(d, dtype)
        params[f"blocks.{i}.ff.b1"], params[f"blocks.{i}.ff.b2"] = np.zeros(f, dtype), np.zeros(d, dtype)
    params["ln_f.weight"], params["ln_f.bias"] = np.ones(2 * d, dtype), np.zeros(2 * d, dtype)
    return params


def n_buckets_for(config: ReformerConfig, length: int) -> int:
    """config.n_buckets, or 2 * N_pad / bucket_size (at least 2, even) for a sequence of ``length``."""
    if config.n_buckets is not None:
        return config.n_buckets
    m = config.bucket_size
    n_pad = -(-length // (2 * m)) * 2 * m
    return max(2, 2 * n_pad // m)


def draw_rotations(config: ReformerConfig, length: int, rng, *, n_hashes=None, dtype=np.float64) -> list:
    """One random_rotations array (d_h, n_hashes, n_buckets/2) per layer."""
    config = _check_config(config)
    n_hashes = config.n_hashes if n_hashes is None else validate.positive_int(n_hashes, "n_hashes")
    nb = n_buckets_for(config, length)
    return [random_rotations(rng, config.d_model // config.n_heads, n_hashes, nb, dtype)
            for _ in range(config.n_layers)]


def blocks_for(params, config: ReformerConfig, *, attention, rotations) -> list[RevBlock]:
    """The n_layers RevBlocks: F = shared-QK LSH (or full) attention, G = chunked feed-forward."""
    blocks = []
    for i in range(config.n_layers):
        attn = partial(lsh_self_attention_forward, params=params, prefix=f"blocks.{i}.attn", n_heads=config.n_heads,
                       attention=attention, rotations=None if rotations is None else rotations[i],
                       bucket_size=config.bucket_size, causal=config.causal, dedup=config.dedup, eps=config.ln_eps)
        ff = RevFunction(partial(feed_forward_forward, params=params, prefix=f"blocks.{i}.ff", eps=config.ln_eps),
                         feed_forward_backward)
        blocks.append(RevBlock(RevFunction(lambda x, attn=attn: attn(x), lsh_self_attention_backward),
                               RevFunction(partial(chunked_forward, fn=ff, chunk_size=config.ff_chunk),
                                           chunked_backward)))
    return blocks


class ReformerCache(NamedTuple):
    emb: Any                  # EmbeddingCache
    length: int               # T
    stack: Any                # ReversibleCache or ResidualStackCache
    ln_f: Any
    head: Any
    rotations: list | None    # per layer (d_h, n_hashes, n_buckets/2), None for full attention
    pos_shape: tuple


def forward(params, config, tokens, *, rng=None, rotations=None, n_hashes=None, attention=None):
    """Logits (B, T, V) of tokens (B, T) and a ReformerCache.

    attention: "lsh" or "full" (default config.attention); n_hashes overrides config.n_hashes (evaluate
    with more or fewer rounds than trained with, Table 2). LSH needs ``rotations`` (a list per layer,
    see draw_rotations) or an ``rng`` to draw them.
    """
    config = _check_config(config)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    t = tokens.shape[1]
    if not 1 <= t <= config.max_len:
        validate.fail("tokens", f"1 to max_len={config.max_len} positions", t)
    attention = config.attention if attention is None else validate.option(attention, "attention", ATTENTIONS)
    dtype = _check_params(params, config)
    if attention == "lsh" and rotations is None:
        rotations = draw_rotations(config, t, validate.rng(rng), n_hashes=n_hashes, dtype=dtype)
    if attention == "full":
        rotations = None
    elif not isinstance(rotations, (list, tuple)) or len(rotations) != config.n_layers:
        validate.fail("rotations", f"a list of {config.n_layers} rotation arrays", type(rotations).__name__)
    e, c_emb = embedding_forward(tokens, params["tok_emb"])
    h = e + params["pos_emb"][:t]                                            # (B, T, D)
    blocks = blocks_for(params, config, attention=attention, rotations=rotations)
    run = reversible_forward if config.reversible else residual_stack_forward
    (y1, y2), c_stack = run(h, h, blocks)
    z, c_ln = layer_norm_forward(np.concatenate([y1, y2], axis=-1), params["ln_f.weight"], params["ln_f.bias"],
                                 config.ln_eps)                              # (B, T, 2D)
    logits, c_head = linear_forward(z, params["lm_head"])                    # (B, T, V)
    return logits, ReformerCache(c_emb, t, c_stack, c_ln, c_head, rotations, params["pos_emb"].shape)


def backward(dlogits, cache: ReformerCache) -> dict[str, np.ndarray]:
    """Gradients of every parameter from dlogits (B, T, V)."""
    validate.cache(cache, ReformerCache, "forward")
    dz, dhead, _ = linear_backward(dlogits, cache.head)
    dcat, dlw, dlb = layer_norm_backward(dz, cache.ln_f)
    d = dcat.shape[-1] // 2
    stack_backward = reversible_backward if hasattr(cache.stack, "y1") else residual_stack_backward
    g = stack_backward((dcat[..., :d], dcat[..., d:]), cache.stack)
    dh = g.pop("x1") + g.pop("x2")                                           # both streams start as h_0
    dpos = np.zeros(cache.pos_shape, dtype=dh.dtype)
    dpos[:cache.length] = dh.sum(axis=0)
    return {**g, "tok_emb": embedding_backward(dh, cache.emb), "pos_emb": dpos, "lm_head": dhead,
            "ln_f.weight": dlw, "ln_f.bias": dlb}


def loss_and_grads(params, config, inputs, targets, *, rng=None, rotations=None):
    """Mean next-token cross-entropy over targets != -100 and its gradients. Returns (loss, grads)."""
    logits, cache = forward(params, config, inputs, rng=rng, rotations=rotations)
    loss, c_ce = cross_entropy_forward(logits, targets)
    return loss, backward(cross_entropy_backward(1.0, c_ce), cache)


def generate(params, config, prompt, n_new, *, rng, greedy=False, temperature=1.0, n_hashes=None, attention=None):
    """Continue prompt (B, T0) by n_new tokens, re-running the whole forward at every step (LSH buckets
    change as the sequence grows, so there is no KV cache). rng draws the hash rotations (and the
    samples unless greedy). Returns (B, T0 + n_new) int64."""
    greedy = validate.flag(greedy, "greedy")
    config = _check_config(config)
    rng = validate.rng(rng)
    prompt = validate.int_array(prompt, "prompt", ndim=2, low=0, high=config.vocab_size)
    n_new = validate.integer(n_new, "n_new", low=0)
    if prompt.shape[1] < 1 or prompt.shape[1] + n_new > config.max_len:
        validate.fail("n_new", f"a prompt of >= 1 token and prompt length + n_new <= max_len={config.max_len}",
                      f"{prompt.shape[1]} + {n_new}")
    temperature = validate.positive(temperature, "temperature")
    seq = prompt.astype(np.int64)
    for _ in range(n_new):
        logits, _ = forward(params, config, seq, rng=rng, n_hashes=n_hashes, attention=attention)
        last = validate.sampling_logits(logits[:, -1].astype(np.float64), "logits")   # (B, V); NaN: raise
        if greedy:
            tok = np.argmax(last, axis=-1)
        else:
            p = np.exp((last - last.max(-1, keepdims=True)) / temperature)
            cdf = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
            tok = np.minimum(np.sum(cdf < rng.random((len(last), 1)), axis=-1), config.vocab_size - 1)
        seq = np.concatenate([seq, tok[:, None].astype(np.int64)], axis=1)
    return seq
