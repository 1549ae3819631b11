"""A decode step that fails leaves the KV cache as it was (issue 17: a bad padding mask or bias raised
after K/V had been written and ``length`` advanced, so the next step read a phantom position)."""

import numpy as np
import pytest

from scratch_transformers.attention.multihead import KVCache, init_mha, mha_forward


def _setup():
    rng = np.random.default_rng(0)
    params = init_mha(rng, 8, 2)
    cache = KVCache.empty(2, 2, 6, 4)
    mha_forward(rng.standard_normal((2, 3, 8)), params, n_heads=2, kv_cache=cache)   # a prefix of 3
    return rng, params, cache


@pytest.mark.parametrize("bad", [
    dict(key_padding_mask=np.zeros((2, 3), bool)),                 # T_k is 4 with the cache, not 3
    dict(key_padding_mask=np.zeros((2, 4), np.int64)),             # not a bool mask
    dict(attn_bias=np.zeros((2, 2, 1, 9))),                        # not broadcastable to (B, H, 1, 4)
    dict(attn_bias=np.full((1, 4), np.nan)),                       # NaN bias is refused by the core
])
def test_failed_decode_step_changes_nothing(bad):
    rng, params, cache = _setup()
    k0, v0, n0 = cache.k.copy(), cache.v.copy(), cache.length
    with pytest.raises(ValueError):
        mha_forward(rng.standard_normal((2, 1, 8)), params, n_heads=2, kv_cache=cache, **bad)
    assert cache.length == n0
    np.testing.assert_array_equal(cache.k, k0)
    np.testing.assert_array_equal(cache.v, v0)


def test_the_step_after_a_failed_one_matches_a_clean_run():
    rng, params, cache = _setup()
    x = rng.standard_normal((2, 1, 8))
    with pytest.raises(ValueError):
        mha_forward(x, params, n_heads=2, kv_cache=cache, key_padding_mask=np.zeros((2, 3), bool))
    y, _ = mha_forward(x, params, n_heads=2, kv_cache=cache)
    _, _, clean = _setup()
    y_clean, _ = mha_forward(x, params, n_heads=2, kv_cache=clean)
    np.testing.assert_array_equal(y, y_clean)
    assert cache.length == clean.length == 4


def test_transformer_decode_step_with_inconsistent_layer_caches_changes_nothing():
    """The model validates every layer's cache before layer 0 writes into its own."""
    from scratch_transformers.models.transformer import TransformerConfig, forward, init_params, new_kv_cache
    cfg = TransformerConfig(vocab_size=5, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=6)
    params = init_params(cfg, np.random.default_rng(0))
    caches = new_kv_cache(cfg, 1)
    forward(params, cfg, np.array([[1, 2]]), kv_cache=caches)
    caches[1].length = 1                                           # out of step with layer 0
    before = [(c.k.copy(), c.v.copy(), c.length) for c in caches]
    with pytest.raises(ValueError, match="kv_cache"):
        forward(params, cfg, np.array([[3]]), kv_cache=caches)
    for c, (k0, v0, n0) in zip(caches, before):
        assert c.length == n0
        np.testing.assert_array_equal(c.k, k0)
        np.testing.assert_array_equal(c.v, v0)
