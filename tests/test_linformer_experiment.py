"""The Linformer experiment runs end to end at a tiny size and reports every number it promises."""

import numpy as np
import pytest

from scratch_transformers.experiments import linformer as exp
from scratch_transformers.linformer import cumulative_singular_values


def test_cumulative_singular_values_of_known_matrices(rng):
    u = np.full((6, 6), 1 / 6)                                     # uniform attention: rank 1
    np.testing.assert_allclose(cumulative_singular_values(u), np.ones(6), atol=1e-12)
    np.testing.assert_allclose(cumulative_singular_values(np.eye(4)), [0.25, 0.5, 0.75, 1.0], atol=1e-12)
    c = cumulative_singular_values(rng.random((3, 2, 5, 5)))
    assert c.shape == (3, 2, 5) and np.all(np.diff(c, axis=-1) >= -1e-15)
    with pytest.raises(ValueError, match="p"):
        cumulative_singular_values(np.array([[np.nan, 1.0], [0.0, 1.0]]))   # an SVD analysis rejects NaN
    with pytest.raises(ValueError, match="square"):
        cumulative_singular_values(np.ones((2, 3)))


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(exp.SIZES, "quick", dict(n=16, d_model=8, n_layers=2, n_heads=2, batch=2, steps=4, lr=3e-3,
                                                 ks=(4, 8), seeds=2, eval_every=2, val_rows=4, spectrum_rows=2,
                                                 top=(2, 8, 32)))
    res = exp.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == exp.NAME and len(res.figures) == 2 and all(p.is_file() for p in res.figures)
    for layer in (1, 2):
        c2, c8 = res.metrics[f"spectrum_top2_layer{layer}"], res.metrics[f"spectrum_top8_layer{layer}"]
        assert 0 < c2 <= c8 <= 1 + 1e-12
        assert f"spectrum_top32_layer{layer}" not in res.metrics            # t > n is not reported
    for name in ("full attention", "Linformer k=4", "Linformer k=8"):
        assert np.isfinite(res.metrics[f"val_loss_{name}"]) and res.metrics[f"ms_per_step_{name}"] > 0
    assert "± " in res.summary                                               # two seeds: spread reported
    for k in (8, 16):
        assert 0 <= res.metrics[f"svd_error_k{k}"] <= res.metrics[f"jl_error_k{k}"] + 1e-12   # SVD is the best rank k
    assert res.metrics["svd_error_k16"] < 1e-10                              # rank n: exact


def test_jl_error_shrinks_with_k_and_svd_is_best(rng):
    p = rng.random((4, 32, 32))
    p /= p.sum(axis=-1, keepdims=True)
    v = rng.standard_normal((4, 32, 5))
    jl, svd = exp.jl_vs_svd(p, v, [4, 32], rng, draws=20)
    assert jl[1] < jl[0] and svd[0] <= jl[0] and svd[1] < 1e-12
