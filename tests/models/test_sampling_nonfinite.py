"""Sampling refuses logits it cannot sample from (issue 17: all-NaN or all -inf logits became token 0)."""

import numpy as np
import pytest

from scratch_transformers.models.transformer import TransformerConfig, generate, init_params, sample_logits


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("row", [[np.nan] * 4, [-np.inf] * 4, [0.5, np.nan, 1.0, 2.0], [0.0, np.inf, 1.0, 2.0]])
def test_unsampleable_rows_raise(row, greedy):
    logits = np.array([[0.1, 0.2, 0.3, 0.4], row])
    with pytest.raises(ValueError, match=r"logits: expected .*row\(?s?\)? \[?1"):
        sample_logits(logits, np.random.default_rng(0), greedy=greedy)


def test_masked_entries_are_still_fine():
    logits = np.array([[-np.inf, 2.0, -np.inf], [0.0, -np.inf, -np.inf]])
    for greedy in (True, False):
        tok = sample_logits(logits, np.random.default_rng(0), greedy=greedy)
        np.testing.assert_array_equal(tok, [1, 0])
    tok = sample_logits(logits, np.random.default_rng(0), top_k=1)
    np.testing.assert_array_equal(tok, [1, 0])


def test_a_failed_sample_draws_nothing_from_the_rng():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ValueError):
        sample_logits(np.full((1, 3), np.nan), rng)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("greedy", [True, False])
def test_generate_with_nan_parameters_raises(greedy):
    cfg = TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_ff=8, max_len=6)
    params = init_params(cfg, np.random.default_rng(0))
    params["tok_emb"] = np.full_like(params["tok_emb"], np.nan)
    with pytest.raises(ValueError, match="logits"):
        generate(params, cfg, np.zeros((1, 2), np.int64), 3, rng=np.random.default_rng(0), greedy=greedy)
