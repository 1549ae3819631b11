"""The non-finite input policy (README, "Non-finite input"), driven by the registry of ops.

For every registered forward and every float input, a NaN is put where the output depends on it (the
entry with the largest gradient under a random cotangent; inputs with no gradient are filled with
NaN entirely). Every output entry that depends on what was replaced (it changes when that is
perturbed instead) must then be NaN, or the forward must raise a ValueError naming the argument:
never a finite-looking answer, such as zeros, a masked row or an unnormalised softmax row. (An
input no output depends on, such as a parameter another op of the model uses, has nothing to check;
an input no perturbation keeps valid, such as a probability row, must give some NaN or raise.)
"""

import numpy as np
import pytest

from scratch_transformers.core.registry import all_ops

OPS = all_ops()


def _arrays(y):
    ys = y if isinstance(y, (tuple, list)) else (y,)
    return [np.asarray(a) for a in ys if a is not None]


def _gradients(op, inputs, rng):
    """{name: gradient} of the op at ``inputs`` under a random cotangent (as gradcheck computes it)."""
    y, cache = op.forward(**inputs)
    cot = tuple(None if a is None else rng.standard_normal(np.shape(a)) for a in
                (y if isinstance(y, (tuple, list)) else (y,)))
    grads = op.backward(cot if isinstance(y, (tuple, list)) else cot[0], cache)
    if isinstance(grads, dict):
        return grads
    wrt = op.wrt or [k for k, v in inputs.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    grads = grads if isinstance(grads, (tuple, list)) else (grads,)
    return dict(zip(wrt, grads))


CASES = []
for _op in OPS:
    for _name, _value in _op.make_inputs(np.random.default_rng(0)).items():
        if isinstance(_value, np.ndarray) and _value.dtype.kind == "f":
            CASES.append(pytest.param(_op, _name, id=f"{_op.name}:{_name}"))


@pytest.mark.parametrize("op,name", CASES)
def test_nan_input_gives_nan_output_or_value_error(op, name):
    rng = np.random.default_rng(0)
    inputs = op.make_inputs(rng)
    grad = _gradients(op, inputs, rng).get(name)
    where = (np.unravel_index(np.argmax(np.abs(np.asarray(grad))), inputs[name].shape)
             if grad is not None and np.any(np.asarray(grad) != 0) else ...)   # an entry the output depends on
    y0 = _arrays(op.forward(**inputs)[0])
    depends = [np.zeros(a.shape, bool) for a in y0]
    probed = False
    for delta in (0.37, -1.3, 1e-3, -1e-3):                            # outputs that move with the entry
        moved = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
        moved[name][where] += delta
        try:
            y1 = _arrays(op.forward(**moved)[0])
        except ValueError:                                             # e.g. probabilities no longer sum to 1
            continue
        probed = True
        for dep, a, b in zip(depends, y0, y1):
            dep |= a != b
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    bad[name][where] = np.nan
    try:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            y, _ = op.forward(**bad)
    except ValueError as err:
        msg = str(err)
        assert name.split(".")[-1] in msg or "nan" in msg.lower() or "finite" in msg, msg
        return
    outputs = _arrays(y)
    if not probed:   # no valid perturbation exists (a constrained input): at least some output must be NaN
        assert grad is None or any(np.isnan(a).any() for a in outputs), f"{op.name}: NaN in {name!r} vanished"
        return
    for k, (a, dep) in enumerate(zip(outputs, depends)):
        finite = dep & ~np.isnan(a)
        assert not finite.any(), (
            f"{op.name}: NaN in {name!r} gave finite values in output {k} where it depends on it, "
            f"e.g. at {tuple(int(i) for i in np.argwhere(finite)[0])}: {a[finite][0]!r}")
