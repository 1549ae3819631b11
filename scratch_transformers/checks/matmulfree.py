"""Gradient checks of the MatMul-free LM's forward/backward pairs (arXiv 2406.02528).

The quantised layers are piecewise constant in their inputs (their true gradient is zero almost everywhere;
training uses the straight-through estimator), so central differences check the float form of each op
(``quantize=False``), whose backward is the same code path with x_q = x_bar and W_q = W; the STE formula of the
quantised form is tested exactly in tests/matmulfree/test_matmulfree_bitlinear.py.
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..matmulfree.bitlinear import bitlinear_backward, bitlinear_forward

_M = "scratch_transformers.matmulfree."


def _bitlinear_inputs(rng):
    return {"x": rng.standard_normal((2, 3, 6)), "w": rng.standard_normal((6, 4)),
            "norm_weight": 1 + 0.3 * rng.standard_normal(6)}


GRADCHECKS = [
    Op("matmulfree.bitlinear_float", lambda x, w, norm_weight: bitlinear_forward(x, w, norm_weight, quantize=False),
       bitlinear_backward, _bitlinear_inputs, covers=(_M + "bitlinear.bitlinear_backward",),
       wrt=("x", "w", "norm_weight")),
]
