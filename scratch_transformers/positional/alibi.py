"""ALiBi: attention with linear biases (Press, Smith & Lewis, "Train Short, Test Long", arXiv 2108.12409, §3).

No position embedding anywhere; instead every head h adds a fixed penalty proportional to the
query-key distance to its pre-softmax scores, after the 1/sqrt(d) scaling (§3, unnumbered):

    softmax(q_i K^T / sqrt(d) + m_h * [-(i-1), ..., -2, -1, 0])

Glossary (code symbol -> paper symbol):

    slopes    (H,)          m_h, the head-specific slope, fixed before training (never learned)
    i, j                    query / key positions, 0-based here (the paper counts queries 1..L)
    bias      (H, Nq, Nk)   -m_h (i - j) for j <= i and -inf for j > i (causal form, which
                            includes the causal mask); -m_h |i - j| (symmetric form, for
                            bidirectional attention; ofirpress/attention_with_linear_biases issue #5)

When Nq < Nk (KV-cache decoding, chunked prefill) the queries are the *last* Nq positions:
i = Nk - Nq + t for query row t (bottom-right alignment, as the causal mask).

The bias is a constant: its backward is the identity on dS, handled by the attention function
(attention_backward returns dbias; nothing to learn here).
"""

from __future__ import annotations

import math

import numpy as np

from ..core import validate


def _power_of_two_slopes(n: int) -> list[float]:
    """Geometric sequence with first term and ratio 2^(-8/n): 2^(-8/n), 2^(-16/n), ..., 2^(-8)   (§3)."""
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def alibi_slopes(n_heads: int) -> np.ndarray:
    """Head slopes m_1..m_H, float64 (H,)   (ALiBi §3 and the authors' ``get_slopes``).

    Power-of-two H: m_h = 2^(-8h/H), h = 1..H (8 heads: 1/2, 1/4, ..., 1/256).
    Other H (the rule of the paper's reference code, quoted in the paper's footnote): take the
    slopes of the largest power of two c < H, then add every other slope of the 2c-head sequence
    (those with odd exponents: the geometric means between consecutive c-slopes), the first H - c
    of them. For H = 12: 2^-1..2^-8 followed by 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """
    n_heads = validate.positive_int(n_heads, "n_heads")
    c = 2 ** int(math.floor(math.log2(n_heads)))
    if c == n_heads:
        return np.array(_power_of_two_slopes(n_heads), dtype=np.float64)
    extra = _power_of_two_slopes(2 * c)[0::2][: n_heads - c]
    return np.array(_power_of_two_slopes(c) + extra, dtype=np.float64)


def alibi_bias(n_heads: int, n_q: int, n_k: int, *, slopes=None, causal: bool = True) -> np.ndarray:
    """The additive ALiBi bias, float64 (H, Nq, Nk), to add after the 1/sqrt(d) scaling   (§3).

    n_heads: H. n_q <= n_k: queries are the last n_q of the n_k positions (end-aligned).
    slopes: (H,) slopes (default ``alibi_slopes(H)``; pass scaled slopes for ALiBi interpolation,
        ``scaling.interpolate_alibi_slopes``).
    causal=True: bias[h, t, j] = -m_h (i_t - j) for j <= i_t and -inf for j > i_t (the bias then
        also *is* the causal mask); causal=False: the symmetric -m_h |i_t - j|.
    """
    n_heads = validate.positive_int(n_heads, "n_heads")
    n_q = validate.positive_int(n_q, "n_q")
    n_k = validate.positive_int(n_k, "n_k")
    if n_q > n_k:
        validate.fail("n_q", f"n_q <= n_k = {n_k} (queries are the last n_q key positions)", n_q)
    validate.flag(causal, "causal")
    if slopes is None:
        slopes = alibi_slopes(n_heads)
    slopes = validate.array(slopes, "slopes", shape=(n_heads,), finite=True)
    if not np.issubdtype(slopes.dtype, np.floating):
        validate.fail("slopes", "a float array", f"dtype {slopes.dtype}")
    slopes = slopes.astype(np.float64)
    i = np.arange(n_k - n_q, n_k, dtype=np.float64)            # (Nq,) end-aligned query positions
    j = np.arange(n_k, dtype=np.float64)                        # (Nk,) key positions
    rel = j[None, :] - i[:, None]                               # (Nq, Nk) j - i  (<= 0 for past keys)
    if causal:
        bias = slopes[:, None, None] * np.minimum(rel, 0.0)[None]       # (H, Nq, Nk) -m (i - j)
        bias[:, rel > 0] = -np.inf                                       # future keys masked
    else:
        bias = 0.0 - slopes[:, None, None] * np.abs(rel)[None]           # (H, Nq, Nk) -m |i - j|
    return bias
