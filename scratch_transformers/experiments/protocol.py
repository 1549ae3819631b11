"""The tuning procedure every compared model gets, so that a comparison is not decided by who was tuned better.

For each model, the same three steps with the same grids and rules:

1. learning-rate sweep: train once (seed 0) at every rate of ``lr_grid`` for ``steps`` steps, keep the rate with
   the best score (the held-out metric at the training length; ties within ``tie`` broken by the lower final
   training loss);
2. budget check ("train until it stops improving"): at that rate, train (seed 0) for twice the steps; if the score
   improves by more than ``improve``, take the doubled budget and check again, at most ``max_doublings`` times
   (``Tuned.still_improving`` says when the cap, not the plateau, ended it);
3. seeds: train the chosen (rate, steps) with the other seeds; report mean and spread over all seeds.

``fixed`` skips steps 1-2 with a recorded choice (what the quick tour does with the choices the same procedure made
at that size, see experiments/mamba.py). ``train_one(lr, steps, seed) -> Trial`` is the experiment's own training
run; every run gets its data and initialisation from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import validate


@dataclass
class Trial:
    """One training run: its settings, its score (higher is better), final training loss and what the
    experiment wants to keep from it (payload: e.g. accuracies at every test length, the eval curve)."""

    lr: float
    steps: int
    seed: int
    score: float
    final_loss: float
    payload: dict = field(default_factory=dict)


@dataclass
class Tuned:
    """What the procedure chose and every run it made; ``runs`` are the seeds at the chosen settings."""

    lr: float
    steps: int
    runs: list
    sweep: list = field(default_factory=list)
    budget: list = field(default_factory=list)
    still_improving: bool = False
    recorded: bool = False            # True: lr and steps come from a recorded earlier sweep (``fixed``)

    def scores(self) -> np.ndarray:
        return np.array([t.score for t in self.runs])


def _better(a: Trial, b: Trial, tie: float) -> bool:
    if abs(a.score - b.score) > tie:
        return a.score > b.score
    return a.final_loss < b.final_loss


def tune(train_one, *, lr_grid, steps: int, seeds=(0, 1, 2), max_doublings: int = 1, improve: float = 0.02,
         tie: float = 0.005) -> Tuned:
    """Steps 1-3 above. seeds[0] is the seed of the sweep and of the budget check."""
    lr_grid = tuple(validate.positive(lr, "lr_grid") for lr in lr_grid)
    if not lr_grid:
        validate.fail("lr_grid", "at least one learning rate", lr_grid)
    steps = validate.positive_int(steps, "steps")
    seeds = tuple(validate.integer(s, "seeds", low=0) for s in seeds)
    if not seeds:
        validate.fail("seeds", "at least one seed", seeds)
    max_doublings = validate.integer(max_doublings, "max_doublings", low=0)
    sweep = [train_one(lr, steps, seeds[0]) for lr in lr_grid]
    best = sweep[0]
    for t in sweep[1:]:
        if _better(t, best, tie):
            best = t
    budget, still = [], False
    for i in range(max_doublings):
        longer = train_one(best.lr, 2 * best.steps, seeds[0])
        budget.append(longer)
        if longer.score > best.score + improve:
            best = longer
            still = i == max_doublings - 1
        else:
            break
    runs = [best] + [train_one(best.lr, best.steps, s) for s in seeds[1:]]
    return Tuned(best.lr, best.steps, runs, sweep, budget, still)


def fixed(train_one, *, lr: float, steps: int, seeds=(0, 1, 2)) -> Tuned:
    """Step 3 alone, at a recorded (lr, steps)."""
    lr = validate.positive(lr, "lr")
    steps = validate.positive_int(steps, "steps")
    return Tuned(lr, steps, [train_one(lr, steps, int(s)) for s in seeds], recorded=True)


def spread(values) -> dict:
    """mean, sample standard deviation (0 for one value), min and max of a list of numbers."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        validate.fail("values", "a non-empty 1-D sequence of numbers", np.shape(values))
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def fmt_spread(values, scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± std (min-max)' of values * scale, for tables."""
    s = spread(np.asarray(values, dtype=np.float64) * scale)
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"
