"""Every registered forward/backward pair passes its float64 gradient check, and every public
``*_backward`` in the package is covered by a registry entry."""

import numpy as np
import pytest

from scratch_transformers.core.registry import all_ops, public_backward_functions

OPS = all_ops()


def test_registry_is_not_empty():
    assert len(OPS) > 0


def test_names_are_unique():
    names = [op.name for op in OPS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_backward_is_covered():
    covered = {c for op in OPS for c in op.covers}
    missing = [f for f in public_backward_functions() if f not in covered]
    assert not missing, f"backward functions with no registry entry: {missing}"


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_gradcheck(op):
    result = op.run(np.random.default_rng(0))
    assert result.tol <= 1e-6 or op.note, f"{op.name}: a tolerance looser than 1e-6 needs a stated reason (note)"
    assert result.passed, str(result)
