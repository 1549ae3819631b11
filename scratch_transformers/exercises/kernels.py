"""Kernel exercises: the loops the numba kernels run, in plain Python/NumPy, with the block structure given.

- ``flash_forward``: FA-2's forward (Dao 2023, arXiv 2307.08691, Algorithm 1): query tiles, key tiles, the running
  max and sum (line 9), the rescaled accumulator (line 10), the final division and log-sum-exp (lines 12-13),
  as ``attention.flash._fa2_forward_kernel`` runs them; checked against ``attention.reference.attention_forward``.
- ``selective_scan_forward``: the selective scan's recurrence (Gu & Dao 2023, arXiv 2312.00752, Algorithm 2 and
  eqs. 2a, 2b, 4), as ``mamba.scan_kernels.ssm_forward_kernel`` runs it; checked against
  ``mamba.scan.selective_scan_forward``.

The learner's function runs with plain Python (no numba), on the sample sizes and the hard cases (sizes that are
not multiples of the tiles, length 1, causal rows that see one key, an initial state).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core import validate
from ..attention.reference import attention_forward
from ..mamba.scan import selective_scan_forward
from .diagnose import diagnose, relative_error

FLASH_STUB = '''"""Exercise flash_forward: FA-2's forward loop (Dao 2023, arXiv 2307.08691, Algorithm 1) in plain NumPy.

The loop structure is given: fill in the TODO lines (the running max and sum, the rescaled accumulator, the
final division). The library runs the same loop in numba: scratch_transformers.attention.flash
(_fa2_forward_kernel); the derivation is derivations/flashattention.md, sections 2 and 3.
Check it (compared with scratch_transformers.attention.reference.attention_forward):
    python -m scratch_transformers exercise check {file}
"""

import numpy as np

EXERCISE = "flash_forward"


def flash_forward(q, k, v, *, scale=None, causal=False, block_q=4, block_k=3):
    """O = softmax(tau Q K^T (+ causal mask)) V tile by tile, never forming the (Nq, Nk) score matrix.

    q: (B, H, Nq, d), k: (B, H, Nk, d), v: (B, H, Nk, dv); causal: query i sees key j iff j <= i.
    Returns out (B, H, Nq, dv) and lse (B, H, Nq) = log sum_j exp(S_ij) (-inf for a row that sees no key).
    """
    n_b, n_h, n_q, d = q.shape
    n_k, d_v = k.shape[2], v.shape[3]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    out = np.zeros((n_b, n_h, n_q, d_v))
    lse = np.empty((n_b, n_h, n_q))
    for b in range(n_b):
        for h in range(n_h):
            for r0 in range(0, n_q, block_q):                  # line 3: for each query block Q_i
                qi = q[b, h, r0:r0 + block_q] * scale          # line 4: load Q_i (times tau)     (br, d)
                br = qi.shape[0]
                m = np.full(br, -np.inf)                       # line 5: running max m_i
                l = np.zeros(br)                               #         running sum l_i
                acc = np.zeros((br, d_v))                      #         unnormalised output O~_i
                for c0 in range(0, n_k, block_k):              # line 6: for each key block K_j, V_j
                    kj = k[b, h, c0:c0 + block_k]              # line 7: load K_j                 (bc, d)
                    vj = v[b, h, c0:c0 + block_k]              #         and V_j                  (bc, dv)
                    s = qi @ kj.T                              # line 8: S_ij = tau Q_i K_j^T      (br, bc)
                    if causal:                                 # query r0 + r sees key c0 + c iff c0 + c <= r0 + r
                        rows = np.arange(r0, r0 + br)[:, None]
                        cols = np.arange(c0, c0 + kj.shape[0])[None, :]
                        s = np.where(cols <= rows, s, -np.inf)
                    # TODO line 9:  m_new = max(m, rowmax S_ij);  P~ = exp(S_ij - m_new);
                    #               l = exp(m - m_new) * l + rowsum P~
                    #   (a row whose m_new is still -inf: shift by 0 instead, so exp(-inf - 0) = 0, not NaN)
                    # TODO line 10: acc = diag(exp(m - m_new)) acc + P~ V_j;  then m = m_new
                    raise NotImplementedError("lines 9-10: the running max, sum and accumulator")
                # TODO lines 12-13: out = diag(l)^-1 acc;  lse = m + log(l)
                #   (a row that saw no key, l = 0: out = 0 and lse = -inf)
                raise NotImplementedError("lines 12-13: the final division")
    return out, lse
'''

SCAN_STUB = '''"""Exercise selective_scan_forward: the selective scan's recurrence (Gu & Dao 2023, arXiv 2312.00752,
Algorithm 2, eqs. 2a, 2b, 4) as a plain loop over time.

The library runs the same loop in numba: scratch_transformers.mamba.scan_kernels.ssm_forward_kernel; the
derivation is derivations/mamba.md. Check it (compared with scratch_transformers.mamba.scan.selective_scan_forward):
    python -m scratch_transformers exercise check {file}
"""

import numpy as np

EXERCISE = "selective_scan_forward"


def selective_scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False, h0=None):
    """u, delta: (b, L, D); A: (D, N); B, C: (b, L, N); D (skip), delta_bias: (D,) or None; z: (b, L, D) or None;
    h0: (b, D, N) or None. Returns out (b, L, D) and h_last (b, D, N).
    """
    nb, L, Dd = u.shape
    N = A.shape[1]
    dt = delta + (delta_bias if delta_bias is not None else 0.0)      # Alg. 2 line 4: Delta before s_Delta
    if delta_softplus:
        dt = np.logaddexp(0.0, dt)                                      # tau_Delta = softplus
    h = np.zeros((nb, Dd, N)) if h0 is None else np.array(h0, dtype=np.float64)    # state h_{t-1}  (b, D, N)
    y = np.zeros((nb, L, Dd))                                           # (b, L, D)
    for t in range(L):                                                  # recurrent mode, one step at a time
        # TODO eq. (4):  A_bar_t = exp(dt_t A)                  (b, D, N)   (dt[:, t] is (b, D), A is (D, N))
        # TODO eq. (2a): h_t = A_bar_t * h_{t-1} + (dt_t u_t) B_t     (Euler B_bar = dt B; B[:, t] is (b, N))
        # TODO eq. (2b): y_t = sum_n C_t[n] h_t[..., n]          (b, D), plus the skip D * u_t when D is given
        raise NotImplementedError("the recurrence")
    if z is not None:
        y = y * z / (1.0 + np.exp(-z))                                  # the gate: y silu(z)
    return y, h
'''


def _attention_cases():
    def make(b, h, n_q, n_k, d, causal, blocks):
        def cases(rng):
            return dict(q=rng.standard_normal((b, h, n_q, d)), k=rng.standard_normal((b, h, n_k, d)),
                        v=rng.standard_normal((b, h, n_k, d + 1)), causal=causal, block_q=blocks[0], block_k=blocks[1])
        return cases
    return [("sample inputs", make(1, 2, 8, 8, 4, False, (4, 3))),
            ("causal", make(2, 1, 8, 8, 4, True, (4, 3))),
            ("odd sizes (not multiples of the tiles), Nq != Nk", make(1, 1, 7, 5, 3, False, (3, 2))),
            ("causal, Nq > Nk", make(1, 1, 6, 3, 2, True, (4, 2))),
            ("length 1", make(1, 1, 1, 1, 2, True, (4, 3))),
            ("tiles larger than the sequence", make(1, 1, 3, 2, 2, False, (16, 16)))]


def _flash_reference(q, k, v, causal, **_):
    out, cache = attention_forward(q, k, v, causal=causal)
    return out, cache.lse


def _scan_cases():
    def make(nb, L, Dd, N, full):
        def cases(rng):
            args = dict(u=rng.standard_normal((nb, L, Dd)), delta=rng.standard_normal((nb, L, Dd)) * 0.5,
                        A=-np.exp(rng.standard_normal((Dd, N)) * 0.5), B=rng.standard_normal((nb, L, N)),
                        C=rng.standard_normal((nb, L, N)))
            if full:
                args.update(D=rng.standard_normal(Dd), z=rng.standard_normal((nb, L, Dd)),
                            delta_bias=rng.standard_normal(Dd) * 0.3, delta_softplus=True,
                            h0=rng.standard_normal((nb, Dd, N)))
            else:
                args["delta"] = np.abs(args["delta"])
            return args
        return cases
    return [("sample inputs", make(2, 5, 3, 4, False)),
            ("skip D, gate z, delta_bias, softplus, h0", make(2, 6, 3, 2, True)),
            ("odd sizes", make(1, 7, 5, 3, True)),
            ("length 1", make(1, 1, 2, 3, True))]


def _scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None):
    (out, h_last), _ = selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus, h0=h0)
    return out, h_last


@dataclass(frozen=True)
class KernelExercise:
    name: str
    function: str            # the function the learner fills in
    stub: str
    reference: Callable
    reference_name: str
    cases: Callable
    outputs: tuple[str, str]
    library: str             # the numba kernel it mirrors
    tol: float = 1e-10


KERNELS = {
    "flash_forward": KernelExercise("flash_forward", "flash_forward", FLASH_STUB, _flash_reference,
                                    "scratch_transformers.attention.reference.attention_forward", _attention_cases,
                                    ("out", "lse"), "scratch_transformers.attention.flash._fa2_forward_kernel"),
    "selective_scan_forward": KernelExercise(
        "selective_scan_forward", "selective_scan_forward", SCAN_STUB, _scan_reference,
        "scratch_transformers.mamba.scan.selective_scan_forward", _scan_cases, ("out", "h_last"),
        "scratch_transformers.mamba.scan_kernels.ssm_forward_kernel"),
}


def stub_text(name: str, file_label: str) -> str:
    return KERNELS[name].stub.replace("{file}", file_label)


def difficulty(name: str) -> int:
    """Lines the learner writes in the reference solution (counted by hand: the TODO blocks)."""
    return {"flash_forward": 12, "selective_scan_forward": 5}[name]


def check_kernel_file(path, name: str, *, hard: bool = True, out=None, module=None) -> int:
    """Exit status of ``exercise check`` for a kernel exercise (``module``: the file, if already imported)."""
    hard = validate.flag(hard, "hard")
    from .checker import LearnerError, load_module, where

    out = out or sys.stdout
    ex = KERNELS[name]
    try:
        module = load_module(path) if module is None else module
    except LearnerError as err:
        print(f"error: {err}", file=out)
        return 2
    fn = getattr(module, ex.function, None)
    if not callable(fn):
        print(f"error: {path}: defines no function {ex.function}(...)", file=out)
        return 2
    print(f"exercise {name}: checked against {ex.reference_name} (float64, tol {ex.tol:g})", file=out)
    n_pass = n_fail = 0
    for i, (label, make) in enumerate(ex.cases()[: None if hard else 1]):
        args = make(np.random.default_rng(i))
        want = ex.reference(**args)
        try:
            got = fn(**args)
        except NotImplementedError:
            print(f"\n[FAIL] {label}\n  your {ex.function} raises NotImplementedError: fill in the TODO lines", file=out)
            return 1
        except Exception as err:
            print(f"\n[FAIL] {label}\n  your {ex.function} raised {where(err, path)}", file=out)
            n_fail += 1
            continue
        if not (isinstance(got, tuple) and len(got) == 2):
            print(f"\n[FAIL] {label}\n  expected a tuple ({', '.join(ex.outputs)}), got {type(got).__name__}", file=out)
            n_fail += 1
            continue
        lines, ok_all = [], True
        for oname, g, w in zip(ex.outputs, got, want):
            g = np.asarray(g, dtype=np.float64)
            if g.shape != w.shape:
                lines.append(f"  {oname:<8} shape {g.shape}, expected {w.shape}  FAIL")
                ok_all = False
                continue
            both_inf = np.isinf(w) & (g == w)
            gg, ww = np.where(both_inf, 0.0, g), np.where(both_inf, 0.0, w)
            err, worst = relative_error(np.nan_to_num(gg, nan=1e300), ww)
            ok = bool(err <= ex.tol)
            ok_all &= ok
            lines.append(f"  {oname:<8} rel err {err:9.2e}  {'ok  ' if ok else 'FAIL'}  worst at {worst} "
                         f"(yours {g[worst]:.6g} / reference {w[worst]:.6g})")
            if not ok:
                lines.append(f"      diagnosis: {diagnose(gg, ww, ex.tol)}")
        n_pass += ok_all
        n_fail += not ok_all
        print(f"\n[{'pass' if ok_all else 'FAIL'}] {label}", file=out)
        print("\n".join(lines), file=out)
    print(f"\n{n_pass} input sets passed, {n_fail} failed: {'PASS' if not n_fail else 'FAIL'}", file=out)
    return 0 if n_fail == 0 else 1
