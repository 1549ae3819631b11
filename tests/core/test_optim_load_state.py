"""Optimizer state loads all or nothing (issue 17: a missing entry raised KeyError after part of the
state had been replaced, so a failed resume left a half-loaded optimizer)."""

import numpy as np
import pytest

from scratch_transformers.core.optim import SGD, AdamW


def _params():
    return {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3)}


@pytest.mark.parametrize("make,drop", [(lambda: AdamW(lr=0.1), "exp_avg_sq/w"), (lambda: AdamW(lr=0.1), "step/w"),
                                       (lambda: AdamW(lr=0.1), "betas"), (lambda: SGD(lr=0.1, momentum=0.9), "lr")])
def test_load_state_dict_with_a_missing_entry_raises_and_changes_nothing(make, drop):
    opt = make()
    params = _params()
    opt.step(params, {"w": np.ones((2, 3)), "b": np.ones(3)})
    state = opt.state_dict()
    other = make()
    other.step(_params(), {"w": 2 * np.ones((2, 3)), "b": np.ones(3)})
    before = other.state_dict()
    del state[drop]
    with pytest.raises(ValueError, match=drop):
        other.load_state_dict(state)
    after = other.state_dict()
    assert sorted(after) == sorted(before)
    for k in after:
        np.testing.assert_array_equal(after[k], before[k])
