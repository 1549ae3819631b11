"""The Reformer LM: reversible = ordinary (same logits, gradients to 1e-12), LSH with one round and two
chunks = full shared-QK attention, trainable end to end, generate, causality with full attention."""

import numpy as np
import pytest

from scratch_transformers.core.optim import AdamW
from scratch_transformers.reformer import model as rf


def tiny(**kw):
    base = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=32, n_hashes=2, bucket_size=4,
                ff_chunk=5)
    return rf.ReformerConfig(**{**base, **kw})


def test_reversible_and_ordinary_stacks_agree(rng):
    config = tiny()
    params = rf.init_params(config, rng, std=0.3)
    tokens = rng.integers(0, 11, size=(3, 21))
    rot = rf.draw_rotations(config, 21, rng)
    targets = rng.integers(0, 11, size=(3, 21))
    loss_r, g_r = rf.loss_and_grads(params, config, tokens, targets, rotations=rot)
    loss_o, g_o = rf.loss_and_grads(params, tiny(reversible=False), tokens, targets, rotations=rot)
    assert loss_r == loss_o
    assert sorted(g_r) == sorted(params)
    for k in g_o:
        np.testing.assert_allclose(g_r[k], g_o[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_one_round_two_chunks_equals_full_attention(rng):
    config = tiny(n_hashes=1, bucket_size=8)
    params = rf.init_params(config, rng, std=0.3)
    tokens = rng.integers(0, 11, size=(2, 16))                          # 16 = 2 chunks of 8
    lsh, _ = rf.forward(params, config, tokens, rng=rng)
    full, _ = rf.forward(params, config, tokens, attention="full")
    np.testing.assert_allclose(lsh, full, rtol=1e-12, atol=1e-12)


def test_full_attention_model_is_causal_bit_for_bit(rng):
    config = tiny(attention="full")
    params = rf.init_params(config, rng, std=0.3)
    tokens = rng.integers(0, 11, size=(2, 20))
    logits, _ = rf.forward(params, config, tokens)
    tokens2 = tokens.copy()
    tokens2[:, 12] = (tokens2[:, 12] + 1) % 11
    logits2, _ = rf.forward(params, config, tokens2)
    assert np.array_equal(logits[:, :12], logits2[:, :12]) and not np.array_equal(logits[:, 12:], logits2[:, 12:])


def test_trains_end_to_end_on_a_repeat_task(rng):
    """Sequences w w (|w| = 8): the second copy is predictable only by attention; loss must fall."""
    config = tiny(vocab_size=8, n_layers=1, bucket_size=4, n_hashes=2)
    params = rf.init_params(config, rng)
    opt = AdamW(lr=1e-2, weight_decay=0.0)

    def batch():
        w = rng.integers(0, 8, size=(16, 8))
        seq = np.concatenate([w, w], axis=1)
        targets = np.full_like(seq, -100)
        targets[:, 8:-1] = seq[:, 9:]
        return seq, targets

    losses = []
    for _ in range(120):
        x, y = batch()
        loss, grads = rf.loss_and_grads(params, config, x, y, rng=rng)
        opt.step(params, grads)
        losses.append(loss)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])          # ln 8 = 2.08 at the start


def test_generate(rng):
    config = tiny()
    params = rf.init_params(config, rng)
    prompt = rng.integers(0, 11, size=(2, 5))
    out = rf.generate(params, config, prompt, 6, rng=np.random.default_rng(1), greedy=True)
    assert out.shape == (2, 11) and np.array_equal(out[:, :5], prompt) and out.max() < 11
    again = rf.generate(params, config, prompt, 6, rng=np.random.default_rng(1), greedy=True)
    assert np.array_equal(out, again)
    sampled = rf.generate(params, config, prompt, 3, rng=rng, n_hashes=4)
    assert sampled.shape == (2, 8)
    with pytest.raises(ValueError, match="n_new"):
        rf.generate(params, config, prompt, 40, rng=rng)
    with pytest.raises(ValueError, match="rng"):
        rf.generate(params, config, prompt, 2, rng=None)


def test_float32_and_bad_inputs(rng):
    config = tiny()
    params = {k: v.astype(np.float32) for k, v in rf.init_params(config, rng).items()}
    logits, cache = rf.forward(params, config, rng.integers(0, 11, size=(1, 9)), rng=rng)
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    assert all(g.dtype == np.float32 for g in rf.backward(np.ones_like(logits), cache).values())
    with pytest.raises(ValueError, match="n_heads"):
        tiny(n_heads=3)
    with pytest.raises(ValueError, match="n_buckets"):
        tiny(n_buckets=5)
    with pytest.raises(ValueError, match="ff_chunk"):
        tiny(ff_chunk=1)
    with pytest.raises(ValueError, match="tokens"):
        rf.forward(params, config, np.full((1, 4), 11), rng=rng)
    with pytest.raises(ValueError, match="rng"):
        rf.forward(params, config, np.zeros((1, 4), dtype=int))
    with pytest.raises(ValueError, match="rotations"):
        rf.forward(params, config, np.zeros((1, 4), dtype=int), rotations=[])
    with pytest.raises(ValueError, match="cache"):
        rf.backward(logits, tuple(cache))
    with pytest.raises(ValueError, match="params"):
        rf.forward({k: v for k, v in params.items() if k != "lm_head"}, config, np.zeros((1, 4), dtype=int), rng=rng)
    with pytest.raises(ValueError, match="params"):
        rf.forward({**params, "lm_head": params["lm_head"].astype(np.float64)}, config, np.zeros((1, 4), dtype=int),
                   rng=rng)
    assert sorted(rf.param_shapes(config)) == sorted(params)
