"""Registry entries of ``attention``: the materialised reference (attention/reference.py) and the
multi-head layer (attention/multihead.py). The flash kernels' entries are in the checks modules
named after them."""

from __future__ import annotations

import numpy as np

from ..attention.multihead import init_mha, mha_backward, mha_forward
from ..attention.reference import attention_backward, attention_forward
from ..core.registry import Op


def _inputs_full(rng):
    """Causal bottom-right, a per-head bias, one padded key and a dropout keep-mask (Nq != Nk)."""
    b, h, n_q, n_k, d = 2, 2, 3, 5, 4
    pad = np.zeros((b, n_k), dtype=bool)
    pad[1, 0] = True
    return dict(q=rng.standard_normal((b, h, n_q, d)), k=rng.standard_normal((b, h, n_k, d)),
                v=rng.standard_normal((b, h, n_k, 3)), bias=rng.standard_normal((h, 1, n_k)),
                key_padding_mask=pad, dropout_mask=rng.random((b, h, n_q, n_k)) > 0.3)


def _forward_full(q, k, v, bias, key_padding_mask, dropout_mask):
    return attention_forward(q, k, v, causal=True, causal_alignment="bottom_right", bias=bias,
                             key_padding_mask=key_padding_mask, dropout_p=0.3, dropout_mask=dropout_mask,
                             scale=0.7)


def _inputs_fully_masked(rng):
    """Top-left causal with the first key padded: query row 0 sees no key (out 0, lse -inf)."""
    b, h, n, d = 1, 2, 4, 3
    pad = np.zeros((b, n), dtype=bool)
    pad[0, 0] = True
    return dict(q=rng.standard_normal((b, h, n, d)), k=rng.standard_normal((b, h, n, d)),
                v=rng.standard_normal((b, h, n, d)), key_padding_mask=pad)


def _forward_fully_masked(q, k, v, key_padding_mask):
    return attention_forward(q, k, v, causal=True, key_padding_mask=key_padding_mask)


REFERENCE_CHECKS = [
    Op(name="attention_reference", forward=_forward_full, backward=attention_backward,
       make_inputs=_inputs_full, covers=("scratch_transformers.attention.reference.attention_backward",),
       wrt=("q", "k", "v", "bias")),
    Op(name="attention_reference_fully_masked_row", forward=_forward_fully_masked,
       backward=lambda dy, cache: attention_backward(dy, cache)[:3],
       make_inputs=_inputs_fully_masked,
       covers=("scratch_transformers.attention.reference.attention_backward",), wrt=("q", "k", "v")),
]


def _mha_inputs(rng, bias=True):
    d_model, n_heads = 8, 2
    params = init_mha(rng, d_model, n_heads, bias=bias, std=0.5)
    for k in params:
        if ".b" in k:
            params[k] = 0.1 * rng.standard_normal(params[k].shape)
    return {"x": rng.standard_normal((2, 4, d_model)), **params}


def _mha_check_forward(x, _options, **params):
    return mha_forward(x, params, prefix="attn", n_heads=2, **_options)


def _mha_check_backward(dy, cache):
    dx, grads = mha_backward(dy, cache)
    return {"x": dx, **grads}


def _mha_padded_inputs(rng):
    pad = np.array([[False, False, False, False], [True, False, False, False]])
    bias = -0.3 * np.abs(np.arange(4)[:, None] - np.arange(4)[None, :])[None] * np.array([1.0, 0.5])[:, None, None]
    return {**_mha_inputs(rng), "_options": dict(attn_bias=bias, key_padding_mask=pad)}


def _mha_rope_inputs(rng):
    return {**_mha_inputs(rng, bias=False), "_options": dict(rope={"base": 100.0, "layout": "interleaved"})}


# The key bias bk is left out of the check: q_i . bk is the same for every key j of row i, and softmax is
# shift invariant, so dL/dbk is exactly 0 and central differences only see rounding noise
# (tests/attention/test_multihead.py checks that the analytic dbk is 0 to rounding).
_WRT = ("x", "attn.wq", "attn.bq", "attn.wk", "attn.wv", "attn.bv", "attn.wo", "attn.bo")

MULTIHEAD_CHECKS = [
    Op(name="mha_reference", forward=_mha_check_forward, backward=_mha_check_backward,
       make_inputs=lambda rng: {**_mha_inputs(rng), "_options": {}}, wrt=_WRT,
       covers=("scratch_transformers.attention.multihead.mha_backward",)),
    Op(name="mha_reference_bias_padding", forward=_mha_check_forward, backward=_mha_check_backward,
       make_inputs=_mha_padded_inputs, wrt=_WRT,
       covers=("scratch_transformers.attention.multihead.mha_backward",)),
    Op(name="mha_reference_rope", forward=_mha_check_forward, backward=_mha_check_backward,
       make_inputs=_mha_rope_inputs, covers=("scratch_transformers.attention.multihead.mha_backward",)),
]


GRADCHECKS = REFERENCE_CHECKS + MULTIHEAD_CHECKS
