"""LoRA's model-level helpers check what they are given (issue 17): the config's rank against the
adapters' arrays, complete configs in adapter files, finite input to the SVD analysis."""

import json

import numpy as np
import pytest

from scratch_transformers import lora as L


def _model_and_adapters(r=2):
    rng = np.random.default_rng(0)
    params = {"blocks.0.attn.wq": rng.standard_normal((6, 6)), "blocks.0.attn.wv": rng.standard_normal((6, 6))}
    config = L.LoRAConfig(r=r, alpha=4.0)
    adapters = L.init_adapters(params, config, rng)
    adapters = {k: v + rng.standard_normal(v.shape) for k, v in adapters.items()}   # b != 0
    return params, adapters, config


@pytest.mark.parametrize("fn", [L.merge_adapters, L.unmerge_adapters])
def test_merge_with_a_config_of_another_rank_is_refused(fn):
    """r = 4 in the config, rank-2 arrays: the merge used alpha / 4 instead of alpha / 2 silently."""
    params, adapters, _ = _model_and_adapters(r=2)
    with pytest.raises(ValueError, match=r"rank|config\.r"):
        fn(params, adapters, L.LoRAConfig(r=4, alpha=4.0))


def test_make_linears_with_a_config_of_another_rank_is_refused():
    params, adapters, _ = _model_and_adapters(r=2)
    with pytest.raises(ValueError, match=r"rank|config\.r"):
        L.make_linears(params, adapters, L.LoRAConfig(r=3, alpha=4.0))


def test_merge_then_unmerge_with_the_right_config_round_trips():
    params, adapters, config = _model_and_adapters(r=2)
    merged = L.merge_adapters(params, adapters, config)
    name = "blocks.0.attn.wq"
    np.testing.assert_allclose(merged[name] - params[name],
                               config.scale * adapters[name + ".lora_A"] @ adapters[name + ".lora_B"], rtol=1e-12)
    back = L.unmerge_adapters(merged, adapters, config)
    np.testing.assert_allclose(back[name], params[name], rtol=1e-12, atol=1e-12)


def _rewrite_config(path, edit):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    key = [k for k in arrays if arrays[k].dtype.kind == "U"][0]
    cfg = json.loads(str(arrays[key]))
    edit(cfg)
    arrays[key] = np.array(json.dumps(cfg))
    np.savez(path, **arrays)


def test_adapter_file_without_r_is_refused_not_read_as_r8(tmp_path):
    params, adapters, config = _model_and_adapters(r=2)
    path = L.save_adapters(tmp_path / "ad.npz", adapters, config)
    _rewrite_config(path, lambda cfg: cfg.pop("r"))
    with pytest.raises(ValueError, match="'r'"):
        L.load_adapters(path)


def test_adapter_file_whose_r_disagrees_with_its_arrays_is_refused(tmp_path):
    params, adapters, config = _model_and_adapters(r=2)
    path = L.save_adapters(tmp_path / "ad.npz", adapters, config)
    _rewrite_config(path, lambda cfg: cfg.update(r=8))
    with pytest.raises(ValueError, match=r"rank|config\.r"):
        L.load_adapters(path)


def test_adapter_file_round_trip(tmp_path):
    params, adapters, config = _model_and_adapters(r=2)
    got, cfg = L.load_adapters(L.save_adapters(tmp_path / "ad.npz", adapters, config))
    assert cfg == config and sorted(got) == sorted(adapters)
    for k in adapters:
        np.testing.assert_array_equal(got[k], adapters[k])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("which", ["a1", "a2"])
def test_subspace_similarity_rejects_non_finite_quickly(bad, which):
    """An inf entry used to hang for minutes inside the SVD."""
    rng = np.random.default_rng(0)
    args = {"a1": rng.standard_normal((64, 8)), "a2": rng.standard_normal((64, 4))}
    args[which][3, 1] = bad
    with pytest.raises(ValueError, match=which):
        L.subspace_similarity(args["a1"], args["a2"])
