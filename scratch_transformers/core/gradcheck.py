"""Central-difference gradient checking: the public tool for checking a hand-written backward.

The check builds the scalar L = sum_k <y_k, g_k> from the forward's output(s) y_k and fixed random
cotangents g_k, so dL/dx is exactly what ``backward(g, cache)`` should return. Each entry of each
checked input is perturbed by +-eps (float64 central differences, truncation error O(eps^2)):

    dL/dx[i] ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

and the error of input x is reported relative to the largest gradient entry of that input:

    rel_err(x) = max_i |analytic_i - numeric_i| / max(max_i |analytic_i|, max_i |numeric_i|, floor)

(an entry-wise ratio would blow up on entries that are zero up to rounding). A student's exercise:

    >>> def fwd(x, w): return x @ w, (x, w)
    >>> def bwd(dy, cache): x, w = cache; return {"x": dy @ w.T, "w": x.T @ dy}
    >>> rng = np.random.default_rng(0)
    >>> res = gradcheck(fwd, bwd, {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 2))})
    >>> res.passed
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from . import validate


@dataclass
class InputReport:
    name: str
    max_rel_error: float
    worst_index: tuple  # index of the entry with the largest |analytic - numeric|
    analytic_at_worst: float
    numeric_at_worst: float
    n_checked: int
    n_total: int


@dataclass
class GradcheckResult:
    reports: list[InputReport] = field(default_factory=list)
    tol: float = 1e-6
    eps: float = 1e-6
    unchecked: list[str] = field(default_factory=list)  # inputs not in wrt (named in the report)

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.reports), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.reports) and self.max_rel_error <= self.tol

    def __str__(self) -> str:
        lines = [f"gradcheck (float64 central differences, eps={self.eps:g}, tol={self.tol:g}): "
                 + ("PASS" if self.passed else "FAIL")]
        for r in self.reports:
            mark = "ok" if r.max_rel_error <= self.tol else "FAIL"
            lines.append(
                f"  {r.name:<16} rel_err={r.max_rel_error:.2e} {mark:<4} worst at {r.worst_index}: "
                f"analytic={r.analytic_at_worst:.6e} numeric={r.numeric_at_worst:.6e} "
                f"({r.n_checked}/{r.n_total} entries checked)"
            )
        if self.unchecked:
            lines.append("  not checked: " + ", ".join(self.unchecked))
        return "\n".join(lines)

    def assert_ok(self) -> "GradcheckResult":
        """Raise AssertionError with the report unless every input passed."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _as_tuple(y):
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _scalar_loss(y, cotangents) -> float:
    return float(sum(np.sum(np.asarray(a, dtype=np.float64) * g) for a, g in zip(_as_tuple(y), cotangents) if g is not None))


def gradcheck(
    forward: Callable,
    backward: Callable,
    inputs: Mapping[str, np.ndarray],
    *,
    wrt: Sequence[str] | None = None,
    eps: float = 1e-6,
    tol: float = 1e-6,
    floor: float = 1e-10,
    rng: np.random.Generator | None = None,
    cotangent=None,
    max_entries: int | None = None,
) -> GradcheckResult:
    """Compare ``backward`` against central differences of ``forward``.

    forward(**inputs) -> (y, cache), y an array, a float (e.g. a loss) or a tuple of them (None
    entries are skipped).
    backward(dy, cache) -> gradients: a dict {input name: grad} or a tuple in the order of ``wrt``.
    wrt: the names to check, each a float64 array (default: every float array in ``inputs``; a
        float32/float16 array is then refused rather than skipped: cast it to float64, or leave it
        out of an explicit ``wrt`` if it is not differentiated). Inputs not checked are named in
        the report (``GradcheckResult.unchecked``).
    cotangent: the dy to use (same structure as y); default standard normal from ``rng``.
    max_entries: check at most this many entries per input, chosen by ``rng`` (default: all).
    The forward must be deterministic (pass dropout masks or seeded generators in ``inputs``).
    """
    if not isinstance(inputs, Mapping):
        validate.fail("inputs", "a dict {name: array}", type(inputs).__name__)
    eps = validate.positive(eps, "eps")
    tol = validate.positive(tol, "tol")
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    inputs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    if wrt is None:
        # every float array is checked; one that is not float64 is refused, never silently skipped
        wrt = [k for k, v in inputs.items() if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
        for name in wrt:
            if inputs[name].dtype != np.float64:
                validate.fail(f"inputs[{name!r}]", "dtype float64 (gradcheck checks every float input in float64: "
                              f"pass inputs[{name!r}].astype(np.float64), or list the inputs to check in wrt=)",
                              inputs[name].dtype)
    wrt = list(wrt)
    if not wrt:
        validate.fail("wrt", "at least one float64 input to check", "none")
    for name in wrt:
        if name not in inputs:
            validate.fail("wrt", f"names among {sorted(inputs)}", repr(name))
        validate.array(inputs[name], f"inputs[{name!r}]", dtype=np.float64)

    y, cache = forward(**inputs)
    ys = _as_tuple(y)
    if cotangent is None:
        cot = tuple(None if a is None else (rng.standard_normal(np.shape(a)) if np.ndim(a) else float(rng.standard_normal()))
                    for a in ys)
    else:
        cot = _as_tuple(cotangent)
    dy = cot if isinstance(y, (tuple, list)) else cot[0]
    grads = backward(dy, cache)
    if not isinstance(grads, Mapping):
        grads = _as_tuple(grads)
        if len(grads) != len(wrt):
            validate.fail("backward", f"{len(wrt)} gradients (one per name in wrt={wrt})", f"{len(grads)}")
        grads = dict(zip(wrt, grads))

    result = GradcheckResult(tol=tol, eps=eps, unchecked=[k for k in inputs if k not in wrt])
    for name in wrt:
        x = inputs[name]
        g = grads.get(name)
        if g is None:
            validate.fail("backward", f"a gradient for {name!r}", "None / missing")
        g = np.asarray(g, dtype=np.float64)
        if g.shape != x.shape:
            validate.fail(f"gradient of {name!r}", f"shape {x.shape}", g.shape)
        flat = x.reshape(-1)  # a view: perturbing flat perturbs inputs[name]
        idx = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            idx = np.sort(rng.choice(flat.size, size=max_entries, replace=False))
        numeric = np.empty(idx.size)
        for n, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            lp = _scalar_loss(forward(**inputs)[0], cot)
            flat[i] = old - eps
            lm = _scalar_loss(forward(**inputs)[0], cot)
            flat[i] = old
            numeric[n] = (lp - lm) / (2 * eps)
        analytic = g.reshape(-1)[idx]
        diff = np.abs(analytic - numeric)
        scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0), floor)
        w = int(np.argmax(diff)) if diff.size else 0
        result.reports.append(InputReport(
            name=name,
            max_rel_error=float(diff[w] / scale) if diff.size else 0.0,
            worst_index=tuple(int(t) for t in np.unravel_index(idx[w], x.shape)) if diff.size else (),
            analytic_at_worst=float(analytic[w]) if diff.size else 0.0,
            numeric_at_worst=float(numeric[w]) if diff.size else 0.0,
            n_checked=int(idx.size), n_total=int(flat.size),
        ))
    return result
