"""Counter-based dropout for the FlashAttention kernels (FA-1 Alg. 2 line 14, Alg. 4 line 14): nothing is stored.

Entry (b, h, i, j) of call seed s is kept iff u >= p, where u = top 53 bits of splitmix64 output number
((b*H + h)*Nq + i)*Nk + j of the stream seeded by s, divided by 2^53. Any tile can compute its own piece of the
keep-mask Z in any order, and the backward regenerates exactly the forward's from (s, b, h, i, j); the seed is the
whole "RNG state" the paper's backward reloads. ``flash_dropout_mask`` materialises the mask (for tests, and for
the materialised reference core, which takes an explicit mask). An explicit boolean keep-mask can replace the
generator (``Dropout.has_mask``), so a caller can pass the reference's option to the flash kernels too.

splitmix64: Steele, Lea & Flood 2014 (the generator behind Java's SplittableRandom).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..core import validate
from .tiles import flat_broadcast

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)          # splitmix64 constants
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)


class Dropout(NamedTuple):
    """Dropout as the kernels read it (see ``make_dropout``)."""
    active: bool                  # dropout_p > 0
    inv_keep: float               # 1 / (1 - p) in the input dtype: kept entries of P~ are scaled by it
    seed: np.uint64               # the counter-based generator's seed
    threshold: np.uint64          # keep iff the top 53 bits of splitmix64 >= threshold = ceil(p 2^53)
    mask: np.ndarray              # an explicit keep-mask, flat (see tiles.flat_broadcast), or a single unread False
    mask_strides: np.ndarray      # its (4,) int64 element strides over (B, H, Nq, Nk)
    has_mask: bool


def make_dropout(dtype, dropout_p: float, seed: int, dropout_mask) -> Dropout:
    """The Dropout record of already validated options (dropout_mask: None or a bool array broadcastable to
    (B, H, Nq, Nk), used instead of the generator)."""
    mask, strides = flat_broadcast(dropout_mask, np.bool_)
    return Dropout(dropout_p > 0, dtype.type(1.0 / (1.0 - dropout_p)), _seed64(seed),
                   np.uint64(math.ceil(dropout_p * 2.0 ** 53)), mask, strides, dropout_mask is not None)


def _seed64(seed: int) -> np.uint64:
    return np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)


@njit(cache=True)
def keep(seed, counter, threshold):
    """True iff dropout keeps the entry with this counter: splitmix64(seed, counter) >> 11 >= threshold."""
    z = seed + (np.uint64(counter) + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return (z >> _S11) >= threshold


@njit(cache=True)
def kept(dropout, b, h, i, j, counter):
    """Dropout keep decision for entry (b, h, i, j) (counter = its flat index in (B, H, Nq, Nk)): the caller's
    explicit mask if one was given, else the counter-based generator. A kernel building block (no checks)."""
    if dropout.has_mask:
        st = dropout.mask_strides
        return dropout.mask[b * st[0] + h * st[1] + i * st[2] + j * st[3]]
    return keep(dropout.seed, counter, dropout.threshold)


@njit(cache=True, parallel=True)
def _mask_kernel(seed, threshold, out):
    n_b, n_h, n_q, n_k = out.shape
    for bh in prange(n_b * n_h):
        b, h = bh // n_h, bh % n_h
        for i in range(n_q):
            base = ((b * n_h + h) * n_q + i) * n_k
            for j in range(n_k):
                out[b, h, i, j] = keep(seed, base + j, threshold)


def flash_dropout_mask(seed, shape, dropout_p):
    """The boolean keep-mask (B, H, Nq, Nk) that flash attention with this seed and p applies.

    Materialised for testing and for the materialised reference core (``attention.reference``'s
    ``dropout_mask``); the kernels regenerate each entry from (seed, b, h, i, j) instead.
    """
    seed = validate.integer(seed, "seed")
    if not (isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(s, int) and s >= 1 for s in shape)):
        validate.fail("shape", "a tuple (B, H, Nq, Nk) of positive ints", repr(shape))
    dropout_p = validate.probability(dropout_p, "dropout_p")
    out = np.empty(shape, dtype=np.bool_)
    with np.errstate(over="ignore"):   # splitmix64 wraps around uint64 on purpose (NUMBA_DISABLE_JIT=1)
        _mask_kernel(_seed64(seed), np.uint64(math.ceil(dropout_p * 2.0 ** 53)), out)
    return out
