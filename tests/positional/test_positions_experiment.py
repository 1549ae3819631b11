"""The positions experiment runs end to end at a tiny size and reports every curve; its per-length
scaling rules build the configs the papers prescribe."""

import numpy as np
import pytest

from scratch_transformers.experiments import positions as exp
from scratch_transformers.positional import scaling


def test_curve_configs_follow_the_papers():
    cfg = dict(exp.SIZES["quick"])
    base = {m: exp._config(cfg, m, 8 * cfg["L"]) for m in exp.TRAINED}
    L, hd = cfg["L"], cfg["d_model"] // cfg["n_heads"]
    assert exp.curve_config("rope+PI (no FT)", base, cfg, 4 * L).rope_scale == 4.0
    assert exp.curve_config("rope+PI (no FT)", base, cfg, L).rope_scale == 1.0
    assert exp.curve_config("rope+PI (FT)", base, cfg, L).rope_scale == cfg["ft_scale"]
    assert exp.curve_config("rope+NTK (no FT)", base, cfg, 2 * L).rope_base == scaling.ntk_aware_base(1e4, 2.0, hd)
    assert exp.curve_config("rope+NTK (no FT)", base, cfg, L).rope_base == 1e4
    assert exp.curve_config("alibi+PI slopes (no FT)", base, cfg, 8 * L).alibi_scale == 1 / 8
    assert exp.curve_config("alibi+PI slopes (no FT)", base, cfg, L).alibi_scale == 1.0
    with pytest.raises(ValueError, match="method"):
        exp.curve_config("xpos", base, cfg, L)


def test_rope_decay_bound_starts_at_mean_index_and_decays():
    b = exp.rope_decay_bound(np.array([0.0, 20.0, 250.0]), 128)
    assert b[0] == pytest.approx(32.5)                                    # |S_j| = j at distance 0
    assert b[0] > b[1] > b[2]


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(exp.SIZES, "quick", dict(L=8, d_model=16, n_layers=1, n_heads=2, steps=4, batch=2, lr=3e-3,
                                                 ft_scale=2, ft_steps=2, mults=(1, 2), eval_tokens=32))
    res = exp.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == exp.NAME and len(res.figures) == 2 and all(p.is_file() for p in res.figures)
    # base 500 and 1e4 have the bound T_tune = L: said as such, with the rise past L
    assert res.summary.count("The bound is the training length itself") == 2
    for method in exp.CURVES:
        assert np.isfinite(res.metrics[f"loss_{method}_1x"])
        assert method == "learned" or np.isfinite(res.metrics[f"loss_{method}_2x"])
    assert "| method |" in res.summary
