"""Registry entries of Linformer (arXiv 2006.04768): the attention core, the multi-head layer with a
shared key-value projection, and a tiny encoder with one projection for every layer, in float64.

Exercises: derive dE and dF of eq. (7) yourself (derivations/linformer.md#backward) and check them
here; the sharing entries show that a matrix used twice gets the sum of both gradients.
"""

from __future__ import annotations

import numpy as np

from ..attention.multihead import init_mha, mha_backward, mha_forward
from ..core.registry import Op
from ..linformer import linformer_attention_backward, linformer_attention_forward
from ..models import encoder as enc

_COVERS = ("scratch_transformers.linformer.linformer_attention_backward",)


def _core_inputs(per_head):
    def make(rng):
        b, h, n, d, k_proj, n_proj = 2, 2, 5, 3, 3, 7                # sequence shorter than E's n: first columns
        e_shape = (h, k_proj, n_proj) if per_head else (k_proj, n_proj)
        pad = np.array([[False] * n, [False, False, False, True, True]])
        return {"q": rng.standard_normal((b, h, n, d)), "k": rng.standard_normal((b, h, n, d)),
                "v": rng.standard_normal((b, h, n, 4)), "E": rng.standard_normal(e_shape),
                "F": rng.standard_normal(e_shape), "key_padding_mask": pad}
    return make


def _core_backward(dy, cache):
    g = linformer_attention_backward(dy, cache)
    return {"q": g.dq, "k": g.dk, "v": g.dv, "E": g.dE, "F": g.dF}


def _mha_inputs(rng):
    params = init_mha(rng, 8, 2, std=0.5)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    return {"x": rng.standard_normal((2, 5, 8)), "attn.E": rng.standard_normal((3, 6)), **params}


def _mha_forward(x, **params):
    return mha_forward(x, params, prefix="attn", n_heads=2, core="linformer", causal=False,
                       core_params={"E": "attn.E", "F": "attn.E"})            # key-value sharing: E = F


def _mha_backward(dy, cache):
    dx, grads = mha_backward(dy, cache)
    return {"x": dx, **grads}


_ENC = enc.EncoderConfig(vocab_size=7, mask_id=6, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=6,
                         attention="linformer", proj_k=3, sharing="layerwise")


def _enc_inputs(rng):
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in enc.init_params(_ENC, rng).items()}
    return {"_tokens": rng.integers(0, 7, size=(2, 5)), **params}


def _enc_forward(_tokens, **params):
    return enc.forward(params, _ENC, _tokens, padding_mask=np.array([[False] * 5, [False] * 3 + [True] * 2]))


GRADCHECKS = [
    Op(name="linformer.attention_shared_heads", forward=linformer_attention_forward, backward=_core_backward,
       make_inputs=_core_inputs(False), covers=_COVERS, wrt=("q", "k", "v", "E", "F")),
    Op(name="linformer.attention_per_head", forward=linformer_attention_forward, backward=_core_backward,
       make_inputs=_core_inputs(True), covers=_COVERS, wrt=("q", "k", "v", "E", "F")),
    Op(name="linformer.mha_kv_shared", forward=_mha_forward, backward=_mha_backward, make_inputs=_mha_inputs,
       covers=_COVERS + ("scratch_transformers.attention.multihead.mha_backward",),
       wrt=("x", "attn.E", "attn.wq", "attn.wk", "attn.bk", "attn.wv", "attn.bv", "attn.wo")),
    Op(name="linformer.encoder_layerwise", forward=_enc_forward, backward=enc.backward, make_inputs=_enc_inputs,
       covers=_COVERS + ("scratch_transformers.models.encoder.backward",),
       wrt=("linformer.E", "tok_emb", "blocks.0.attn.wk", "blocks.1.attn.bk", "blocks.0.attn.wv", "mlm_head.w"),
       max_entries=24),
]
