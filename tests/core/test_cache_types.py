"""A core backward refuses a cache that is not its own forward's (issue 17: a cache of another op's
type gave garbage: softmax_backward unpacks a LogSoftmaxCache's (p, axis) just as well)."""

import numpy as np
import pytest

from scratch_transformers.core.registry import all_ops

CORE = [op for op in all_ops() if op.name.startswith("core.")]


RUNS = {op.name: op.forward(**op.make_inputs(np.random.default_rng(0))) for op in CORE}   # (y, cache)


def _run(op):
    return RUNS[op.name]


PAIRS = []
for _a in CORE:
    _seen = {type(_run(_a)[1])}
    for _b in CORE:                                       # one foreign cache of each other type
        if type(_run(_b)[1]) not in _seen:
            _seen.add(type(_run(_b)[1]))
            PAIRS.append(pytest.param(_a, _b, id=f"{_a.name}<-{_b.name}"))


@pytest.mark.parametrize("op,other", PAIRS)
def test_backward_refuses_another_ops_cache(op, other):
    y, _ = _run(op)
    _, foreign = _run(other)
    dy = np.ones(np.shape(y)) if np.ndim(y) else 1.0
    with pytest.raises(ValueError, match="cache"):
        op.backward(dy, foreign)


@pytest.mark.parametrize("op", CORE, ids=[op.name for op in CORE])
def test_backward_still_takes_its_own_cache(op):
    y, cache = _run(op)
    op.backward(np.ones(np.shape(y)) if np.ndim(y) else 1.0, cache)
