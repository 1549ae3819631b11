"""The MatMul-free experiment runs end to end at a tiny size; its models have matched parameter counts."""

import numpy as np
import pytest

from scratch_transformers.experiments import matmulfree as exp


def test_parameter_counts_match_at_the_quick_size():
    counts = {}
    for name in exp.MODELS:
        _, params, _, _ = exp.make_model(name, exp.SIZES["quick"], np.random.default_rng(0))
        counts[name] = sum(v.size for v in params.values())
    assert counts["mmf"] == counts["mmf-float"]
    assert abs(counts["mmf"] / counts["transformer"] - 1) < 0.05, counts


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(exp.SIZES, "quick", dict(d=8, layers=1, ctx=8, batch=2, steps=3, sweep=None, seeds=1,
                                                 eval_windows=4, lrs={m: 1e-2 for m in exp.MODELS}, gen_tokens=2,
                                                 wide_d=16))
    res = exp.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == exp.NAME and len(res.figures) == 1 and res.figures[0].is_file()
    for name in exp.MODELS:
        assert 0 < res.metrics[f"val_loss_{name}"] < 2 * np.log(256)
    for key in ("mmf", "wide"):
        for fmt in ("2bit", "base3"):
            assert res.metrics[f"bytes_{key}_{fmt}"] < res.metrics[f"bytes_{key}_dense"]
            assert res.metrics[f"tok_s_{key}_{fmt}"] > 0
    assert "packed base3" in res.summary
