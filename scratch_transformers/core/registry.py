"""The registry of every forward/backward pair, with a maker of small float64 sample inputs.

The entries live outside the library, in the ``scratch_transformers.checks`` package: each of its
modules defines a module-level list ``GRADCHECKS`` of :class:`Op` entries. :func:`all_ops` imports
those modules (and only those) and collects them, so ``python -m scratch_transformers check`` and
``tests/test_registry.py`` iterate over the same list. :func:`public_backward_functions` lists every
public ``*_backward`` function the library defines, and the test fails if one is covered by no entry:
a new op cannot skip its gradient check.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .gradcheck import GradcheckResult, gradcheck

CHECKS_PACKAGE = "scratch_transformers.checks"
_SKIP_PREFIXES = ("scratch_transformers.__main__", "scratch_transformers.experiments", CHECKS_PACKAGE)


@dataclass(frozen=True)
class Op:
    """One gradient-checkable pair.

    name: short label shown by ``check``. forward(**inputs) -> (y, cache);
    backward(dy, cache) -> {name: grad} or a tuple in the order of ``wrt``.
    make_inputs(rng) -> dict of small inputs (float64 for the differentiated ones).
    covers: qualified names of the ``*_backward`` functions this entry exercises.
    hard_inputs: optional ((label, maker(rng) -> inputs), ...) with the keys of make_inputs and other sizes or
    masks (odd sizes, length 1, masked rows), run by ``exercise check`` after the sample inputs.
    """

    name: str
    forward: Callable
    backward: Callable
    make_inputs: Callable[[np.random.Generator], dict]
    covers: tuple[str, ...]
    wrt: tuple[str, ...] | None = None
    tol: float = 1e-6
    eps: float = 1e-6
    max_entries: int | None = None
    note: str = field(default="", compare=False)
    # optional extra input sets for `exercise check` (odd sizes, length 1, masked rows): ((label, maker(rng)), ...)
    hard_inputs: tuple = field(default=(), compare=False)

    def run(self, rng: np.random.Generator) -> GradcheckResult:
        return gradcheck(self.forward, self.backward, self.make_inputs(rng), wrt=self.wrt,
                         eps=self.eps, tol=self.tol, rng=rng, max_entries=self.max_entries)


def package_modules() -> list[str]:
    """Names of every library module: the package without the CLI, the experiments and the checks."""
    import scratch_transformers as pkg

    names = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix="scratch_transformers."):
        if not info.name.startswith(_SKIP_PREFIXES):
            names.append(info.name)
    return sorted(names)


def check_modules() -> list[str]:
    """Names of the modules of ``scratch_transformers.checks`` (where the registry entries live)."""
    import scratch_transformers.checks as checks

    return sorted(info.name for info in pkgutil.iter_modules(checks.__path__, prefix=CHECKS_PACKAGE + "."))


def all_ops() -> list[Op]:
    """Every registered Op: the ``GRADCHECKS`` of every checks module, in module order."""
    ops: list[Op] = []
    for name in check_modules():
        ops.extend(getattr(importlib.import_module(name), "GRADCHECKS", []))
    return ops


def public_backward_functions(modules=None) -> list[str]:
    """Qualified names of every public function named ``*_backward`` defined in ``modules`` (names of
    modules; default every library module, :func:`package_modules`)."""
    found = []
    for name in package_modules() if modules is None else modules:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (attr.endswith("_backward") and not attr.startswith("_") and inspect.isfunction(obj)
                    and obj.__module__ == module.__name__):
                found.append(f"{module.__name__}.{attr}")
    return sorted(found)
