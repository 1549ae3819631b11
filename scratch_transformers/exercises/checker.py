"""``exercise check FILE``: the learner's backward against central differences and the library's backward.

For each input set (the registry's sample inputs, the same maker with other seeds, the entry's hard cases)
the learner's function is put where the library's is (``patching.substituted``), the registry entry's forward
and backward are run, and every input gradient the entry checks is compared, in float64:

- against central differences ``(L(x + eps e_i) - L(x - eps e_i)) / 2 eps`` of the forward on a sample of
  entries (always including the entry where the learner and the library differ most);
- against the library's backward on every entry (the library's passes the registry's gradient check);
- on a failure, ``diagnose.diagnose`` says what the difference looks like (a factor, a sign, a transpose ...).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..core import validate
from .catalog import Exercise, find
from .diagnose import diagnose, relative_error
from .hard_cases import input_sets
from .patching import Recorder, structure_mismatch, substituted


NUMERIC_FLOOR = 1e-8


class LearnerError(Exception):
    """A problem with the learner's file, said in one or two sentences (no traceback)."""


@dataclass
class InputResult:
    name: str
    err_numeric: float
    err_library: float
    worst: tuple
    yours: float
    library: float
    passed: bool
    diagnosis: str = ""


@dataclass
class CaseResult:
    label: str
    inputs: list[InputResult] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(r.passed for r in self.inputs)


def load_module(path: Path):
    """Import a file by path; a failure becomes a LearnerError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise LearnerError(f"{path}: no such file")
    name = f"_exercise_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise LearnerError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    except Exception as err:  # anything the learner's module does at import time
        raise LearnerError(f"{path}: importing it failed: {where(err, path)}") from None
    return module


def where(err: BaseException, path) -> str:
    """'ValueError: msg (line 12 of your file: `code`)' from the innermost frame in the learner's file."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == Path(path).resolve()]
    at = f" (line {frames[-1].lineno} of your file: `{(frames[-1].line or '').strip()}`)" if frames else ""
    return f"{type(err).__name__}: {err}{at}"


def _cotangent(y, rng):
    if isinstance(y, (tuple, list)):
        return tuple(_cotangent(a, rng) if a is not None else None for a in y)
    return rng.standard_normal(np.shape(y)) if np.ndim(y) else float(rng.standard_normal())


def _loss(y, dy) -> float:
    if isinstance(y, (tuple, list)):
        return float(sum(_loss(a, g) for a, g in zip(y, dy) if a is not None and g is not None))
    return float(np.sum(np.asarray(y, dtype=np.float64) * dy))


def _named(grads, wrt) -> dict:
    if isinstance(grads, Mapping):
        return dict(grads)
    grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
    if len(grads) != len(wrt):
        raise LearnerError(f"the entry's backward gave {len(grads)} gradients for {len(wrt)} inputs {list(wrt)}")
    return dict(zip(wrt, grads))


def wrt_of(ex: Exercise, inputs: dict) -> list[str]:
    if ex.op.wrt is not None:
        return list(ex.op.wrt)
    return [k for k, v in inputs.items() if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]


class Attempt:
    """The learner's backward (and forward, if the file defines its own) for one exercise."""

    def __init__(self, ex: Exercise, backward, forward=None, path=None):
        self.ex, self.backward, self.forward, self.path = ex, backward, forward, path

    def _guarded(self):
        user, path = self.backward, self.path

        def call(*args, **kwargs):
            try:
                return user(*copy.deepcopy(args), **kwargs)
            except NotImplementedError:
                raise LearnerError("your backward raises NotImplementedError: write it first") from None
            except LearnerError:
                raise
            except Exception as err:
                raise LearnerError(f"your backward raised {where(err, path)}") from None
        call.__name__ = getattr(user, "__name__", "backward")
        return call

    def run(self, inputs: dict, seed: int, entries: int | None = None) -> list[InputResult]:
        ex, op = self.ex, self.ex.op
        wrt = wrt_of(ex, inputs)
        rng = np.random.default_rng(seed)
        ref_rec = Recorder(ex.backward)
        with substituted([(ex.backward, ref_rec)], closures_of=(op.backward,)):
            y, cache = op.forward(**copy.deepcopy(inputs))
            dy = _cotangent(y, rng)
            ref = _named((ref_rec if op.backward is ex.backward else op.backward)(dy, cache), wrt)
        learner = Recorder(self._guarded())
        fwd = op.forward
        if self.forward is not None and op.forward is ex.forward:
            fwd = self.forward
        swaps = [(ex.backward, learner), (ex.forward, self.forward)]
        with substituted(swaps, closures_of=(op.backward, op.forward)):
            try:
                y2, cache2 = fwd(**copy.deepcopy(inputs))
                raw = (learner if op.backward is ex.backward else op.backward)(dy, cache2)
                failure = None
            except LearnerError:
                raise
            except Exception as err:  # the entry could not use what the learner returned
                failure = err
        if learner.count == 0 and failure is None:
            raise LearnerError(f"internal: the entry {ex.name!r} never called {ex.backward_name}")
        for (_, _, want), (_, _, got) in zip(ref_rec.calls, learner.calls):
            msg = structure_mismatch(got, want, "your backward's result")
            if msg:
                raise LearnerError(msg + self._named_slot(msg, want, wrt) + transposed_hint(got, want))
        if failure is not None:
            raise LearnerError(f"the entry could not use your backward's result: {type(failure).__name__}: {failure}")
        if self.forward is not None:
            err, _ = relative_error(np.concatenate([np.ravel(a) for a in _flat(y2)]),
                                    np.concatenate([np.ravel(a) for a in _flat(y)]))
            if not err <= op.tol:
                raise LearnerError(f"your forward's output differs from the library's (relative error {err:.2e})")
        got = _named(raw, wrt)
        results = []
        for name in wrt:
            if got.get(name) is None:
                raise LearnerError(f"no gradient for {name!r} in what your backward returned")
            g = np.asarray(got[name], dtype=np.float64)
            r = np.asarray(ref[name], dtype=np.float64)
            if g.shape != r.shape:
                results.append(InputResult(name, np.inf, np.inf, (), np.nan, np.nan, False, diagnose(g, r, op.tol)))
                continue
            err_lib, worst = relative_error(g, r)
            num, idx = self._numeric(fwd, inputs, name, dy, g, r, rng, entries, swaps)
            # floor 1e-8: a gradient that is 0 up to rounding is compared with central differences' noise
            err_num, at = relative_error(g.reshape(-1)[idx], num, floor=NUMERIC_FLOOR)
            if err_lib == 0.0 and at:   # identical to the library: show where central differences differ most
                worst = tuple(int(i) for i in np.unravel_index(idx[at[0]], g.shape))
            ok = err_num <= op.tol and err_lib <= op.tol
            why = "" if ok else (diagnose(g, r, op.tol) if err_lib > op.tol else
                                 "equals the library's gradient, but central differences disagree: a kink or "
                                 "rounding noise at these inputs (please report it)")
            results.append(InputResult(name, err_num, err_lib, worst, float(g[worst]) if g.size else 0.0,
                                       float(r[worst]) if r.size else 0.0, ok, why))
        return results

    def _named_slot(self, msg: str, want, wrt) -> str:
        """' (the gradient of 'w')' when the library's result is a tuple in the order of the entry's inputs."""
        if self.ex.op.backward is not self.ex.backward or not isinstance(want, (tuple, list)):
            return ""
        names = [n for n in wrt] + [None] * len(want)
        for i in range(len(want)):
            if msg.startswith(f"your backward's result[{i}]") and names[i] is not None:
                return f" (the gradient of {names[i]!r})"
        return ""

    def _numeric(self, fwd, inputs, name, dy, g, r, rng, entries, swaps):
        op = self.ex.op
        x = np.array(inputs[name], dtype=np.float64)
        n = entries or op.max_entries or 32
        idx = np.arange(x.size)
        if x.size > n:
            idx = np.union1d(rng.choice(x.size, size=n, replace=False), [int(np.argmax(np.abs(g - r)))])
        work = dict(inputs)
        work[name] = x
        flat = x.reshape(-1)
        num = np.empty(idx.size)
        with substituted(swaps[1:], closures_of=(op.forward,)):
            for j, i in enumerate(idx):
                old = flat[i]
                flat[i] = old + op.eps
                lp = _loss(fwd(**work)[0], dy)
                flat[i] = old - op.eps
                lm = _loss(fwd(**work)[0], dy)
                flat[i] = old
                num[j] = (lp - lm) / (2 * op.eps)
        return num, idx


def _flat(y):
    return [a for a in (y if isinstance(y, (tuple, list)) else (y,)) if a is not None and np.ndim(a) >= 0]


def transposed_hint(got, want) -> str:
    """' (it is the library's gradient transposed)' when a shape mismatch is a transpose."""
    from .diagnose import transposed

    pairs = [(got, want)]
    if isinstance(want, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(want):
        pairs = list(zip(got, want))
    for g, w in pairs:
        if isinstance(w, np.ndarray) and isinstance(g, np.ndarray) and g.shape != w.shape:
            msg = transposed(np.asarray(g, dtype=np.float64), w.astype(np.float64), 1e-8)
            if msg:
                return f" -- {msg}"
    return ""


def attempt_from_file(path, name: str | None = None, module=None) -> Attempt:
    """The Attempt a learner's file makes (``module``: the file, if already imported)."""
    module = load_module(path) if module is None else module
    name = name or getattr(module, "EXERCISE", None)
    if not isinstance(name, str):
        raise LearnerError(f"{path}: no EXERCISE = '<name>' line (the file `exercise start` writes has one)")
    ex = find(name)
    if ex is None:
        raise LearnerError(f"{path}: EXERCISE = {name!r} is not an exercise (`exercise list` shows them)")
    fn_name = ex.backward.__name__
    user = getattr(module, fn_name, None)
    if not callable(user):
        raise LearnerError(f"{path}: defines no function {fn_name}(...) (the backward to write)")
    want, have = inspect.signature(ex.backward), inspect.signature(user)
    required = [p for p in want.parameters.values() if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    try:
        have.bind(*[None] * len(required))
    except TypeError:
        raise LearnerError(f"{path}: wrong signature: the library's is {fn_name}{want}, yours is {fn_name}{have}") from None
    forward = None
    if ex.forward is not None:
        f = getattr(module, ex.forward.__name__, None)
        forward = f if callable(f) and f is not ex.forward else None
    return Attempt(ex, user, forward, Path(path))


def check(attempt: Attempt, *, hard: bool = True, entries: int | None = None, out=None) -> bool:
    """Run every input set, print the report, return True when every input gradient of every set passes."""
    hard = validate.flag(hard, "hard")
    out = out or sys.stdout
    ex = attempt.ex
    print(f"exercise {ex.name}: {ex.backward_name}  (float64, tol {ex.op.tol:g}; rel err = max|diff| / max|grad|)",
          file=out)
    cases = []
    for label, inputs, seed in input_sets(ex.op, hard=hard):
        case = CaseResult(label)
        try:
            case.inputs = attempt.run(inputs, seed, entries)
        except LearnerError as err:
            case.error = str(err)
        cases.append(case)
        print(f"\n[{'pass' if case.passed else 'FAIL'}] {label}", file=out)
        if case.error:
            print(f"  {case.error}", file=out)
            if "NotImplementedError" in case.error or "result" in case.error or "raised" in case.error:
                break
            continue
        print(f"  {'input':<24} {'vs central diff':>15} {'vs library':>11}  result  worst index (yours / library)", file=out)
        for r in case.inputs:
            print(f"  {r.name:<24} {r.err_numeric:15.2e} {r.err_library:11.2e}  {'ok  ' if r.passed else 'FAIL'}    "
                  f"{r.worst} ({r.yours:.6g} / {r.library:.6g})", file=out)
            if r.diagnosis:
                print(f"      diagnosis: {r.diagnosis}", file=out)
        good = [r.name for r in case.inputs if r.passed]
        bad = [r.name for r in case.inputs if not r.passed]
        if good and bad:
            print(f"  right on some inputs, wrong on others: wrong {', '.join(bad)}; right {', '.join(good)} "
                  "(look at the terms that reach only the wrong ones)", file=out)
    passed = bool(cases) and all(c.passed for c in cases)
    ok_labels = [c.label for c in cases if c.passed]
    bad_labels = [c.label for c in cases if not c.passed]
    if ok_labels and bad_labels:
        print(f"\nright on some inputs, wrong on others: passes {', '.join(ok_labels)}; fails "
              f"{', '.join(bad_labels)} (a term that only matters there: a mask, a boundary, a size of 1?)", file=out)
    print(f"\n{sum(c.passed for c in cases)} input sets passed, {len(bad_labels)} failed: "
          f"{'PASS' if passed else 'FAIL'}", file=out)
    return passed


def check_file(path, *, name: str | None = None, hard: bool = True, entries: int | None = None, out=None) -> int:
    """Exit status of ``exercise check``: 0 when every input passes, 1 otherwise (2 for an unusable file)."""
    hard = validate.flag(hard, "hard")
    out = out or sys.stdout
    from .kernels import KERNELS, check_kernel_file

    try:
        module = load_module(path)
        declared = name or getattr(module, "EXERCISE", None)
        if declared in KERNELS:
            return check_kernel_file(path, declared, hard=hard, out=out, module=module)
        attempt = attempt_from_file(path, name, module)
    except LearnerError as err:
        print(f"error: {err}", file=out)
        return 2
    return 0 if check(attempt, hard=hard, entries=entries, out=out) else 1
