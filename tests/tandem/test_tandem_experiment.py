"""The Tandem experiment runs end to end at a tiny size; every decoding run reproduces M_L's greedy output."""

import numpy as np
import pytest

from scratch_transformers.experiments import tandem as exp


def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(exp.SIZES, "quick", dict(
        ctx=12, batch=2, d_large=16, layers_large=2, d_small=8, layers_small=2, steps_large=3, steps_small=3,
        steps_tandem=2, steps_distil=2, gamma_train=2, gammas=(1, 3), n_prompts=2, prompt_len=5, n_new=6, lr=3e-3))
    res = exp.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == exp.NAME and len(res.figures) == 1 and res.figures[0].is_file()
    for name in ("M_L", "M_S alone", "Tandem-CE M_S", "Tandem-Distil M_S"):
        assert np.isfinite(res.metrics[f"loss_{name}"])
    assert res.metrics["agree_M_L"] == 1.0
    for g in (1, 3):
        for tag in ("spec", "speed"):
            assert res.metrics[f"{tag}_g{g}_identical"] == 1.0
            assert 0.0 <= res.metrics[f"{tag}_g{g}_acceptance"] <= 1.0
            assert res.metrics[f"{tag}_g{g}_speedup"] > 0
    assert res.metrics["adaptive_identical"] == 1.0 and 0 < res.metrics["adaptive_drafts_per_call"] <= 8
    assert res.metrics["cost_ratio"] > 0
    with pytest.raises(ValueError):
        exp.run("medium", np.random.default_rng(0), tmp_path, progress=False)
