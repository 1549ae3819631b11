"""The Reformer experiment runs end to end at a tiny size and reports every number it promises."""

import numpy as np
import pytest

from scratch_transformers.core.data import IGNORE
from scratch_transformers.experiments import reformer as exp


def test_duplication_task_layout(rng):
    x, y = exp.duplication_task(rng, 5, half=6, vocab=9)
    assert x.shape == y.shape == (5, 11)
    seq = np.concatenate([x, y[:, -1:]], axis=1)
    assert np.all(seq[:, 0] == 0) and np.all(seq[:, 6] == 0) and np.array_equal(seq[:, 1:6], seq[:, 7:])
    assert np.all(y[:, :6] == IGNORE) and np.array_equal(y[:, 6:], seq[:, 7:])
    assert seq[:, 1:6].min() >= 1 and seq.max() < 9


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(exp.SIZES, "quick", dict(half=8, vocab=6, d_model=16, n_heads=2, d_ff=16, bucket_size=4,
                                                 steps=6, batch=4, lr=1e-2, n_eval=8, seeds=(0,), mem_layers=(1, 2),
                                                 mem_len=64, err_draws=1, causal_seqs=3))
    res = exp.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == exp.NAME and len(res.figures) == 2 and all(p.is_file() for p in res.figures)
    for tr in exp.TRAIN_ROUNDS:
        for ev in exp.EVAL_ROUNDS:
            assert 0.0 <= res.metrics[f"acc_{tr}_eval_{ev}"] <= 1.0
    for k in (1, 2, 4, 8):
        assert 0.0 < res.metrics[f"err_gauss_{k}"] < 2.0 and np.isfinite(res.metrics[f"err_model_{k}"])
    assert res.metrics["err_gauss_8"] < res.metrics["err_gauss_1"]         # more rounds, closer to full attention
    assert res.metrics["mem_std_2"] > res.metrics["mem_rev_2"]
    assert 0.0 <= res.metrics["causal_leak_positions"] <= res.metrics["causal_leak_sequences"] <= 1.0
    assert res.metrics["causal_leak_full_control"] == 0.0                  # full causal attention never leaks
    assert res.metrics["recon_err_float64"] < 1e-12 < res.metrics["recon_err_float32"] < 1e-4
    assert "| trained \\ evaluated |" in res.summary
