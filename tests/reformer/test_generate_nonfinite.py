"""The Reformer's generate refuses NaN logits instead of emitting token 0 (issue 17, non-finite policy)."""

import numpy as np
import pytest

from scratch_transformers.reformer import model as rf


@pytest.mark.parametrize("greedy", [True, False])
def test_nan_parameters_raise_instead_of_sampling_token_0(greedy):
    config = rf.ReformerConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=32, n_hashes=2,
                               bucket_size=4, ff_chunk=5)
    params = rf.init_params(config, np.random.default_rng(0))
    params["lm_head"] = np.full_like(params["lm_head"], np.nan)   # NaN logits (a NaN before LSH is refused there)
    with pytest.raises(ValueError, match="logits"):
        rf.generate(params, config, np.zeros((2, 5), np.int64), 3, rng=np.random.default_rng(1), greedy=greedy)
