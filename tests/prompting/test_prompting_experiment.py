"""The prompt-learning experiment end to end at a tiny size: it runs, caches its pretraining, is
reproducible by seed, and reports what it measured."""

import numpy as np
import pytest

from scratch_transformers.experiments import prompting

TINY = dict(d_model=16, n_layers=1, max_len=32, pretrain_n=200, pretrain_steps=8, pretrain_lr=3e-3, batch=8,
            train_sizes=(10, 30), seeds=2, n_unlabelled=20, n_test=15, ft_steps=3, min_epochs=1, ft_batch=4, distill_steps=3,
            ipet_sizes=(10,), zero_shot_ipet=False, n_prompt=2, prompt_inits=("labels", "normal"), sweep=False)


@pytest.mark.slow
def test_prompting_experiment_tiny(tmp_path):
    res = prompting.run("quick", np.random.default_rng(0), tmp_path, progress=False, cfg_override=TINY)
    for n in (10, 30):
        for m in prompting.METHODS:
            if m == "iPET" and n == 30:
                assert "iPET@30" not in res.metrics          # iPET runs only at the sizes asked for
            else:
                assert 0.0 <= res.metrics[f"{m}@{n}"] <= 1.0
    assert res.figures and res.figures[0].exists() and res.figures[0].stat().st_size > 10_000
    assert "| |T| | supervised | PET | iPET | prompt tuning |" in res.summary
    assert "prompt tuning (normal init)" in res.summary
    cached = list(tmp_path.glob("mlm_pretrained_*.npz"))
    assert len(cached) == 1
    again = prompting.run("quick", np.random.default_rng(0), tmp_path, progress=False, cfg_override=TINY)
    assert "loaded from cache" in again.summary
    for k, v in res.metrics.items():          # same seed, cached pretraining: the same numbers
        if k != "seconds":
            assert again.metrics[k] == v, k
