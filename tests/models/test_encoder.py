"""The masked-LM encoder: gradients, bidirectionality, key padding, BERT masking, the embeddings path."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.core.layers import embedding_backward
from scratch_transformers.core.optim import AdamW
from scratch_transformers.models import encoder as enc
from scratch_transformers.models.encoder import EncoderConfig


def tiny(**kw):
    base = dict(vocab_size=9, mask_id=8, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=10)
    base.update(kw)
    return EncoderConfig(**base)


def noisy_params(config, rng, scale=0.3, dtype=np.float64):
    p = enc.init_params(config, rng, dtype=dtype)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(dtype) for k, v in p.items()}


def test_gradcheck_every_entry_with_padding(rng):
    """Every parameter entry of a 2-layer encoder (learned positions, untied head, a padded row), float64."""
    config = tiny(max_len=5)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 9, size=(2, 5))
    pad = np.array([[False] * 5, [False, False, True, False, True]])      # padding need not be at the end
    res = gradcheck(lambda **p: enc.forward(p, config, tokens, padding_mask=pad), enc.backward, params,
                    wrt=[k for k in params if not k.endswith("attn.bk")], rng=rng)
    assert res.passed, str(res)
    assert all(r.n_checked == r.n_total for r in res.reports)


def test_key_bias_gradient_is_zero_without_rope(rng):
    config = tiny()
    params = noisy_params(config, rng)
    logits, cache = enc.forward(params, config, rng.integers(0, 9, size=(2, 6)))
    grads = enc.backward(rng.standard_normal(logits.shape), cache)
    scale = np.abs(grads["blocks.0.attn.bq"]).max()
    assert np.abs(grads["blocks.0.attn.bk"]).max() < 1e-12 * max(scale, 1.0)


@pytest.mark.parametrize("kw", [dict(positions="sinusoidal", tie_embeddings=True),
                                dict(positions="rope", n_heads=2, d_model=8),
                                dict(positions="none", dropout=0.3)])
def test_gradcheck_variants(rng, kw):
    config = tiny(**kw)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 9, size=(2, 6))
    pad = np.zeros((2, 6), bool)
    pad[1, 4:] = True

    def fwd(**p):
        return enc.forward(p, config, tokens, padding_mask=pad, training=True, rng=np.random.default_rng(3))

    wrt = [k for k in params if config.positions == "rope" or not k.endswith("attn.bk")]
    res = gradcheck(fwd, enc.backward, params, wrt=wrt, rng=rng, max_entries=10)
    assert res.passed, str(res)


def test_bidirectional_every_output_sees_every_token(rng):
    """Unlike the decoder, changing the LAST token changes the logits at the FIRST position."""
    config = tiny()
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 8, size=(1, 7))
    other = tokens.copy()
    other[0, -1] = (other[0, -1] + 1) % 8
    a, _ = enc.forward(params, config, tokens)
    b, _ = enc.forward(params, config, other)
    assert np.all(np.abs(a[0, :-1] - b[0, :-1]).max(axis=-1) > 1e-6)


def test_padded_positions_change_nothing_and_equal_the_short_sequence(rng):
    """Tokens under the padding mask do not affect the other positions' logits; with padding at the end
    the result equals the shorter sequence's (1e-12), for both attention cores."""
    for core in ("reference", "flash"):
        config = tiny(attention=core)
        params = noisy_params(config, rng)
        tokens = rng.integers(0, 9, size=(2, 8))
        pad = np.zeros((2, 8), bool)
        pad[0, 5:] = True
        garbage = tokens.copy()
        garbage[0, 5:] = rng.integers(0, 9, size=3)
        a, _ = enc.forward(params, config, tokens, padding_mask=pad)
        b, _ = enc.forward(params, config, garbage, padding_mask=pad)
        np.testing.assert_array_equal(a[~pad], b[~pad])
        short, _ = enc.forward(params, config, tokens[:1, :5])
        np.testing.assert_allclose(a[0, :5], short[0], rtol=1e-12, atol=1e-12)


def test_flash_core_equals_reference_core(rng):
    ref_config, fl_config = tiny(), tiny(attention="flash")
    params = noisy_params(ref_config, rng)
    tokens = rng.integers(0, 9, size=(2, 9))
    pad = np.zeros((2, 9), bool)
    pad[1, 6:] = True
    a, ca = enc.forward(params, ref_config, tokens, padding_mask=pad)
    b, cb = enc.forward(params, fl_config, tokens, padding_mask=pad)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(a.shape)
    ga, gb = enc.backward(dy, ca), enc.backward(dy, cb)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_embeddings_path_equals_token_path_and_gives_the_input_gradient(rng):
    config = tiny()
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 9, size=(2, 6))
    a, ca = enc.forward(params, config, tokens)
    b, cb = enc.forward_embeddings(params, config, enc.embed(params, config, tokens))
    np.testing.assert_array_equal(a, b)
    dy = rng.standard_normal(a.shape)
    dx, grads = enc.backward_inputs(dy, cb)
    full = enc.backward(dy, ca)
    np.testing.assert_allclose(embedding_backward(dx, ca.emb), full["tok_emb"], rtol=1e-13, atol=1e-14)
    assert "tok_emb" not in grads                      # untied head: tok_emb is not used on the embeddings path
    for k in grads:
        np.testing.assert_array_equal(grads[k], full[k])


def test_soft_prompt_gradient_by_central_differences(rng):
    """A learned prompt P (3, D) prepended to the token embeddings: dL/dP from backward_inputs."""
    config = tiny(max_len=8, tie_embeddings=True)
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 9, size=(2, 5))
    x_tok = enc.embed(params, config, tokens)

    def fwd(prompt):
        x = np.concatenate([np.broadcast_to(prompt, (2, 3, 8)), x_tok], axis=1)
        return enc.forward_embeddings(params, config, x, return_hidden=True)

    def bwd(dy, cache):
        dx, _ = enc.backward_inputs(dy, cache)
        return {"prompt": dx[:, :3].sum(axis=0)}

    res = gradcheck(fwd, bwd, {"prompt": rng.standard_normal((3, 8))}, rng=rng)
    assert res.passed, str(res)


def test_non_finite_embeddings_propagate(rng):
    config = tiny()
    params = noisy_params(config, rng)
    x = rng.standard_normal((1, 4, 8))
    x[0, 2, 3] = np.nan
    out, _ = enc.forward_embeddings(params, config, x)
    assert np.all(np.isnan(out))                       # every position attends to position 2


def test_float32(rng):
    config = tiny()
    p64 = noisy_params(config, rng)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    tokens = rng.integers(0, 9, size=(2, 6))
    a, _ = enc.forward(p64, config, tokens)
    b, cache = enc.forward(p32, config, tokens)
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    grads = enc.backward(np.ones_like(b), cache)
    assert all(g.dtype == np.float32 for g in grads.values())


# --- BERT masking -------------------------------------------------------------------------------

def test_mask_tokens_counts_and_targets(rng):
    tokens = rng.integers(0, 50, size=(200, 40))
    pad = np.zeros(tokens.shape, bool)
    pad[::2, 30:] = True                                 # even rows have 30 real tokens
    inputs, targets = enc.mask_tokens(tokens, np.random.default_rng(1), vocab_size=60, mask_id=59,
                                      padding_mask=pad, special_ids=(0,))
    chosen = targets != -100
    eligible = ~pad & (tokens != 0)
    assert not np.any(chosen & ~eligible)
    want = np.maximum(1, np.floor(0.15 * eligible.sum(axis=1) + 0.5))
    np.testing.assert_array_equal(chosen.sum(axis=1), want)
    np.testing.assert_array_equal(targets[chosen], tokens[chosen])
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])
    n = chosen.sum()
    masked = np.mean(inputs[chosen] == 59)
    kept = np.mean(inputs[chosen] == tokens[chosen])
    sd = np.sqrt(0.25 / n)
    assert abs(masked - 0.8) < 5 * sd
    assert abs(kept - (0.1 + 0.1 / 60)) < 5 * sd          # kept, or a random draw that hit the original
    rand = inputs[chosen & (inputs != 59) & (inputs != tokens)]
    assert rand.min() >= 0 and rand.max() < 60


def test_mask_tokens_is_reproducible_and_uniform_over_positions(rng):
    tokens = rng.integers(0, 9, size=(4000, 10))
    a = enc.mask_tokens(tokens, np.random.default_rng(5), vocab_size=9, mask_id=8, mask_prob=0.3)
    b = enc.mask_tokens(tokens, np.random.default_rng(5), vocab_size=9, mask_id=8, mask_prob=0.3)
    np.testing.assert_array_equal(a[0], b[0])
    freq = np.mean(a[1] != -100, axis=0)                 # 3 of 10 per row: 0.3 at every position
    assert np.all(np.abs(freq - 0.3) < 5 * np.sqrt(0.21 / 4000))


def test_mask_tokens_bad_inputs_leave_the_rng_untouched():
    g = np.random.default_rng(0)
    state = g.bit_generator.state
    with pytest.raises(ValueError, match="tokens"):
        enc.mask_tokens(np.array([[1, 9]]), g, vocab_size=9, mask_id=8)
    with pytest.raises(ValueError, match="mask_id"):
        enc.mask_tokens(np.array([[1, 2]]), g, vocab_size=9, mask_id=9)
    with pytest.raises(ValueError, match="padding_mask"):
        enc.mask_tokens(np.array([[1, 2]]), g, vocab_size=9, mask_id=8, padding_mask=np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="mask_prob"):
        enc.mask_tokens(np.array([[1, 2]]), g, vocab_size=9, mask_id=8, mask_prob=0.0)
    assert g.bit_generator.state == state


# --- loss, training, validation -----------------------------------------------------------------

def test_mlm_loss_and_grads_match_eval_loss_and_central_differences(rng):
    config = tiny()
    params = noisy_params(config, rng)
    tokens = rng.integers(0, 8, size=(3, 10))
    inputs, targets = enc.mask_tokens(tokens, rng, vocab_size=9, mask_id=8)
    loss, grads = enc.mlm_loss_and_grads(params, config, inputs, targets)
    assert abs(loss - enc.mlm_loss(params, config, inputs, targets, batch=2)) < 1e-12
    w = params["blocks.1.mlp.w1"]
    for idx in [(0, 0), (3, 7), (7, 11)]:
        old = w[idx]
        w[idx] = old + 1e-6
        lp = enc.mlm_loss(params, config, inputs, targets)
        w[idx] = old - 1e-6
        lm = enc.mlm_loss(params, config, inputs, targets)
        w[idx] = old
        assert abs((lp - lm) / 2e-6 - grads["blocks.1.mlp.w1"][idx]) < 1e-7


def test_a_few_adamw_steps_learn_a_copy_pattern(rng):
    """Sanity: 60 steps on sequences 'a b a b ...' bring the MLM loss far below log V."""
    config = tiny(vocab_size=6, mask_id=5, d_model=16, max_len=8)
    params = enc.init_params(config, rng)
    opt = AdamW(lr=1e-2)
    for _ in range(60):
        a, b = rng.integers(0, 5, size=(2, 16, 1))
        tokens = np.tile(np.concatenate([a, b], axis=1), (1, 4))          # (16, 8)
        inputs, targets = enc.mask_tokens(tokens, rng, vocab_size=6, mask_id=5)
        loss, grads = enc.mlm_loss_and_grads(params, config, inputs, targets)
        opt.step(params, grads)
    assert loss < 0.5 * np.log(5)


def test_bad_inputs(rng):
    with pytest.raises(ValueError, match="mask_id"):
        EncoderConfig(vocab_size=5, mask_id=5)
    with pytest.raises(ValueError, match="attention"):
        EncoderConfig(vocab_size=5, mask_id=4, attention="nope")
    with pytest.raises(ValueError, match="positions"):
        EncoderConfig(vocab_size=5, mask_id=4, positions="alibi")
    config = tiny()
    params = enc.init_params(config, rng)
    with pytest.raises(ValueError, match="tokens"):
        enc.forward(params, config, np.zeros((1, 11), int))                  # longer than max_len
    with pytest.raises(ValueError, match="padding_mask"):
        enc.forward(params, config, np.zeros((1, 4), int), padding_mask=np.zeros((1, 4), int))
    with pytest.raises(ValueError, match="embeddings"):
        enc.forward_embeddings(params, config, np.zeros((1, 4, 7)))
    with pytest.raises(ValueError, match="cache"):
        enc.backward(np.zeros((1, 4, 9)), object())
    _, cache = enc.forward(params, config, np.zeros((1, 4), int), return_hidden=True)
    with pytest.raises(ValueError, match="dout"):
        enc.backward(np.zeros((1, 4, 9)), cache)                            # hidden states are (1, 4, 8)
    with pytest.raises(ValueError, match="rng"):
        enc.mlm_loss_and_grads(params, tiny(dropout=0.1), np.zeros((1, 4), int), np.zeros((1, 4), int))
