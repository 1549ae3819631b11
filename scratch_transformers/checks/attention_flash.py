"""Registry entries of FlashAttention (``attention.flash``): float64 gradient checks of the flash pair itself,
with tiny ragged tiles so that every path of the kernels is hit (diagonal tiles, skipped tiles, partial tiles).

Each entry is also an exercise: write the backward by recomputation yourself (FA-2 Algorithm 2) and run
``python -m scratch_transformers check --only flash_attention``.
"""

from __future__ import annotations

import numpy as np

from ..attention.flash import flash_attention_backward, flash_attention_forward
from ..core.registry import Op

COVERS = ("scratch_transformers.attention.flash.flash_attention_backward",)


def masked_inputs(rng):
    """Causal bottom-right, Nq != Nk, a per-head bias, one padded key (ragged 2 x 3 tiles in the forward)."""
    b, h, n_q, n_k, d = 2, 2, 4, 5, 3
    pad = np.zeros((b, n_k), dtype=bool)
    pad[1, 0] = True
    return dict(q=rng.standard_normal((b, h, n_q, d)), k=rng.standard_normal((b, h, n_k, d)),
                v=rng.standard_normal((b, h, n_k, 2)), bias=rng.standard_normal((h, 1, n_k)),
                key_padding_mask=pad)


def masked_forward(q, k, v, bias, key_padding_mask):
    return flash_attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", bias=bias,
                                   key_padding_mask=key_padding_mask, scale=0.7, block_q=2, block_k=3)


def dropout_inputs(rng):
    """Dropout with a fixed seed (the counter-based mask is a deterministic function of it), a full bias."""
    b, h, n, d = 1, 2, 5, 3
    return dict(q=rng.standard_normal((b, h, n, d)), k=rng.standard_normal((b, h, n, d)),
                v=rng.standard_normal((b, h, n, d)), bias=rng.standard_normal((b, h, n, n)))


def dropout_forward(q, k, v, bias):
    return flash_attention_forward(q, k, v, causal=True, bias=bias, dropout_p=0.3, dropout_seed=7,
                                   block_q=2, block_k=2)


GRADCHECKS = [
    Op(name="flash_attention", forward=masked_forward, backward=flash_attention_backward,
       make_inputs=masked_inputs, covers=COVERS, wrt=("q", "k", "v", "bias")),
    Op(name="flash_attention_dropout", forward=dropout_forward, backward=flash_attention_backward,
       make_inputs=dropout_inputs, covers=COVERS, wrt=("q", "k", "v", "bias")),
]
