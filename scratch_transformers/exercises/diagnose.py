"""What a wrong gradient looks like: a diagnosis from the learner's gradient and the library's.

The library's backward is checked against central differences by the registry, so it serves as the full
reference here (central differences are taken on a sample of entries only). Patterns recognised, in order:

- transposed: the learner's array equals the library's with its axes permuted (or a square one transposed);
- zero: the learner returns zeros where the library does not (the input's whole term is missing);
- a constant factor: learner / library is the same number c on every entry (c = -1: the sign is flipped);
- a mask ignored: the wrong entries are exactly where the library's gradient is exactly zero (masked
  positions, dropped units, ignored labels);
- a boundary: the wrong entries all sit at the first or the last index of one axis (the first/last step, the
  edge of a window);
- a term missing: right on some entries and wrong on others; the sentence says where the wrong ones are.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np


def relative_error(got: np.ndarray, want: np.ndarray, floor: float = 1e-10) -> tuple[float, tuple]:
    """max |got - want| / max(max|got|, max|want|, floor), and the index of the largest difference."""
    diff = np.abs(got - want)
    if diff.size == 0:
        return 0.0, ()
    scale = max(np.max(np.abs(got)), np.max(np.abs(want)), floor)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return float(diff[worst] / scale), tuple(int(i) for i in worst)


def factor_name(c: float) -> str:
    """x2, x0.5, x-1, x(1/3), x1.37 ..."""
    frac = Fraction(c).limit_denominator(12)
    if abs(float(frac) - c) <= 1e-6 * max(1.0, abs(c)):
        return f"x{frac.numerator}" if frac.denominator == 1 else (
            f"x{float(frac):g}" if len(f"{float(frac):g}") <= 5 else f"x({frac})")
    return f"x{c:.4g}"


def transposed(got: np.ndarray, want: np.ndarray, tol: float) -> str | None:
    """'transposed' if got is want with permuted axes (not the identity permutation) or a reshape of want.T."""
    if got.size != want.size or want.ndim < 1 or got.size < 2:
        return None
    scale = max(np.max(np.abs(want)), 1e-30)
    for perm in itertools.permutations(range(want.ndim)):
        if perm == tuple(range(want.ndim)):
            continue
        cand = np.transpose(want, perm)
        if cand.shape == got.shape and not np.allclose(cand, want.reshape(cand.shape)) \
                and np.max(np.abs(cand - got)) <= tol * scale:
            return f"transposed: it equals the library's gradient with axes permuted {perm}"
    if want.ndim >= 2:
        flip = np.swapaxes(want, -1, -2)
        if flip.size == got.size and np.max(np.abs(flip.reshape(got.shape) - got)) <= tol * scale \
                and not np.allclose(flip.reshape(got.shape), want.reshape(got.shape)):
            return "transposed: it equals the library's gradient with its last two axes swapped"
    return None


def _where(bad: np.ndarray) -> str:
    """Where the wrong entries are, along each axis where they do not fill every index."""
    idx = np.argwhere(bad)
    parts = []
    for axis, size in enumerate(bad.shape):
        used = np.unique(idx[:, axis])
        if 0 < used.size < size:
            shown = ", ".join(str(i) for i in used[:6]) + (", ..." if used.size > 6 else "")
            parts.append(f"axis {axis} index {shown} (of {size})")
    return "at " + "; ".join(parts) if parts else "spread over every axis"


def diagnose(got: np.ndarray, want: np.ndarray, tol: float) -> str:
    """One sentence saying how ``got`` differs from the library's ``want`` (called only when they differ)."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return transposed(got, want, tol) or f"wrong shape {got.shape}, expected {want.shape}"
    msg = transposed(got, want, tol)
    if msg:
        return msg
    scale = max(np.max(np.abs(want), initial=0.0), np.max(np.abs(got), initial=0.0), 1e-30)
    if not np.all(np.isfinite(got)):
        n = int(np.sum(~np.isfinite(got)))
        return f"non-finite: {n} entries are NaN or inf ({_where(~np.isfinite(got))})"
    if np.max(np.abs(got)) <= 1e-12 * scale:
        return "zero: the gradient is 0 everywhere, the library's is not: this input's term is missing"
    if np.max(np.abs(want)) <= 1e-12 * scale:
        return "should be zero: the library's gradient is 0 everywhere (this input does not affect the output here)"
    bad = np.abs(got - want) > tol * scale
    nz = np.abs(want) > 1e-9 * scale
    ratios = got[nz] / want[nz]
    c = float(np.median(ratios))
    if nz.sum() >= 1 and np.all(np.abs(ratios - c) <= 1e-6 * max(1.0, abs(c))) \
            and np.all(np.abs(got[~nz]) <= 1e-9 * scale):
        if abs(c + 1) <= 1e-6:
            return "sign flipped: learner / library = -1 on every entry"
        return f"off by a constant factor {factor_name(c)}: learner / library = {c:.6g} on every entry"
    zero_ref = np.abs(want) <= 1e-14 * scale
    if bad.any() and zero_ref.any() and np.all(zero_ref[bad]) and (~zero_ref).any():
        return (f"wrong only where the library's gradient is exactly 0 ({int(bad.sum())} entries, {_where(bad)}): "
                "masked / dropped / ignored positions, is a mask ignored?")
    if bad.any() and bad.sum() < bad.size:
        for axis, size in enumerate(bad.shape):
            if size < 3:
                continue
            pos = np.argwhere(bad)[:, axis]
            for edge, label in ((0, "first"), (size - 1, "last")):
                if np.all(pos == edge):
                    return (f"wrong only at the {label} index of axis {axis} (a boundary: the {label} step / row / "
                            f"column), right elsewhere")
        frac = 1.0 - bad.sum() / bad.size
        return (f"a term missing or wrong: right on {frac:.0%} of the entries, wrong on {int(bad.sum())} "
                f"({_where(bad)})")
    return "wrong everywhere, with no constant factor: a term missing or wrong (compare each term with the derivation)"
