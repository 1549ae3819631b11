"""Gradient checks of the Reformer pairs (arXiv 2001.04451): LSH attention with fixed rotations, the
reversible and ordinary residual stacks and the chunked feed-forward (with tanh-linear F and G).

Each entry is also an exercise: write the backward, then ``python -m scratch_transformers check``.
The rotations are fixed inside the sample inputs (hashing is piecewise constant: central differences
of size 1e-6 do not move any bucket for these seeds, so the numeric gradient sees the softmax only).
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..reformer.chunked import chunked_backward, chunked_forward
from ..reformer.layers import (feed_forward_backward, feed_forward_forward, lsh_self_attention_backward,
                               lsh_self_attention_forward)
from ..reformer.lsh import (lsh_attention_backward, lsh_attention_forward, random_rotations,
                            shared_qk_attention_backward, shared_qk_attention_forward)
from ..reformer.model import ReformerConfig, draw_rotations, init_params
from ..reformer.model import backward as model_backward
from ..reformer.model import forward as model_forward
from ..reformer.reversible import (RevBlock, RevFunction, residual_stack_backward, residual_stack_forward,
                                   reversible_backward, reversible_forward)

_LSH = ("scratch_transformers.reformer.lsh.lsh_attention_backward",)


def _lsh_inputs(rng, n=11, d=4, n_hashes=3, n_buckets=4):
    return dict(qk=rng.standard_normal((1, 2, n, d)), v=rng.standard_normal((1, 2, n, 3)),
                rotations=random_rotations(rng, d, n_hashes, n_buckets))


def _lsh_causal(qk, v, rotations):
    """Three rounds, chunks of 3, causal, N = 11 padded to 12."""
    return lsh_attention_forward(qk, v, rotations, bucket_size=3, causal=True)


def _lsh_dedup(qk, v, rotations):
    """Appendix A's duplicate-count correction, bidirectional."""
    return lsh_attention_forward(qk, v, rotations, bucket_size=2, dedup=True)


GRADCHECKS = [
    Op(name="reformer.lsh_attention", forward=_lsh_causal, backward=lsh_attention_backward,
       make_inputs=_lsh_inputs, covers=_LSH, wrt=("qk", "v")),
    Op(name="reformer.lsh_attention_dedup", forward=_lsh_dedup, backward=lsh_attention_backward,
       make_inputs=lambda rng: _lsh_inputs(rng, n=10), covers=_LSH, wrt=("qk", "v")),
]


# --- reversible stack and chunked feed-forward, with tanh-linear F and G --------------------------

def tanh_linear(params: dict, name: str) -> RevFunction:
    """A RevFunction y = tanh(x W + b) with W = params[name + ".w"] (D, D), b = params[name + ".b"] (D,):
    the plain F / G of the reversible tests and exercises."""
    w, b = params[name + ".w"], params[name + ".b"]

    def forward(x):
        t = np.tanh(x @ w + b)                                        # (..., D)
        return t, (x, t)

    def backward(dy, cache):
        x, t = cache
        dz = dy * (1.0 - t * t)                                       # tanh' = 1 - tanh^2
        lead = tuple(range(dz.ndim - 1))
        return dz @ w.T, {name + ".w": np.tensordot(x, dz, axes=(lead, lead)), name + ".b": dz.sum(axis=lead)}

    return RevFunction(forward, backward)


def tanh_blocks(params: dict, n_layers: int) -> list[RevBlock]:
    """n_layers RevBlocks with F = tanh_linear("blocks.i.f"), G = tanh_linear("blocks.i.g")."""
    return [RevBlock(tanh_linear(params, f"blocks.{i}.f"), tanh_linear(params, f"blocks.{i}.g"))
            for i in range(n_layers)]


def tanh_block_params(rng, n_layers: int, d: int, std: float = 0.5, dtype=np.float64) -> dict:
    params = {}
    for i in range(n_layers):
        for fg in "fg":
            params[f"blocks.{i}.{fg}.w"] = (std * rng.standard_normal((d, d))).astype(dtype)
            params[f"blocks.{i}.{fg}.b"] = (0.1 * rng.standard_normal(d)).astype(dtype)
    return params


def _stack_inputs(rng):
    return dict(x1=rng.standard_normal((2, 3, 4)), x2=rng.standard_normal((2, 3, 4)),
                **tanh_block_params(rng, 3, 4))


def _reversible(x1, x2, **params):
    return reversible_forward(x1, x2, tanh_blocks(params, 3))


def _residual(x1, x2, **params):
    return residual_stack_forward(x1, x2, tanh_blocks(params, 3))


def _chunked(x, **params):
    return chunked_forward(x, tanh_linear(params, "ff"), chunk_size=2)


def _chunked_backward(dy, cache):
    dx, grads = chunked_backward(dy, cache)
    return {"x": dx, **grads}


def _chunked_inputs(rng):
    return dict(x=rng.standard_normal((2, 5, 4)), **{"ff.w": 0.5 * rng.standard_normal((4, 4)),
                                                     "ff.b": 0.1 * rng.standard_normal(4)})


GRADCHECKS += [
    Op(name="reformer.reversible_stack", forward=_reversible, backward=reversible_backward,
       make_inputs=_stack_inputs, covers=("scratch_transformers.reformer.reversible.reversible_backward",)),
    Op(name="reformer.residual_stack", forward=_residual, backward=residual_stack_backward,
       make_inputs=_stack_inputs, covers=("scratch_transformers.reformer.reversible.residual_stack_backward",)),
    Op(name="reformer.chunked_feed_forward", forward=_chunked, backward=_chunked_backward,
       make_inputs=_chunked_inputs, covers=("scratch_transformers.reformer.chunked.chunked_backward",)),
]


# --- the Reformer's layers and the whole LM -------------------------------------------------------

def _layer_params(rng, d=8, f=12):
    p = {"a.ln.weight": 1 + 0.1 * rng.standard_normal(d), "a.ln.bias": 0.1 * rng.standard_normal(d),
         "a.wqk": 0.5 * rng.standard_normal((d, d)), "a.wv": 0.5 * rng.standard_normal((d, d)),
         "a.wo": 0.5 * rng.standard_normal((d, d)),
         "m.ln.weight": 1 + 0.1 * rng.standard_normal(d), "m.ln.bias": 0.1 * rng.standard_normal(d),
         "m.w1": 0.5 * rng.standard_normal((d, f)), "m.b1": 0.1 * rng.standard_normal(f),
         "m.w2": 0.5 * rng.standard_normal((f, d)), "m.b2": 0.1 * rng.standard_normal(d)}
    return p


def _attn_inputs(rng, attention):
    p = {k: v for k, v in _layer_params(rng).items() if k.startswith("a.")}
    return {"x": rng.standard_normal((2, 9, 8)), "_rot": random_rotations(rng, 4, 2, 4), "_attention": attention, **p}


def _attn_forward(x, _rot, _attention, **params):
    return lsh_self_attention_forward(x, params, prefix="a", n_heads=2, attention=_attention, rotations=_rot,
                                      bucket_size=3, causal=True)


def _attn_backward(dy, cache):
    dx, grads = lsh_self_attention_backward(dy, cache)
    return {"x": dx, **grads}


def _ff_inputs(rng):
    return {"x": rng.standard_normal((2, 5, 8)), **{k: v for k, v in _layer_params(rng).items() if k.startswith("m.")}}


def _ff_backward(dy, cache):
    dx, grads = feed_forward_backward(dy, cache)
    return {"x": dx, **grads}


def _shared_qk_inputs(rng):
    return dict(qk=rng.standard_normal((1, 2, 6, 4)), v=rng.standard_normal((1, 2, 6, 3)))


def _model_config():
    return ReformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=16, n_hashes=2,
                          bucket_size=3, ff_chunk=4)


def _model_inputs(rng):
    config = _model_config()
    params = init_params(config, rng, std=0.5)
    return {"_tokens": rng.integers(0, 7, size=(2, 10)), "_rot": draw_rotations(config, 10, rng), **params}


def _model_forward(_tokens, _rot, **params):
    return model_forward(params, _model_config(), _tokens, rotations=_rot)


_REF = "scratch_transformers.reformer."
_ATTN_WRT = ("x", "a.ln.weight", "a.ln.bias", "a.wqk", "a.wv", "a.wo")
GRADCHECKS += [
    Op(name="reformer.lsh_self_attention_layer", forward=_attn_forward, backward=_attn_backward,
       make_inputs=lambda rng: _attn_inputs(rng, "lsh"), wrt=_ATTN_WRT,
       covers=(_REF + "layers.lsh_self_attention_backward",)),
    Op(name="reformer.full_shared_qk_attention_layer", forward=_attn_forward, backward=_attn_backward,
       make_inputs=lambda rng: _attn_inputs(rng, "full"), wrt=_ATTN_WRT,
       covers=(_REF + "layers.lsh_self_attention_backward",)),
    Op(name="reformer.feed_forward", forward=lambda x, **p: feed_forward_forward(x, p, prefix="m"),
       backward=_ff_backward, make_inputs=_ff_inputs, covers=(_REF + "layers.feed_forward_backward",)),
    Op(name="reformer.shared_qk_attention", forward=lambda qk, v: shared_qk_attention_forward(qk, v, causal=True),
       backward=shared_qk_attention_backward, make_inputs=_shared_qk_inputs, wrt=("qk", "v"),
       covers=(_REF + "lsh.shared_qk_attention_backward",)),
    Op(name="reformer.model", forward=_model_forward, backward=model_backward, make_inputs=_model_inputs,
       covers=(_REF + "model.backward",)),
]
