"""SPEED with Tandem (arXiv 2402.08644 §3.1): M_L's representations from its own forward, greedy SPEED
identical to M_L's greedy decoding in both inference modes, sampled SPEED with M_L's law."""

import numpy as np
import pytest

from scratch_transformers.core.layers import layer_norm_forward
from scratch_transformers.models import transformer as tf
from scratch_transformers.models.speed import LargeDecoder, TandemDrafter, large_forward, speed_decode
from scratch_transformers.tandem import model

from test_speculative import ALPHA, exact_target_law, pearson


def models(seed, V=11, max_len=80, head_scale=60.0):
    rng = np.random.default_rng(seed)
    cl = tf.TransformerConfig(vocab_size=V, d_model=16, n_layers=3, n_heads=2, max_len=max_len)
    pl = tf.init_params(cl, rng)
    pl["lm_head"] *= head_scale
    ct = model.TandemConfig(vocab_size=V, d_model=8, n_layers=2, n_heads=2, d_large=16, large_layers=3,
                            layer_map=(1, 3), gamma=2, max_len=max_len)
    pt = model.init_params(ct, rng)
    pt["lm_head"] *= head_scale
    return cl, pl, ct, pt


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_large_forward_is_bit_identical_to_the_transformer(positions, rng):
    cl = tf.TransformerConfig(vocab_size=7, d_model=16, n_layers=3, n_heads=2, max_len=12, positions=positions)
    pl = tf.init_params(cl, rng)
    tokens = rng.integers(0, 7, size=(2, 9))
    want, _ = tf.forward(pl, cl, tokens)
    got, states = large_forward(pl, cl, tokens, (0, 2, 3))
    np.testing.assert_array_equal(got, want)
    hf, _ = layer_norm_forward(states[3], pl["ln_f.weight"], pl["ln_f.bias"])
    np.testing.assert_allclose(hf @ pl["lm_head"], want, rtol=1e-12, atol=1e-12)     # x^(L_L) is the last layer
    if positions == "learned":
        np.testing.assert_array_equal(states[0], pl["tok_emb"][tokens] + pl["pos_emb"][:9])
    cache = tf.new_kv_cache(cl, 2)
    a, s1 = large_forward(pl, cl, tokens[:, :5], (2,), kv_cache=cache)
    b, s2 = large_forward(pl, cl, tokens[:, 5:], (2,), kv_cache=cache)
    np.testing.assert_allclose(np.concatenate([a, b], 1), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([s1[2], s2[2]], 1), states[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["free_token", "representation_only"])
def test_greedy_speed_equals_large_greedy_over_many_prompts(mode):
    cl, pl, ct, pt = models(0)
    rng = np.random.default_rng(1)
    n = 17 if mode == "free_token" else 8              # 51 prompts in the default mode, 24 in the other
    for length in (1, 3, 6):
        prompts = rng.integers(0, 11, size=(n, length))
        want = tf.generate(pl, cl, prompts, 64, greedy=True)
        for i, prompt in enumerate(prompts):
            got, stats = speed_decode(pl, cl, pt, ct, prompt, 64, gamma=1 + i % 5, mode=mode, greedy=True)
            np.testing.assert_array_equal(got, want[i])
            assert stats.emitted == 64


def test_drafter_reads_ml_rows_of_every_verified_token():
    cl, pl, ct, pt = models(2)
    large = LargeDecoder(pl, cl, ct.ml_layers)
    drafter = TandemDrafter(pt, ct, large)
    tokens = np.array([1, 2, 3, 4, 5, 6])
    large.extend(tokens[:4], 1)                                     # M_L has tokens 0..3
    got = drafter.extend(tokens[:6], 1)                             # own rows 4, 5 (c = 4)
    assert drafter.state.ml_length == 4 and drafter.length == 6
    _, states = large_forward(pl, cl, tokens[None], ct.ml_layers)
    full, _ = model.forward(pt, ct, tokens[None], states, contexts=np.array([0, 0, 0, 0, 4, 4]))
    np.testing.assert_allclose(got, full[0, -1:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        drafter.extend(np.array([1]), 2)


@pytest.mark.parametrize("mode", ["free_token", "representation_only"])
def test_sampled_speed_has_the_law_of_m_l(mode):
    V, n = 4, 3
    cl, pl, ct, pt = models(3, V=V, max_len=12, head_scale=3.0)
    prompt = np.array([0, 2, 1])
    want = exact_target_law(pl, cl, prompt, n, V)
    rng = np.random.default_rng(5)
    counts = np.zeros(V ** n, dtype=np.int64)
    for _ in range(1000):
        out, _ = speed_decode(pl, cl, pt, ct, prompt, n, gamma=2, mode=mode, rng=rng)
        counts[np.ravel_multi_index(tuple(out[3:]), (V,) * n)] += 1
    assert pearson(counts, want)[1] > ALPHA


def test_speed_validates(rng):
    cl, pl, ct, pt = models(4, max_len=10)
    with pytest.raises(ValueError):
        speed_decode(pl, cl, pt, ct, np.array([1, 2]), 10, gamma=2, greedy=True)
    with pytest.raises(ValueError):
        speed_decode(pl, cl, pt, ct, np.array([1, 2]), 3, gamma=2, greedy=True, mode="both")
    bad = model.TandemConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_large=12, large_layers=3)
    with pytest.raises(ValueError):
        TandemDrafter(model.init_params(bad, rng), bad, LargeDecoder(pl, cl, (3,)))
