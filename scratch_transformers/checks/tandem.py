"""Registry entries of Tandem Transformers (arXiv 2402.08644): the M_S attention over projected M_L rows
and own rows, the whole Tandem M_S (both block conventions, M_L frozen: its rows are constant inputs),
and the distillation loss of Tandem-Distil, in float64.

Exercise: derive dW_T^(j) (derivations/tandem.md#backward): the projected rows reach the loss only as
keys and values of layer j, through LN_1 shared with the own rows.
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..tandem import model
from ..tandem.attention import block_contexts, tandem_attention_backward, tandem_attention_forward
from ..tandem.losses import distillation_backward, distillation_forward
from ..tandem.router import init_router, router_backward, router_forward


def _attn_inputs(rng):
    d, t, m = 8, 6, 6
    params = {f"attn.{k}{n}": (0.5 if k == "w" else 0.1) * rng.standard_normal((d, d) if k == "w" else (d,))
              for n in "qkvo" for k in "wb"}
    return {"a_own": rng.standard_normal((2, t, d)), "a_ml": rng.standard_normal((2, m, d)),
            "_contexts": block_contexts(t, 2, "printed"), **params}


def _attn_forward(a_own, a_ml, _contexts, **params):
    return tandem_attention_forward(a_own, a_ml, params, prefix="attn", n_heads=2, contexts=_contexts)


def _attn_backward(dy, cache):
    da_own, da_ml, grads = tandem_attention_backward(dy, cache)
    return {"a_own": da_own, "a_ml": da_ml, **grads}


def _model_config(convention):
    return model.TandemConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_large=6, large_layers=3,
                              layer_map=(1, 3), gamma=2, convention=convention, d_ff=12, max_len=6)


def _model_inputs(config):
    def make(rng):
        params = model.init_params(config, rng)
        params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
        ml = {l: rng.standard_normal((2, 5, config.d_large)) for l in config.ml_layers}
        return {"_tokens": rng.integers(0, config.vocab_size, size=(2, 5)), "_ml": ml, "_config": config, **params}
    return make


def _model_forward(_tokens, _ml, _config, **params):
    return model.forward(params, _config, _tokens, _ml)


def _model_wrt(config):
    # attn.bk shifts every score of a row equally (also the M_L keys): its gradient is exactly 0
    return tuple(k for k in model.param_shapes(config) if not k.endswith("attn.bk"))


def _distil_inputs(rng):
    return {"logits": rng.standard_normal((2, 3, 5)), "teacher_logits": rng.standard_normal((2, 3, 5)),
            "_rows": np.array([[True, False, True], [True, True, True]])}


def _distil_forward(logits, teacher_logits, _rows):
    return distillation_forward(logits, teacher_logits, temperature=1.7, rows=_rows)


def _router_inputs(rng):
    return {"features": rng.standard_normal((3, 4, 7)), **init_router(7, 5, rng)}


def _router_backward(dy, cache):
    dx, grads = router_backward(dy, cache)
    return {"features": dx, **grads}


GRADCHECKS = [
    Op(name="tandem.router", forward=lambda features, **p: router_forward(features, p), backward=_router_backward,
       make_inputs=_router_inputs, covers=("scratch_transformers.tandem.router.router_backward",)),
    Op(name="tandem.attention", forward=_attn_forward, backward=_attn_backward, make_inputs=_attn_inputs,
       wrt=("a_own", "a_ml", "attn.wq", "attn.bq", "attn.wk", "attn.wv", "attn.bv", "attn.wo", "attn.bo"),
       covers=("scratch_transformers.tandem.attention.tandem_attention_backward",)),
] + [
    Op(name=f"tandem.model_{conv}", forward=_model_forward, backward=lambda dy, cache: model.backward(dy, cache),
       make_inputs=_model_inputs(_model_config(conv)), wrt=_model_wrt(_model_config(conv)), max_entries=24,
       covers=("scratch_transformers.tandem.model.backward",))
    for conv in ("figure", "printed")
] + [
    Op(name="tandem.distillation", forward=_distil_forward,
       backward=lambda dy, cache: {"logits": distillation_backward(dy, cache)}, make_inputs=_distil_inputs,
       wrt=("logits",), covers=("scratch_transformers.tandem.losses.distillation_backward",)),
]
