"""Registry entries of ``lora``: the adapted linear (lora/linear.py) with and without (explicit-mask) dropout."""

from __future__ import annotations

from ..core.registry import Op
from ..lora.linear import lora_linear_backward, lora_linear_forward


def _gc_inputs(rng, dropout: bool):
    x = rng.standard_normal((2, 3, 5))
    w0, b0 = rng.standard_normal((5, 4)), rng.standard_normal(4)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))   # b != 0 so dA is non-trivial
    inp = {"x": x, "a": a, "b": b, "w0": w0, "b0": b0}
    if dropout:
        inp["mask"] = rng.random(x.shape) >= 0.3
    return inp


def _gc_forward(x, a, b, w0, b0, mask=None):
    return lora_linear_forward(x, w0, b0, a, b, scale=0.7, dropout_p=0.3 if mask is not None else 0.0,
                               dropout_mask=mask)


GRADCHECKS = [
    Op(name="lora_linear", forward=_gc_forward, backward=lora_linear_backward,
       make_inputs=lambda rng: _gc_inputs(rng, False), wrt=("x", "a", "b"),
       covers=("scratch_transformers.lora.linear.lora_linear_backward",)),
    Op(name="lora_linear_dropout", forward=_gc_forward, backward=lora_linear_backward,
       make_inputs=lambda rng: _gc_inputs(rng, True), wrt=("x", "a", "b"),
       covers=("scratch_transformers.lora.linear.lora_linear_backward",)),
]
