"""Context extension: position interpolation (RoPE and ALiBi), NTK-aware base change, RoPE base-scaling laws.

Every function returns frequencies, slopes, positions or a length; the model applies them through
``rope_forward(..., inv_freq=...)`` / ``rope_forward(positions=...)`` / ``alibi_bias(..., slopes=...)``.

Symbols: L = train length, L' (or l') = target / current length, s = L'/L the scale factor,
r = rotary dimension (the head dim d when all features rotate), b = RoPE base (10000),
theta_i = b^(-2i/r).

Papers:
- Position Interpolation, Chen et al., arXiv 2306.15595 ("PI"): f'(x, m) = f(x, m L / L')    (eq. 4).
- Position Interpolation Improves ALiBi Extrapolation, Al-Khateeb et al., arXiv 2310.13017: ALiBi's
  bias is linear in the distance, so scaling positions by L/L' is scaling every slope by L/L'.
- NTK-aware scaling (bloc97; written up in YaRN, Peng et al., arXiv 2309.00071, eq. 14-16):
  keep positions, change the base b' = b s^(r/(r-2)).
- Scaling Laws of RoPE-based Extrapolation, Liu et al., arXiv 2310.05209: critical dimension
  d_extra (eq. 13), critical base beta_0 (16a), extrapolation bound T_extra (16b), (16c), (16d).
"""

from __future__ import annotations

import math

import numpy as np

from ..core import validate
from .rope import rope_inv_freq


def _scale(value, name):
    return validate.real(value, name, low=1.0)


# ----------------------------------------------------------------------------------------------
# Position interpolation for RoPE (arXiv 2306.15595)
# ----------------------------------------------------------------------------------------------

def interpolate_positions(positions, scale: float) -> np.ndarray:
    """PI (arXiv 2306.15595, eq. 4): m -> m L / L' = m / s, float64.

    Positions in [0, L') are squeezed into [0, L): the largest relative distance seen is again L.
    scale: s = L'/L >= 1. Fractional results are intended (rope_forward accepts them).
    """
    positions = validate.array(positions, "positions", ndim=1, finite=True)
    scale = _scale(scale, "scale")
    return positions.astype(np.float64) / scale


def pi_inv_freq(rot_dim: int, base: float = 10000.0, scale: float = 1.0) -> np.ndarray:
    """PI as frequencies: theta_i / s (HF rope type "linear"); same angles as interpolate_positions.

    (m / s) theta_i = m (theta_i / s), so ``rope_forward(x, p, inv_freq=pi_inv_freq(r, b, s))``
    equals ``rope_forward(x, interpolate_positions(p, s), base=b)``.
    """
    return rope_inv_freq(rot_dim, base) / _scale(scale, "scale")


# ----------------------------------------------------------------------------------------------
# NTK-aware base change (arXiv 2309.00071 §3.1, eq. 14-16)
# ----------------------------------------------------------------------------------------------

def ntk_aware_base(base: float, scale: float, rot_dim: int) -> float:
    """b' = b s^(r/(r-2))   (YaRN eq. 16).

    Chosen so that the slowest frequency theta_{r/2-1} = b^(-(r-2)/r) is divided by exactly s
    (interpolated like PI) while the fastest, theta_0 = 1, is unchanged (extrapolated): high
    frequencies keep their resolution. Example: b = 1e4, r = 128, s = 4 -> b' ~ 40,890.
    """
    base = validate.real(base, "base", low=1.0, low_open=True)
    scale = _scale(scale, "scale")
    rot_dim = validate.integer(rot_dim, "rot_dim", low=4)
    if rot_dim % 2:
        validate.fail("rot_dim", "an even integer", rot_dim)
    return base * scale ** (rot_dim / (rot_dim - 2))


def ntk_inv_freq(rot_dim: int, base: float = 10000.0, scale: float = 1.0) -> np.ndarray:
    """theta'_i = b'^(-2i/r) with the NTK-aware base b' (YaRN eq. 15-16); positions unchanged."""
    return rope_inv_freq(rot_dim, ntk_aware_base(base, scale, rot_dim))


def dynamic_scale(seq_len: int, train_len: int) -> float:
    """Dynamic scaling (YaRN §3.3): s = max(1, l'/L), recomputed from the current length l'.

    With a KV cache the keys must then be cached *before* rotation (every rotation changes with s).
    """
    seq_len = validate.positive_int(seq_len, "seq_len")
    train_len = validate.positive_int(train_len, "train_len")
    return max(1.0, seq_len / train_len)


def dynamic_ntk_inv_freq(rot_dim: int, seq_len: int, train_len: int, base: float = 10000.0) -> np.ndarray:
    """Dynamic NTK (YaRN §3.3): the NTK-aware base with s = max(1, l'/L); identity for l' <= L."""
    return ntk_inv_freq(rot_dim, base, dynamic_scale(seq_len, train_len))


# ----------------------------------------------------------------------------------------------
# Position interpolation for ALiBi (arXiv 2310.13017)
# ----------------------------------------------------------------------------------------------

def alibi_interpolation_factor(train_len: int, input_len: int, *, dynamic: bool = True) -> float:
    """The slope multiplier of ALiBi position interpolation (arXiv 2310.13017).

    Scaling positions by L/l' multiplies every bias -m |i - j| by L/l', i.e. every slope.
    dynamic=True: factor = min(1, L / l') with l' the current input length (no change inside the
    training length; Cerebras BTLM's "dynamic linear scaling"). dynamic=False: the fixed factor
    L / L' for a chosen target length L' (used when fine-tuning at L'), also when l' < L'.
    """
    train_len = validate.positive_int(train_len, "train_len")
    input_len = validate.positive_int(input_len, "input_len")
    validate.flag(dynamic, "dynamic")
    factor = train_len / input_len
    return min(1.0, factor) if dynamic else factor


def interpolate_alibi_slopes(slopes, train_len: int, input_len: int, *, dynamic: bool = True) -> np.ndarray:
    """m_h -> m_h * alibi_interpolation_factor(L, l')   (arXiv 2310.13017), float64 (H,).

    Feed the result to ``alibi_bias(..., slopes=...)``.
    """
    slopes = validate.array(slopes, "slopes", ndim=1, finite=True)
    if not np.issubdtype(slopes.dtype, np.floating):
        validate.fail("slopes", "a float array", f"dtype {slopes.dtype}")
    return slopes.astype(np.float64) * alibi_interpolation_factor(train_len, input_len, dynamic=dynamic)


# ----------------------------------------------------------------------------------------------
# Scaling laws of RoPE-based extrapolation (arXiv 2310.05209)
# ----------------------------------------------------------------------------------------------

def rope_periods(rot_dim: int, base: float = 10000.0) -> np.ndarray:
    """T_n = 2 pi / theta_n = 2 pi b^(2n/r), n = 0..r/2-1 (Lemma 1): the period of pair n, (r/2,)."""
    return 2.0 * np.pi / rope_inv_freq(rot_dim, base)


def critical_dimension(rot_dim: int, train_len: int, base: float = 10000.0) -> int:
    """d_extra = 2 ceil( (r/2) log_b (T_train / 2 pi) )   (arXiv 2310.05209, eq. 13), clipped to [0, r].

    Pairs n < d_extra/2 have period T_n <= T_train (they saw a full turn in training); the
    remaining r - d_extra features saw only part of a period and are out of distribution when
    extrapolating. LLaMA2 (T_train = 4096, r = 128): 92.
    """
    rot_dim = validate.integer(rot_dim, "rot_dim", low=2)
    if rot_dim % 2:
        validate.fail("rot_dim", "an even integer", rot_dim)
    train_len = validate.positive_int(train_len, "train_len")
    base = validate.real(base, "base", low=1.0, low_open=True)
    half = rot_dim / 2 * math.log(train_len / (2 * math.pi)) / math.log(base)
    return int(min(rot_dim, max(0, 2 * math.ceil(half - 1e-12))))


def critical_base(train_len: int, tune_len: int, base: float = 10000.0) -> float:
    """beta_0 = b^(log_{T_train/2pi}(T_tune/2pi))   (arXiv 2310.05209, eq. 16a).

    The base whose critical pair has period T_tune exactly where the pretrained one had T_train;
    equals b when T_tune = T_train. Requires T_train > 2 pi.
    """
    train_len = validate.positive_int(train_len, "train_len")
    tune_len = validate.positive_int(tune_len, "tune_len")
    base = validate.real(base, "base", low=1.0, low_open=True)
    if train_len <= 2 * math.pi:
        validate.fail("train_len", "a length > 2 pi", train_len)
    exponent = math.log(tune_len / (2 * math.pi)) / math.log(train_len / (2 * math.pi))
    return base ** exponent


def extrapolation_bound(tuned_base: float, rot_dim: int, train_len: int, tune_len: int | None = None,
                        base: float = 10000.0) -> float:
    """Upper bound of the context a RoPE model tuned with base beta handles (arXiv 2310.05209, Thm 3).

    beta > beta_0 (16b): T_extra = 2 pi beta^(d_extra / r), with d_extra from pretraining (eq. 13):
        the critical pair's period under the new base; beyond it that pair meets unseen angles.
    beta <= beta_0 (16c): the bound is T_tune (smaller bases then degrade gradually past it, 16d;
        the paper gives no hard wall there). tune_len defaults to train_len (no fine-tuning).
    """
    tuned_base = validate.real(tuned_base, "tuned_base", low=1.0, low_open=True)
    tune_len = train_len if tune_len is None else tune_len
    beta0 = critical_base(train_len, tune_len, base)
    if tuned_base > beta0:
        d_extra = critical_dimension(rot_dim, train_len, base)
        return 2 * math.pi * tuned_base ** (d_extra / rot_dim)
    return float(tune_len)


def tuned_critical_dimension(rot_dim: int, tune_len: int, tuned_base: float) -> int:
    """d'_extra = 2 ceil( (r/2) log_beta (T_tune / 2 pi) ) >= d_extra   (arXiv 2310.05209, eq. 16c)."""
    return critical_dimension(rot_dim, tune_len, tuned_base)


def small_base_thresholds(tune_len: int) -> tuple[float, float, float]:
    """beta_1, beta_2, beta_3 = 2 T_tune / pi, T_tune / pi, T_tune / (2 pi)   (arXiv 2310.05209, eq. 16d).

    Bases below these extrapolate markedly past T_tune: the slowest pair's angle over T_tune then
    covers at least pi/2, pi, 2 pi (with theta_slowest ~ 1/beta for large r).
    """
    tune_len = validate.positive_int(tune_len, "tune_len")
    return 2 * tune_len / math.pi, tune_len / math.pi, tune_len / (2 * math.pi)
