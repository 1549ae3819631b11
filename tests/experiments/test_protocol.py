"""The tuning procedure (experiments.protocol): every model gets the same sweep, budget check and seeds."""

import numpy as np
import pytest

from scratch_transformers.experiments.protocol import Trial, fixed, fmt_spread, spread, tune


def fake(best_lr, plateau_steps, calls):
    """A score that peaks at best_lr and grows with steps until plateau_steps; seeds add a small offset."""
    def train_one(lr, steps, seed):
        calls.append((lr, steps, seed))
        score = 1.0 - abs(np.log10(lr / best_lr)) * 0.3 - 0.4 * max(0.0, 1 - steps / plateau_steps) + 0.001 * seed
        return Trial(lr, steps, seed, score, final_loss=1.0 - score)
    return train_one


def test_sweep_picks_the_best_rate_then_doubles_while_it_improves():
    calls = []
    t = tune(fake(3e-3, 400, calls), lr_grid=(1e-3, 3e-3, 1e-2), steps=100, seeds=(0, 1, 2), max_doublings=3)
    assert t.lr == 3e-3 and t.steps == 400 and not t.still_improving      # 100 -> 200 -> 400, 800 no better
    assert [c[1] for c in calls[3:6]] == [200, 400, 800]
    assert [(r.seed, r.steps, r.lr) for r in t.runs] == [(0, 400, 3e-3), (1, 400, 3e-3), (2, 400, 3e-3)]
    assert len(calls) == 3 + 3 + 2


def test_cap_reached_while_improving_is_reported():
    calls = []
    t = tune(fake(1e-2, 1000, calls), lr_grid=(1e-3, 1e-2), steps=100, seeds=(0,), max_doublings=1)
    assert t.lr == 1e-2 and t.steps == 200 and t.still_improving and len(t.runs) == 1


def test_ties_go_to_the_lower_loss():
    def train_one(lr, steps, seed):
        return Trial(lr, steps, seed, score=1.0, final_loss={1e-3: 0.5, 1e-2: 0.2}[lr])
    assert tune(train_one, lr_grid=(1e-3, 1e-2), steps=10, seeds=(0,), max_doublings=0).lr == 1e-2


def test_fixed_runs_every_seed_at_the_recorded_choice():
    calls = []
    t = fixed(fake(1e-3, 10, calls), lr=1e-3, steps=50, seeds=(0, 1, 2))
    assert t.recorded and calls == [(1e-3, 50, 0), (1e-3, 50, 1), (1e-3, 50, 2)] and t.scores().shape == (3,)


def test_spread_and_format():
    s = spread([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([5.0])["std"] == 0.0
    assert fmt_spread([0.5, 1.0], scale=100, digits=0) == "75 ± 35 (50–100)"
    with pytest.raises(ValueError, match="values"):
        spread([])
    with pytest.raises(ValueError, match="lr_grid"):
        tune(lambda *a: None, lr_grid=(), steps=1)
