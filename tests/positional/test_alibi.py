"""ALiBi: slopes against values derived by hand from the paper's rule, the bias against loops,
end alignment for cached decoding, the fairseq m*j trick, bad inputs."""

import numpy as np
import pytest

from scratch_transformers.positional.alibi import alibi_bias, alibi_slopes


def test_eight_heads_are_exactly_powers_of_two():
    np.testing.assert_array_equal(alibi_slopes(8), [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256])


def test_sixteen_heads_interleave_geometric_means():
    # §3: 16 heads -> 2^-0.5, 2^-1, 2^-1.5, ..., 2^-8
    np.testing.assert_allclose(alibi_slopes(16), [2.0 ** (-0.5 * h) for h in range(1, 17)], rtol=1e-15)


def test_power_of_two_rule_is_geometric_with_ratio_equal_to_first_term():
    for n in (1, 2, 4, 32):
        s = alibi_slopes(n)
        start = 2.0 ** (-8.0 / n)
        np.testing.assert_allclose(s, start ** np.arange(1, n + 1), rtol=1e-14)
        assert abs(s[-1] - 1 / 256) < 1e-15


def test_twelve_heads_by_hand():
    # Largest power of two below 12 is 8: slopes 2^-1 ... 2^-8.
    # The 16-head sequence is 2^-0.5, 2^-1, 2^-1.5, ...; every other one starting at the first has
    # odd half-exponents 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5, ...; we need 12 - 8 = 4 of them.
    r = np.sqrt(0.5)
    want = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
            r, r / 2, r / 4, r / 8]
    np.testing.assert_allclose(alibi_slopes(12), want, rtol=1e-15)
    # and NOT the naive 2^(-8h/12): for n not a power of two the ALiBi authors' get_slopes uses the rule above
    assert not np.allclose(alibi_slopes(12), [2.0 ** (-8 * h / 12) for h in range(1, 13)])


def test_six_heads_by_hand():
    # Largest power of two below 6 is 4: 2^(-8h/4) = 2^-2, 2^-4, 2^-6, 2^-8.
    # The 8-head sequence is 2^-1, ..., 2^-8; every other one from the first: 2^-1, 2^-3, ...; take 2.
    np.testing.assert_array_equal(alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_causal_and_symmetric_bias_against_loops():
    H, N = 3, 6
    m = alibi_slopes(H)
    causal = alibi_bias(H, N, N)
    sym = alibi_bias(H, N, N, causal=False)
    assert causal.shape == sym.shape == (H, N, N) and causal.dtype == np.float64
    for h in range(H):
        for i in range(N):
            for j in range(N):
                assert sym[h, i, j] == -m[h] * abs(i - j)
                if j <= i:
                    assert causal[h, i, j] == -m[h] * (i - j)
                else:
                    assert causal[h, i, j] == -np.inf
    # the paper's row for query i (1-based): m * [-(i-1), ..., -1, 0]
    np.testing.assert_array_equal(causal[0, 4, :5], m[0] * np.array([-4, -3, -2, -1, 0]))


def test_end_aligned_queries_for_cached_decoding():
    H, n_k = 4, 9
    full = alibi_bias(H, n_k, n_k)
    for n_q in (1, 3, 9):
        np.testing.assert_array_equal(alibi_bias(H, n_q, n_k), full[:, -n_q:, :])
        np.testing.assert_array_equal(alibi_bias(H, n_q, n_k, causal=False),
                                      alibi_bias(H, n_k, n_k, causal=False)[:, -n_q:, :])
    # a single decoded query sees every key, the last with bias 0
    last = alibi_bias(H, 1, n_k)
    assert np.all(np.isfinite(last)) and np.all(last[:, 0, -1] == 0)


def _softmax(s):
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_fairseq_key_position_trick_equals_causal_bias(rng):
    """fairseq adds m*j (every row identical) to the -inf causal mask; after the softmax that equals
    our -m(i - j) bias (translation invariance), but only because of the mask."""
    H, N = 4, 7
    scores = rng.standard_normal((H, N, N))
    m = alibi_slopes(H)
    mask = np.where(np.tril(np.ones((N, N), bool)), 0.0, -np.inf)
    fairseq = m[:, None, None] * np.arange(N)[None, None, :] + mask
    np.testing.assert_allclose(_softmax(scores + alibi_bias(H, N, N)), _softmax(scores + fairseq), atol=1e-15)
    # without the mask the trick is wrong, the symmetric form is what bidirectional attention needs
    unmasked = m[:, None, None] * np.arange(N)[None, None, :] + 0 * mask.clip(-1, 0)
    assert not np.allclose(_softmax(scores + unmasked), _softmax(scores + alibi_bias(H, N, N, causal=False)))


def test_custom_slopes_and_float32_slopes():
    b = alibi_bias(2, 3, 3, slopes=np.array([1.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(b[1, 2], [-1.0, -0.5, 0.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(2.0)
    with pytest.raises(ValueError, match="n_q"):
        alibi_bias(2, 5, 4)
    with pytest.raises(ValueError, match="slopes"):
        alibi_bias(2, 3, 3, slopes=np.ones(3))
    with pytest.raises(ValueError, match="slopes"):
        alibi_bias(2, 3, 3, slopes=np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="causal"):
        alibi_bias(2, 3, 3, causal="yes")
    with pytest.raises(ValueError, match="n_k"):
        alibi_bias(2, 1, 0)


@pytest.mark.parametrize("n_q,n_k,causal", [(37, 37, True), (5, 37, True), (37, 37, False), (1, 20, True)])
def test_alibi_through_flash_equals_reference_float64(rng, n_q, n_k, causal):
    """ALiBi as the additive bias: flash kernel (blocks not dividing N) == reference, 1e-12, float64,
    forward and backward; the reference itself == a naive softmax with the bias added after scaling."""
    from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
    from scratch_transformers.attention.reference import attention_backward, attention_forward

    B, H, d = 2, 6, 8
    q = rng.standard_normal((B, H, n_q, d))
    k, v = rng.standard_normal((2, B, H, n_k, d))
    dout = rng.standard_normal((B, H, n_q, d))
    bias = alibi_bias(H, n_q, n_k, causal=causal)                       # causal form carries the -inf mask
    opts = dict(causal=causal, causal_alignment="bottom_right", bias=bias)
    ref, ref_cache = attention_forward(q, k, v, **opts)
    out, cache = flash_attention_forward(q, k, v, block_q=16, block_k=8, **opts)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(d) + bias[None]            # naive: bias after 1/sqrt(d)
    naive = _softmax(s) @ v
    np.testing.assert_allclose(ref, naive, rtol=1e-12, atol=1e-12)
    for got, want in zip(flash_attention_backward(dout, cache)[:3], attention_backward(dout, ref_cache)[:3]):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if causal:                                                           # the bias alone is the causal mask
        out_b, _ = flash_attention_forward(q, k, v, bias=bias, block_q=16, block_k=8)
        np.testing.assert_allclose(out_b, ref, rtol=1e-12, atol=1e-12)
