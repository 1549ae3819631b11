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
from ..reformer.lsh import lsh_attention_backward, lsh_attention_forward, random_rotations
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
