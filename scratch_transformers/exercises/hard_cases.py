"""The input sets ``exercise check`` runs: the registry's sample inputs, then the hard cases.

Hard cases come from three places, so that a new registry entry gets some without doing anything:
1. its own ``make_inputs`` with other seeds (other values: a term that cancels on one draw shows on another);
2. variants of its boolean inputs (masks): one row fully masked, and the mask flipped at random places
   (kept only when the forward accepts them and gives finite outputs);
3. the entry's ``Op.hard_inputs`` and ``checks.hard_cases.HARD_INPUTS[name]``: odd sizes, length 1, masked
   rows, written by the entry's author.
"""

from __future__ import annotations

import copy

import numpy as np

from ..core import validate
from ..checks.hard_cases import HARD_INPUTS
from ..core.registry import Op

SAMPLE_SEED = 0
OTHER_SEEDS = (1, 2)


def _finite(y) -> bool:
    items = y if isinstance(y, (tuple, list)) else (y,)
    return all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in items if a is not None)


def _usable(op: Op, inputs: dict) -> bool:
    try:
        y, _ = op.forward(**copy.deepcopy(inputs))
    except Exception:  # an invalid variant (e.g. every key masked where that is refused): not a case
        return False
    return _finite(y)


def mask_variants(op: Op, inputs: dict, rng: np.random.Generator):
    """(label, inputs) variants of the boolean arrays of ``inputs``."""
    for key, value in inputs.items():
        if not (isinstance(value, np.ndarray) and value.dtype == bool and value.ndim >= 1 and value.size > 1):
            continue
        row = value.copy()
        row.reshape(-1, value.shape[-1])[0, :] = True      # the first row along the last axis, all True
        flipped = value ^ (rng.random(value.shape) < 0.3)
        for label, mask in ((f"{key}: a row fully masked", row), (f"{key}: other mask", flipped)):
            if not np.array_equal(mask, value):
                variant = dict(inputs)
                variant[key] = mask
                if _usable(op, variant):
                    yield label, variant


def input_sets(op: Op, *, hard: bool = True):
    """(label, inputs, seed) for every set to check; the first is the registry's sample inputs."""
    hard = validate.flag(hard, "hard")
    yield "sample inputs", op.make_inputs(np.random.default_rng(SAMPLE_SEED)), SAMPLE_SEED
    if not hard:
        return
    for seed in OTHER_SEEDS:
        yield f"other values (seed {seed})", op.make_inputs(np.random.default_rng(seed)), seed
    base = op.make_inputs(np.random.default_rng(SAMPLE_SEED))
    for label, variant in mask_variants(op, base, np.random.default_rng(7)):
        yield label, variant, 7
    for i, (label, maker) in enumerate(tuple(op.hard_inputs) + tuple(HARD_INPUTS.get(op.name, ()))):
        yield label, maker(np.random.default_rng(10 + i)), 10 + i
