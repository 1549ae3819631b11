"""Registry entries of the masked-LM encoder (models/encoder.py): the whole tiny model in float64.

Exercises: write ``backward_inputs`` of a two-layer encoder yourself and compare it with these checks;
the embeddings entry is the gradient a soft prompt is trained on.

Without RoPE the key biases ``attn.bk`` have exactly zero gradient (q_i . bk shifts every score of
row i equally and softmax is shift invariant), so they are left out of ``wrt``; with RoPE each key's
bias is rotated by its own angle and its gradient is real and checked.
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..models import encoder as enc

_M = "scratch_transformers.models.encoder."
_B = "scratch_transformers.models.blocks.block_backward"   # the shared pre-LN block's backward


def _config(**kw):
    return enc.EncoderConfig(vocab_size=7, mask_id=6, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=6, **kw)


def _noisy(config, rng):
    params = enc.init_params(config, rng)
    return {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}   # away from the trivial init


def _padding():
    return np.array([[False] * 5, [False, False, False, True, True]])               # row 1: two padded keys


def _token_inputs(config, hidden=False):
    def make(rng):
        tokens = rng.integers(0, config.vocab_size, size=(2, 5))
        return {"_tokens": tokens, "_config": config, "_hidden": hidden, **_noisy(config, rng)}
    return make


def _token_forward(_tokens, _config, _hidden, **params):
    return enc.forward(params, _config, _tokens, padding_mask=_padding(), return_hidden=_hidden)


def _emb_inputs(config):
    def make(rng):
        return {"embeddings": rng.standard_normal((2, 5, config.d_model)), "_config": config, **_noisy(config, rng)}
    return make


def _emb_forward(embeddings, _config, **params):
    return enc.forward_embeddings(params, _config, embeddings, padding_mask=_padding())


def _emb_backward(dy, cache):
    dx, grads = enc.backward_inputs(dy, cache)
    return {"embeddings": dx, **grads}


def _wrt(config, extra=()):
    names = tuple(k for k in enc.param_shapes(config) if config.positions == "rope" or not k.endswith("attn.bk"))
    return extra + names


_LEARNED, _ROPE = _config(), _config(positions="rope", tie_embeddings=True)
GRADCHECKS = [
    Op(name="encoder.mlm_learned_padded", forward=_token_forward, backward=enc.backward,
       make_inputs=_token_inputs(_LEARNED), covers=(_M + "backward", _B), wrt=_wrt(_LEARNED), max_entries=24),
    Op(name="encoder.mlm_rope_tied", forward=_token_forward, backward=enc.backward,
       make_inputs=_token_inputs(_ROPE), covers=(_M + "backward", _B), wrt=_wrt(_ROPE), max_entries=24),
    Op(name="encoder.hidden_states", forward=_token_forward, backward=enc.backward,
       make_inputs=_token_inputs(_LEARNED, hidden=True), covers=(_M + "backward", _B),
       wrt=tuple(k for k in _wrt(_LEARNED) if not k.startswith("mlm_head")), max_entries=24),
    Op(name="encoder.input_embeddings", forward=_emb_forward, backward=_emb_backward,
       make_inputs=_emb_inputs(_LEARNED), covers=(_M + "backward_inputs",),
       wrt=_wrt(_LEARNED, ("embeddings",))[:1] + tuple(k for k in _wrt(_LEARNED) if k != "tok_emb"),
       max_entries=24),
]
