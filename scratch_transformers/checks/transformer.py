"""Registry entries of the decoder LM (models/transformer.py): the whole tiny model, float64.

Without RoPE the key biases attn.bk get exactly zero gradient (q_i . bk shifts every score of row i
equally and softmax is shift invariant), so they are left out of ``wrt``; with RoPE each key's bias is
rotated by its own angle, the shift is no longer constant over j, and bk has a real gradient that is
checked."""

from __future__ import annotations

from ..core.registry import Op
from ..models.transformer import TransformerConfig, backward, forward, init_params, param_shapes


def _tiny_config(**kw):
    return TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=5, **kw)


def _tf_inputs(config, seed_tokens=0):
    def make(rng):
        params = init_params(config, rng)
        for k in params:                                   # move away from the all-zero-bias init
            params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape)
        tokens = rng.integers(0, config.vocab_size, size=(2, 5))
        return {"_tokens": tokens, "_config": config, **params}
    return make


def _tf_forward(_tokens, _config, **params):
    return forward(params, _config, _tokens)


def _tf_wrt(config):
    return tuple(k for k in param_shapes(config) if config.positions == "rope" or not k.endswith("attn.bk"))


_COVERS = ("scratch_transformers.models.transformer.backward", "scratch_transformers.models.blocks.block_backward")
GRADCHECKS = [
    Op(name=f"transformer_tiny_{name}", forward=_tf_forward, backward=lambda dy, cache: backward(dy, cache),
       make_inputs=_tf_inputs(cfg), covers=_COVERS, wrt=_tf_wrt(cfg), max_entries=24)
    for name, cfg in [("learned", _tiny_config()),
                      ("rope_tied", _tiny_config(positions="rope", tie_embeddings=True, rope_scale=2.0)),
                      ("alibi", _tiny_config(positions="alibi", alibi_scale=0.5))]
]
