"""Mamba's generate refuses NaN logits instead of emitting token 0 (issue 17, non-finite policy)."""

import numpy as np
import pytest

from scratch_transformers.mamba.model import MambaConfig, generate, init_params


@pytest.mark.parametrize("greedy", [True, False])
def test_nan_parameters_raise_instead_of_sampling_token_0(greedy):
    cfg = MambaConfig(vocab_size=5, d_model=4, n_layers=1, d_state=2, expand=2, d_conv=2, dt_rank=1)
    params = init_params(cfg, np.random.default_rng(0))
    params["embedding"] = np.full_like(params["embedding"], np.nan)
    with pytest.raises(ValueError, match="logits: expected"):
        generate(params, cfg, np.zeros((2, 2), np.int64), 3, rng=np.random.default_rng(0), greedy=greedy)


def test_finite_parameters_still_generate():
    cfg = MambaConfig(vocab_size=5, d_model=4, n_layers=1, d_state=2, expand=2, d_conv=2, dt_rank=1)
    params = init_params(cfg, np.random.default_rng(0))
    out = generate(params, cfg, np.zeros((2, 2), np.int64), 3, rng=np.random.default_rng(0))
    assert out.shape == (2, 5) and out.min() >= 0 and out.max() < 5
