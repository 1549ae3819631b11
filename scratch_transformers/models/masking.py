"""BERT's masked-LM corruption: choose 15% of the positions, replace 80% of those by [MASK], 10% by a
random token, keep 10% (Devlin et al. 2019, arXiv 1810.04805, §3.1 and App. A.1). Tokenizer-agnostic:
the vocabulary size and the mask id are arguments."""

from __future__ import annotations

import numpy as np

from ..core import validate

IGNORE = -100      # the target of an unchosen position (cross_entropy_forward's ignore_index)


def mask_tokens(tokens, rng, *, vocab_size, mask_id, mask_prob=0.15, padding_mask=None, special_ids=()):
    """BERT's masked-LM corruption (Devlin et al. 2019 §3.1 and App. A.1), all randomness from ``rng``.

    In every row, round(mask_prob * n) of its n eligible positions (at least one when n > 0; eligible:
    not padded and not in ``special_ids``) are chosen uniformly without replacement, as BERT's data
    generator does per sequence. Each chosen position is replaced by ``mask_id`` with probability 0.8,
    by a token drawn uniformly from [0, vocab_size) with probability 0.1, and kept with probability 0.1.

    tokens: (B, T) int in [0, vocab_size). padding_mask: bool (B, T), True = padding.
    Returns (inputs (B, T) int64, targets (B, T) int64 with the original token at chosen positions and
    -100 elsewhere).
    """
    vocab_size = validate.positive_int(vocab_size, "vocab_size")
    mask_id = validate.integer(mask_id, "mask_id", low=0, high=vocab_size - 1)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=vocab_size)
    mask_prob = validate.real(mask_prob, "mask_prob", low=0.0, high=1.0, low_open=True)
    if padding_mask is not None:
        padding_mask = validate.bool_array(padding_mask, "padding_mask", shape=tokens.shape)
    special = validate.int_array(np.asarray(tuple(special_ids), dtype=np.int64), "special_ids", ndim=1)
    rng = validate.rng(rng)
    B, T = tokens.shape
    eligible = ~np.isin(tokens, special)                                     # (B, T)
    if padding_mask is not None:
        eligible &= ~padding_mask
    n_eligible = eligible.sum(axis=1)                                        # (B,)
    n_chosen = np.where(n_eligible > 0, np.maximum(1, np.floor(mask_prob * n_eligible + 0.5)), 0).astype(int)
    keys = np.where(eligible, rng.random((B, T)), np.inf)                    # random order of eligible slots
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1)       # (B, T) rank of each slot
    chosen = rank < n_chosen[:, None]                                        # (B, T)
    u = rng.random((B, T))                                                   # 80 / 10 / 10 split
    random_tokens = rng.integers(0, vocab_size, size=(B, T))
    inputs = tokens.astype(np.int64)
    inputs = np.where(chosen & (u < 0.8), mask_id, inputs)
    inputs = np.where(chosen & (u >= 0.8) & (u < 0.9), random_tokens, inputs)
    targets = np.where(chosen, tokens, IGNORE).astype(np.int64)
    return inputs, targets
