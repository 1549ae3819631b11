"""Gradient checks of the MatMul-free LM's forward/backward pairs (arXiv 2406.02528).

The quantised layers are piecewise constant in their inputs (their true gradient is zero almost everywhere;
training uses the straight-through estimator), so central differences check the float form of each op
(``quantize=False``), whose backward is the same code path with x_q = x_bar and W_q = W; the STE formula of the
quantised form is tested exactly in tests/matmulfree/test_matmulfree_bitlinear.py.
"""

from __future__ import annotations


from ..core.registry import Op
from ..matmulfree.bitlinear import bitlinear_backward, bitlinear_forward
from ..matmulfree.glu import glu_backward, glu_forward, glu_init
from ..matmulfree.mlgru import mlgru_backward, mlgru_forward, mlgru_init
from ..matmulfree import model as mmf

_M = "scratch_transformers.matmulfree."


def _bitlinear_inputs(rng):
    return {"x": rng.standard_normal((2, 3, 6)), "w": rng.standard_normal((6, 4)),
            "norm_weight": 1 + 0.3 * rng.standard_normal(6)}


def _mlgru_op(variant):
    """MLGRU as a function of (x, h0, lower_bound?, params...) returning (o, h_T): the gradient of the final state
    and of the initial state are checked too. T = 7 steps, weights large enough that the gates vary."""
    def make(rng):
        d = 4
        params = {k: (v + 0.5 * rng.standard_normal(v.shape)) for k, v in mlgru_init(d, rng, variant).items()}
        inputs = {"x": rng.standard_normal((2, 7, d)), "h0": rng.standard_normal((2, d)), **params}
        if variant == "official":
            inputs["lower_bound"] = rng.uniform(0.1, 0.6, d)
        return inputs

    def forward(x, h0, lower_bound=None, **params):
        o, cache = mlgru_forward(x, params, h0=h0, variant=variant, lower_bound=lower_bound, quantize=False)
        return (o, cache.h[:, -1]), cache

    def backward(dys, cache):
        do, dh_last = dys
        dx, grads, dh0 = mlgru_backward(do, cache, dh_last=dh_last)
        return {"x": dx, "h0": dh0, **grads}

    return make, forward, backward


def _glu_inputs(rng):
    params = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in glu_init(4, 6, rng).items()}
    return {"x": rng.standard_normal((2, 3, 4)), **params}


def _glu_backward(dy, cache):
    dx, grads = glu_backward(dy, cache)
    return {"x": dx, **grads}


def _lm_op(variant):
    """The whole LM (float layers), 2 layers, T = 7: embedding, MLGRU and GLU blocks, head; the official variant
    with HGRN lower bounds (Gamma random so the softmax backward is exercised)."""
    config = mmf.MatMulFreeConfig(vocab_size=9, d_model=4, n_layers=2, glu_hidden=3, variant=variant,
                                  lower_bound=variant == "official", quantize=False)

    def make(rng):
        params = mmf.init_params(config, rng, std=0.5)
        if "lb_gamma" in params:
            params["lb_gamma"] = rng.standard_normal(params["lb_gamma"].shape)
        params["tokens"] = rng.integers(0, 9, size=(2, 7))
        return params

    def forward(tokens, **params):
        return mmf.forward(params, config, tokens)

    return make, forward


GRADCHECKS = [
    Op("matmulfree.bitlinear_float", lambda x, w, norm_weight: bitlinear_forward(x, w, norm_weight, quantize=False),
       bitlinear_backward, _bitlinear_inputs, covers=(_M + "bitlinear.bitlinear_backward",),
       wrt=("x", "w", "norm_weight")),
    Op("matmulfree.mlgru_paper", _mlgru_op("paper")[1], _mlgru_op("paper")[2], _mlgru_op("paper")[0],
       covers=(_M + "mlgru.mlgru_backward",), note="through time, T = 7, initial and final state"),
    Op("matmulfree.mlgru_official", _mlgru_op("official")[1], _mlgru_op("official")[2], _mlgru_op("official")[0],
       covers=(_M + "mlgru.mlgru_backward",),
       note="reference-code variant: RMSNorm-swish output gate, HGRN forget-gate lower bound"),
    Op("matmulfree.glu", lambda x, **p: glu_forward(x, p, quantize=False), _glu_backward,
       _glu_inputs, covers=(_M + "glu.glu_backward",)),
    Op("matmulfree.lm_paper", _lm_op("paper")[1], mmf.backward, _lm_op("paper")[0],
       covers=(_M + "model.backward",)),
    Op("matmulfree.lm_official_lower_bound", _lm_op("official")[1], mmf.backward, _lm_op("official")[0],
       covers=(_M + "model.backward",)),
]
