"""Putting the learner's function where the library's is, for the length of one check.

A registry entry's backward is often a wrapper (a lambda that picks named gradients out of a tuple, a model
backward that calls the layer backward per block). Rather than asking each entry how it calls its backward,
:func:`substituted` rebinds every module-level name in the package that refers to the library function to the
learner's for the duration of a ``with`` block, then puts everything back. :func:`recording` does the same with
a spy that records the arguments and the result of each call of the library function (the cache the learner's
backward will receive, and what it must return).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np


@contextmanager
def substituted(pairs, closures_of=()):
    """Within the block, every package-level reference to ``original`` is ``replacement`` (pairs of the two),
    and so is every closure cell of the functions ``closures_of`` that holds ``original``."""
    pairs = [(o, r) for o, r in pairs if o is not None and r is not None and o is not r]
    saved, cells = [], []
    try:
        for fn in closures_of:
            for cell in getattr(fn, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                for original, replacement in pairs:
                    if value is original:
                        cells.append((cell, value))
                        cell.cell_contents = replacement
        for modname, module in list(sys.modules.items()):
            if module is None or not modname.startswith("scratch_transformers"):
                continue
            space = vars(module)
            for key, value in list(space.items()):
                for original, replacement in pairs:
                    if value is original:
                        saved.append((space, key, value))
                        space[key] = replacement
        yield
    finally:
        for space, key, value in reversed(saved):
            space[key] = value
        for cell, value in reversed(cells):
            cell.cell_contents = value


class Recorder:
    """Wraps a function; remembers (args, kwargs, result) of its first ``keep`` calls and counts all calls."""

    def __init__(self, fn, keep: int = 2):
        self.fn, self.keep, self.calls, self.count = fn, keep, [], 0
        self.__name__ = getattr(fn, "__name__", "fn")

    def __call__(self, *args, **kwargs):
        self.count += 1
        result = self.fn(*args, **kwargs)
        if len(self.calls) < self.keep:
            self.calls.append((args, kwargs, result))
        return result


def describe(value, depth: int = 0) -> str:
    """A short description of a value's structure: 'ndarray (2, 3) float64', 'tuple of 3: (...)', 'None'."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"ndarray {tuple(value.shape)} {value.dtype}"
    if isinstance(value, (float, int, np.floating, np.integer, bool)):
        return f"{type(value).__name__} {value!r}" if depth else type(value).__name__
    if isinstance(value, dict):
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(value.items())[:12])
        more = ", ..." if len(value) > 12 else ""
        return f"dict of {len(value)}: {{{inner}{more}}}"
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        inner = ", ".join(describe(v, depth + 1) for v in value[:12])
        return f"{type(value).__name__} of {len(value)}: ({inner}{', ...' if len(value) > 12 else ''})"
    return type(value).__name__


def structure_mismatch(got, want, where: str = "the result") -> str | None:
    """None when ``got`` has the structure and shapes of ``want``; else a sentence saying the first difference."""
    if want is None:
        return None if got is None else f"{where}: expected None (the library returns None here), got {describe(got)}"
    if isinstance(want, np.ndarray):
        if got is None:
            return f"{where}: expected {describe(want)}, got None"
        arr = np.asarray(got) if not isinstance(got, (dict, tuple, list)) else None
        if arr is None:
            return f"{where}: expected {describe(want)}, got {describe(got)}"
        if arr.shape != want.shape:
            return f"{where}: expected shape {tuple(want.shape)}, got shape {tuple(arr.shape)}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{where}: expected a dict with keys {sorted(want)}, got {describe(got)}"
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            return f"{where}: dict keys differ from the library's: missing {missing}, unexpected {extra}"
        for k in want:
            msg = structure_mismatch(got[k], want[k], f"{where}[{k!r}]")
            if msg:
                return msg
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{where}: expected a {type(want).__name__} of {len(want)} values, got {describe(got)}"
        if len(got) != len(want):
            return (f"{where}: expected {len(want)} values ({describe(want)}), got {len(got)} "
                    f"({describe(got)})")
        for i, (g, w) in enumerate(zip(got, want)):
            msg = structure_mismatch(g, w, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(want, (float, int, np.floating, np.integer)):
        return None if np.ndim(got) == 0 and got is not None else f"{where}: expected a number, got {describe(got)}"
    return None
