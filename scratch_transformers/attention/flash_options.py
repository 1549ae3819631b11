"""The options every FlashAttention forward takes (FA-2 in ``attention.flash``, FA-1 in ``attention.flash1``):
validated once, and turned into the records the kernels read (``tiles.Masking``, ``dropout.Dropout``).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from ..core import validate
from .dropout import Dropout, make_dropout
from .reference import check_attention_args
from .tiles import NO_CAUSAL, Masking, make_masking


class FlashOptions(NamedTuple):
    """The validated options of a flash forward: the arrays (contiguous), tau, and the two records the kernels read,
    with the raw options the cache keeps."""
    q: np.ndarray                 # (B, H, Nq, d)
    k: np.ndarray                 # (B, H, Nk, d)
    v: np.ndarray                 # (B, H, Nk, dv)
    scale: float
    masking: Masking
    dropout: Dropout
    offset: int
    bias: np.ndarray | None
    key_padding_mask: np.ndarray | None
    dropout_p: float
    dropout_seed: int
    dropout_mask: np.ndarray | None


def flash_options(q, k, v, *, scale=None, causal=False, causal_alignment="top_left", bias=None, key_padding_mask=None,
                  dropout_p=0.0, dropout_seed=None, rng=None, dropout_mask=None) -> FlashOptions:
    """Validate the options every flash forward takes (FA-2 ``attention.flash``, FA-1 ``attention.flash1``); arguments as
    ``flash_attention_forward``'s. A seed is drawn from ``rng`` only after every check passed."""
    q, k, v, scale, bias, key_padding_mask, dropout_p, dropout_mask = check_attention_args(
        q, k, v, scale, causal, causal_alignment, bias, key_padding_mask, dropout_p, dropout_mask)
    n_b, _, n_q, _ = q.shape
    n_k = k.shape[2]
    if dropout_mask is not None:            # an explicit keep-mask (drop-in for the reference's option)
        if dropout_seed is not None or rng is not None:
            validate.fail("dropout_seed", "None when an explicit dropout_mask is given", repr(dropout_seed))
        if dropout_p == 0.0:
            validate.fail("dropout_p", "> 0 when a dropout_mask is given", dropout_p)
    if dropout_seed is not None:
        dropout_seed = validate.integer(dropout_seed, "dropout_seed")
    elif rng is not None:
        dropout_seed = int(validate.rng(rng).integers(0, 2 ** 63))
    elif dropout_p > 0 and dropout_mask is None:
        validate.fail("dropout_seed", "an int (or rng=Generator) when dropout_p > 0", "None")
    else:
        dropout_seed = 0
    offset = (0 if causal_alignment == "top_left" else n_k - n_q) if causal else NO_CAUSAL
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    return FlashOptions(q, k, v, scale, make_masking(n_b, n_k, q.dtype, offset, bias, key_padding_mask),
                        make_dropout(q.dtype, dropout_p, dropout_seed, dropout_mask), offset, bias,
                        key_padding_mask, dropout_p, dropout_seed, dropout_mask)


def n_workers(n_items: int) -> int:
    """prange workers for n_items independent work items: numba's threads, at most one per item."""
    return max(1, min(numba.get_num_threads(), n_items))
