"""Rotary position embedding (RoPE; RoFormer, Su et al., arXiv 2104.09864, §3.2-3.4).

RoPE rotates each pair of features of a query / key by an angle proportional to its position,
so that the score of a rotated query at position m and a rotated key at position n depends on
the positions only through m - n (eq. 11, 16):

    q_m^T k_n = (R_m W_q x_m)^T (R_n W_k x_n) = x_m^T W_q^T R_{n-m} W_k x_n        (eq. 16)

Glossary (code symbol -> paper symbol):

    x           (..., N, d)   the per-head queries or keys, W_{q,k} x_m of eq. (14)
    positions   (N,)          m, the position of each row (fractional allowed: position interpolation)
    inv_freq    (r/2,)        Theta = {theta_i = base^(-2i/r), i = 0..r/2-1}  (eq. 15, 0-based)
    rot_dim     r             number of rotated features (partial rotary, GPT-NeoX ``rotary_pct``);
                              the exponent of theta uses r, not d (as GPT-NeoX's rotary_ndims)
    cos, sin    (N, r/2)      cos(m theta_i), sin(m theta_i), computed in float64
    layout      "interleaved" pairs (2i, 2i+1): RoFormer eq. (34), GPT-J ``rotate_every_two``
                "half"        pairs (i, i + r/2): GPT-NeoX / Llama ``rotate_half``

For pair i with components (a, b) the rotation R(m theta_i) of eq. (13)/(15) is

    a' = a cos(m theta_i) - b sin(m theta_i)
    b' = a sin(m theta_i) + b cos(m theta_i)                                         (eq. 34)

The two layouts differ only in *which* features form a pair; with the permutation
P = [0, 2, 4, ..., r-2, 1, 3, ..., r-1] (``layout_permutation``) they satisfy
``rope(x[..., P], layout="half") == rope(x, layout="interleaved")[..., P]``.

Backward: R_m is orthogonal, so dL/dx = R_m^T dL/dy = R_{-m} dy: the rotation by minus the angle
(derivations/positions.md#rope-backward).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate

LAYOUTS = ("half", "interleaved")


class RopeCache(NamedTuple):
    cos: np.ndarray   # (N, r/2) cos(m theta_i), in the dtype of x
    sin: np.ndarray   # (N, r/2) sin(m theta_i), in the dtype of x
    rot_dim: int      # r: features [0, r) are rotated, [r, d) pass through
    layout: str       # "half" | "interleaved"
    shape: tuple      # shape of x, (..., N, d)


def rope_inv_freq(rot_dim: int, base: float = 10000.0) -> np.ndarray:
    """theta_i = base^(-2i/r), i = 0..r/2-1, in float64   (RoFormer eq. 15, 0-based as in §3.3 / PI eq. 1).

    Returns (r/2,) float64. theta_0 = 1 (fastest, wavelength 2 pi); theta_{r/2-1} = base^(-(r-2)/r).
    """
    rot_dim = validate.positive_int(rot_dim, "rot_dim")
    if rot_dim % 2:
        validate.fail("rot_dim", "an even integer", rot_dim)
    base = validate.real(base, "base", low=1.0, low_open=True)
    i = np.arange(0, rot_dim, 2, dtype=np.float64)            # 2i, i = 0..r/2-1
    return base ** (-i / rot_dim)                             # (r/2,)


def layout_permutation(rot_dim: int) -> np.ndarray:
    """P = [0, 2, ..., r-2, 1, 3, ..., r-1]: interleaved feature order -> rotate-half order.

    ``rope_forward(x[..., P], layout="half") == rope_forward(x, layout="interleaved")[..., P]``;
    HF's Llama conversion script applies this permutation to the rows of W_q and W_k.
    """
    rot_dim = validate.positive_int(rot_dim, "rot_dim")
    if rot_dim % 2:
        validate.fail("rot_dim", "an even integer", rot_dim)
    return np.concatenate([np.arange(0, rot_dim, 2), np.arange(1, rot_dim, 2)])


def rope_angles(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """m theta_i for every position m and pair i, float64, shape (N, r/2) (outer product)."""
    positions = validate.array(positions, "positions", ndim=1, finite=True)
    inv_freq = validate.array(inv_freq, "inv_freq", ndim=1, finite=True)
    return np.multiply.outer(positions.astype(np.float64), inv_freq.astype(np.float64))


def rope_rotation_matrix(position: float, inv_freq: np.ndarray, layout: str = "interleaved") -> np.ndarray:
    """The r x r block-diagonal R^r_{Theta,m} of RoFormer eq. (15), float64 (for reading and testing).

    With layout="interleaved" the 2x2 blocks R(m theta_i) sit on the diagonal; with "half" they act
    on the feature pairs (i, i + r/2). ``x @ R.T`` equals ``rope_forward`` applied to a row x.
    """
    layout = validate.option(layout, "layout", LAYOUTS)
    position = validate.real(position, "position")
    inv_freq = validate.array(inv_freq, "inv_freq", ndim=1, finite=True).astype(np.float64)
    half = inv_freq.size
    R = np.zeros((2 * half, 2 * half))
    for i, theta in enumerate(inv_freq):
        c, s = np.cos(position * theta), np.sin(position * theta)
        a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + half)
        R[a, a], R[a, b] = c, -s                                # eq. (13): [[cos, -sin],
        R[b, a], R[b, b] = s, c                                 #            [sin,  cos]]
    return R


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rot_dim: int, layout: str) -> np.ndarray:
    """y = R x on the first rot_dim features (eq. 34); the rest pass through. cos/sin: (N, r/2)."""
    if layout == "half":
        a = x[..., : rot_dim // 2]                              # (..., N, r/2) first of each pair
        b = x[..., rot_dim // 2: rot_dim]                       # (..., N, r/2) second of each pair
    else:
        a = x[..., 0:rot_dim:2]                                 # (..., N, r/2) features 2i
        b = x[..., 1:rot_dim:2]                                 # (..., N, r/2) features 2i+1
    a_rot = a * cos - b * sin                                   # eq. (34), first component
    b_rot = a * sin + b * cos                                   # eq. (34), second component
    y = np.empty_like(x)                                        # (..., N, d)
    if layout == "half":
        y[..., : rot_dim // 2] = a_rot
        y[..., rot_dim // 2: rot_dim] = b_rot
    else:
        y[..., 0:rot_dim:2] = a_rot
        y[..., 1:rot_dim:2] = b_rot
    y[..., rot_dim:] = x[..., rot_dim:]                         # partial rotary: untouched tail
    return y


def rope_forward(x, positions=None, *, base=10000.0, rot_dim=None, layout="half", inv_freq=None, offset=0):
    """Rotate queries or keys by their positions: y = R^r_{Theta, m} x   (RoFormer eq. 14-15, 34).

    x: (..., N, d), usually (B, H, N, d), float32 or float64.
    positions: (N,) real positions m (int or float; fractional allowed, e.g. for position
        interpolation); None means 0..N-1. The rotation uses m + offset.
    base: the base of theta_i = base^(-2i/r) (ignored when inv_freq is given).
    rot_dim: r, number of rotated features (even, <= d; default d). Features r..d-1 pass through.
    layout: "half" (GPT-NeoX / Llama rotate_half) or "interleaved" (RoFormer / GPT-J).
    inv_freq: optional (r/2,) frequencies overriding base (position interpolation, NTK scaling).
    offset: added to every position (KV-cache decoding: the new tokens sit at past_len + t).

    Angles m * theta_i are computed in float64 and the result is cast to x's dtype.
    Returns y (same shape and dtype as x) and a RopeCache for rope_backward.
    """
    x = validate.float_array(x, "x", min_ndim=2)
    n, d = x.shape[-2], x.shape[-1]
    layout = validate.option(layout, "layout", LAYOUTS)
    if rot_dim is None:
        rot_dim = d
    rot_dim = validate.integer(rot_dim, "rot_dim", low=2, high=d)
    if rot_dim % 2:
        validate.fail("rot_dim", "an even integer", rot_dim)
    offset = validate.real(offset, "offset")
    if positions is None:
        positions = np.arange(n, dtype=np.float64)
    positions = validate.array(positions, "positions", shape=(n,), finite=True)
    if not (np.issubdtype(positions.dtype, np.integer) or np.issubdtype(positions.dtype, np.floating)):
        validate.fail("positions", "an integer or float array", f"dtype {positions.dtype}")
    if inv_freq is None:
        inv_freq = rope_inv_freq(rot_dim, base)
    else:
        inv_freq = validate.array(inv_freq, "inv_freq", shape=(rot_dim // 2,), finite=True)
        if not np.issubdtype(inv_freq.dtype, np.floating):
            validate.fail("inv_freq", "a float array", f"dtype {inv_freq.dtype}")
    angles = rope_angles(positions.astype(np.float64) + offset, inv_freq)   # (N, r/2) float64
    cos = np.cos(angles).astype(x.dtype)                                     # (N, r/2)
    sin = np.sin(angles).astype(x.dtype)                                     # (N, r/2)
    y = _rotate(x, cos, sin, rot_dim, layout)                                # (..., N, d)
    return y, RopeCache(cos=cos, sin=sin, rot_dim=rot_dim, layout=layout, shape=x.shape)


def rope_backward(dy, cache: RopeCache):
    """dx = R_m^T dy = R_{-m} dy: the same rotation with minus the angle (sin -> -sin).

    Derived in derivations/positions.md#rope-backward. dy: shape of x. Returns dx.
    """
    if not isinstance(cache, RopeCache):
        validate.fail("cache", "a RopeCache from rope_forward", type(cache).__name__)
    dy = validate.float_array(dy, "dy", shape=cache.shape, dtype=cache.cos.dtype)
    return _rotate(dy, cache.cos, -cache.sin, cache.rot_dim, cache.layout)
