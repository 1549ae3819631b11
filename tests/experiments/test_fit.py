"""experiments.common.fit: the one training recipe (AdamW + warm-up cosine + clipping + loop + eval)."""

import numpy as np
import pytest

from scratch_transformers.core import optim, train
from scratch_transformers.experiments.common import fit


def _problem(seed=0):
    """Least squares y = X w on fresh random batches: loss_and_grads, params, next_batch."""
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal((4, 2))

    def next_batch(r, step):
        x = r.standard_normal((8, 4))
        return x, x @ w_true + 0.1 * r.standard_normal((8, 2))

    def loss_and_grads(p, batch, r):
        x, y = batch
        err = x @ p["w"] + p["b"] - y                      # (8, 2)
        return float(np.mean(err ** 2)), {"w": 2 * x.T @ err / err.size, "b": 2 * err.sum(0) / err.size}

    return loss_and_grads, {"w": np.zeros((4, 2)), "b": np.zeros(2)}, next_batch


def test_fit_is_the_hand_assembled_recipe_bit_for_bit():
    lg, p1, nb = _problem()
    _, p2, _ = _problem()
    evals = lambda p: {"w_norm": float(np.linalg.norm(p["w"]))}
    h1 = fit(lg, p1, nb, steps=30, lr=0.05, rng=np.random.default_rng(3), weight_decay=0.01, warmup_steps=5,
             clip_norm=0.5, eval_fn=evals, eval_every=10, progress=False)
    opt = optim.AdamW(lr=0.05, weight_decay=0.01)
    h2 = train.train(lg, p2, opt, nb, steps=30, rng=np.random.default_rng(3),
                     lr_schedule=lambda s: optim.warmup_cosine(s, base_lr=0.05, warmup_steps=5, total_steps=30),
                     clip_norm=0.5, eval_fn=evals, eval_every=10, progress=False)
    assert h1.losses == h2.losses and h1.lrs == h2.lrs and h1.grad_norms == h2.grad_norms
    assert h1.evals == h2.evals and [s for s, _ in h1.evals] == [10, 20, 30]
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
    assert h1.wall_time > 0 and h1.losses[-1] < h1.losses[0]


def test_defaults_warmup_no_eval_and_no_clipping():
    lg, p, nb = _problem()
    h = fit(lg, p, nb, steps=40, lr=0.01, rng=np.random.default_rng(0), clip_norm=None, progress=False)
    assert h.lrs[:4] == [0.01 * (s + 1) / 4 for s in range(4)]       # warm-up min(50, 40 // 10) = 4 steps
    assert h.lrs[4] == 0.01 and h.lrs[-1] < 1e-4                     # then cosine towards 0
    assert h.evals == [] and all(np.isnan(h.grad_norms))


@pytest.mark.parametrize("kw, arg", [
    (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(warmup_steps=11), "warmup_steps"), (dict(eval_every=0), "eval_every"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(clip_norm=0.0), "clip_norm"), (dict(rng=0), "rng"),
])
def test_bad_arguments_raise_before_training(kw, arg):
    lg, p, nb = _problem()
    before = {k: v.copy() for k, v in p.items()}
    args = dict(steps=10, lr=0.01, rng=np.random.default_rng(0), progress=False)
    args.update(kw)
    with pytest.raises(ValueError, match=f"^{arg}: expected"):
        fit(lg, p, nb, **args)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
