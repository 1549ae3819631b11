"""Gradient checks of the Reformer pairs (arXiv 2001.04451): LSH attention with fixed rotations.

Each entry is also an exercise: write the backward, then ``python -m scratch_transformers check``.
The rotations are fixed inside the sample inputs (hashing is piecewise constant: central differences
of size 1e-6 do not move any bucket for these seeds, so the numeric gradient sees the softmax only).
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..reformer.lsh import lsh_attention_backward, lsh_attention_forward, random_rotations

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
