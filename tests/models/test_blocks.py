"""The decoder (models/transformer.py) and the encoder (models/encoder.py) run one block code:
models/blocks.py. Same functions, same caches, and on one position (where causal and bidirectional
attention coincide) the two models with the same weights give bit-identical logits and gradients."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.models import blocks, encoder as enc, transformer as tf


def test_both_models_use_the_shared_block_code():
    for name in ("block_forward", "block_backward", "BlockCache", "trunk_shapes", "init_trunk",
                 "check_config_sizes", "check_config_tail"):
        assert getattr(tf, name) is getattr(blocks, name) is getattr(enc, name), name
    assert tf.INIT_STD == enc.INIT_STD == blocks.INIT_STD


def test_model_caches_hold_shared_block_caches(rng):
    dc = tf.TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, max_len=8)
    ec = enc.EncoderConfig(vocab_size=7, mask_id=6, d_model=8, n_layers=2, n_heads=2, max_len=8)
    _, c_dec = tf.forward(tf.init_params(dc, rng), dc, rng.integers(0, 7, (2, 5)))
    _, c_enc = enc.forward(enc.init_params(ec, rng), ec, rng.integers(0, 7, (2, 5)))
    assert all(type(c) is blocks.BlockCache for c in c_dec.blocks + c_enc.blocks)
    with pytest.raises(ValueError, match="cache"):
        blocks.block_backward(np.zeros((2, 5, 8)), c_dec, "blocks.0.", {})


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "none"])
def test_one_position_decoder_equals_encoder_bitwise(rng, positions):
    """T = 1: the causal mask and a bidirectional attention see the same single key, so a decoder and an
    encoder with the same trunk weights (and lm_head = mlm_head.w, mlm_head.b = 0) agree exactly."""
    kw = dict(vocab_size=9, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=6, positions=positions)
    dc, ec = tf.TransformerConfig(**kw), enc.EncoderConfig(mask_id=8, **kw)
    p_dec = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in tf.init_params(dc, rng).items()}
    p_enc = {k: v for k, v in p_dec.items() if k != "lm_head"}
    p_enc["mlm_head.w"], p_enc["mlm_head.b"] = p_dec["lm_head"], np.zeros(9)
    assert set(p_enc) == set(enc.param_shapes(ec)) and set(p_dec) == set(tf.param_shapes(dc))
    tokens = rng.integers(0, 9, (3, 1))
    y_dec, c_dec = tf.forward(p_dec, dc, tokens)
    y_enc, c_enc = enc.forward(p_enc, ec, tokens)
    np.testing.assert_array_equal(y_dec, y_enc)
    dy = rng.standard_normal(y_dec.shape)
    g_dec, g_enc = tf.backward(dy, c_dec), enc.backward(dy, c_enc)
    for k, g in g_dec.items():
        np.testing.assert_array_equal(g, g_enc["mlm_head.w" if k == "lm_head" else k], err_msg=k)


@pytest.mark.parametrize("causal", [True, False])
def test_block_gradcheck(rng, causal):
    """The block alone, float64 central differences, causal and bidirectional with a padded key."""
    config = tf.TransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, d_ff=12)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in blocks.init_trunk(config, rng).items()
              if k.startswith("blocks.0.")}
    pad = None if causal else np.array([[False, False, True, False], [False] * 4])
    h0 = rng.standard_normal((2, 4, 8))

    def fwd(h, **p):
        return blocks.block_forward(h, p, "blocks.0.", n_heads=2, core="reference", causal=causal, ln_eps=1e-5,
                                    p_drop=0.0, rng=None, training=False, key_padding_mask=pad)

    def bwd(dy, cache):
        grads = {}
        dh = blocks.block_backward(dy, cache, "blocks.0.", grads)
        return {"h": dh, **grads}

    res = gradcheck(fwd, bwd, {"h": h0, **params}, wrt=[k for k in ["h", *params] if not k.endswith("attn.bk")],
                    rng=rng)
    assert res.passed, str(res)


def test_model_widths_checks_in_order_and_defaults_d_ff():
    """core.validate.model_widths: the widths check every config runs (decoder, encoder, Reformer, Tandem)."""
    from dataclasses import dataclass

    from scratch_transformers.core import validate

    @dataclass(frozen=True)
    class C:
        d_model: int = 8
        n_heads: int = 2
        extra: int = 1
        d_ff: int | None = None

    c = C()
    validate.model_widths(c, ("d_model", "n_heads", "extra"))
    assert c.d_ff == 32
    for bad, match in [(C(extra=0), "extra"), (C(n_heads=3), "n_heads: expected a divisor of d_model=8"),
                       (C(d_ff=0), "d_ff"), (C(d_model=0, n_heads=3), "d_model")]:
        with pytest.raises(ValueError, match=match):
            validate.model_widths(bad, ("d_model", "n_heads", "extra"))
