"""The reference core builds the counter-based dropout mask from a seed (what the model passes to every
core), so reference and flash compute the same function from the same seed."""

import numpy as np
import pytest

from scratch_transformers.attention.dropout import flash_dropout_mask
from scratch_transformers.attention.flash import flash_attention_forward
from scratch_transformers.attention.reference import attention_backward, attention_forward


def _qkv(rng, n_q=5, n_k=7):
    return (rng.standard_normal((2, 2, n_q, 4)), rng.standard_normal((2, 2, n_k, 4)),
            rng.standard_normal((2, 2, n_k, 3)))


def test_seed_equals_the_materialised_mask_bit_for_bit(rng):
    q, k, v = _qkv(rng)
    out_s, c_s = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", dropout_p=0.3,
                                   dropout_seed=1234)
    keep = flash_dropout_mask(1234, (2, 2, 5, 7), 0.3)
    out_m, c_m = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", dropout_p=0.3,
                                   dropout_mask=keep)
    np.testing.assert_array_equal(out_s, out_m)
    do = rng.standard_normal(out_s.shape)
    for a, b in zip(attention_backward(do, c_s)[:3], attention_backward(do, c_m)[:3]):
        np.testing.assert_array_equal(a, b)
    other, _ = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", dropout_p=0.3,
                                 dropout_seed=1235)
    assert not np.array_equal(other, out_s)                                # the seed matters


def test_seed_gives_flash_results(rng):
    q, k, v = _qkv(rng, 6, 6)
    ref, _ = attention_forward(q, k, v, causal=True, dropout_p=0.25, dropout_seed=99)
    fl, _ = flash_attention_forward(q, k, v, causal=True, dropout_p=0.25, dropout_seed=99, block_q=4, block_k=4)
    np.testing.assert_allclose(fl, ref, rtol=1e-12, atol=1e-12)


def test_seed_without_dropout_is_no_dropout_and_seed_with_mask_is_refused(rng):
    q, k, v = _qkv(rng)
    plain, _ = attention_forward(q, k, v)
    seeded, cache = attention_forward(q, k, v, dropout_seed=5)
    np.testing.assert_array_equal(plain, seeded)
    assert cache.z is None
    with pytest.raises(ValueError, match="^dropout_seed: expected None when an explicit dropout_mask"):
        attention_forward(q, k, v, dropout_p=0.3, dropout_mask=np.ones((2, 2, 5, 7), bool), dropout_seed=5)
    with pytest.raises(ValueError, match="^dropout_seed: expected an integer"):
        attention_forward(q, k, v, dropout_p=0.3, dropout_seed=1.5)
    with pytest.raises(ValueError, match="^dropout_mask: expected an explicit boolean keep-mask"):
        attention_forward(q, k, v, dropout_p=0.3)
