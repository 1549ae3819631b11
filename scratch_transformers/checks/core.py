"""Registry entries of ``core``: the element-wise functions (core/functional.py) and the shared layers
(core/layers.py), each a float64 gradient check with small sample inputs."""

from __future__ import annotations

import numpy as np

from ..core.functional import (gelu_backward, gelu_forward, log_softmax_backward, log_softmax_forward,
                               sigmoid_backward, sigmoid_forward, silu_backward, silu_forward, softmax_backward,
                               softmax_forward, softplus_backward, softplus_forward)
from ..core.layers import (causal_conv1d_backward, causal_conv1d_forward, cross_entropy_backward,
                           cross_entropy_forward, dropout_backward, dropout_forward, embedding_backward,
                           embedding_forward, layer_norm_backward, layer_norm_forward, linear_backward,
                           linear_forward, project_backward, project_forward, rms_norm_backward, rms_norm_forward)
from ..core.registry import Op


_F = "scratch_transformers.core.functional."


def _wide(rng, shape=(3, 5)):
    """Values spread over both tails so the stable branches are exercised too."""
    return rng.standard_normal(shape) * 3.0


def _masked(rng):
    """Rows with -inf (masked) entries, and one row that is entirely masked (softmax 0, gradient 0)."""
    x = rng.standard_normal((3, 4))
    x[0, 1] = x[1, 0] = x[1, 3] = -np.inf
    x[2, :] = -np.inf
    return x


FUNCTIONAL_CHECKS = [
    Op("core.softmax", softmax_forward, softmax_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "softmax_backward",), wrt=("x",)),
    Op("core.softmax_axis0", lambda x: softmax_forward(x, axis=0), softmax_backward,
       lambda rng: {"x": rng.standard_normal((4, 2, 3))}, covers=(_F + "softmax_backward",), wrt=("x",)),
    Op("core.softmax_masked", softmax_forward, softmax_backward, lambda rng: {"x": _masked(rng)},
       covers=(_F + "softmax_backward",), wrt=("x",), note="-inf entries and one fully masked row"),
    Op("core.log_softmax", log_softmax_forward, log_softmax_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "log_softmax_backward",), wrt=("x",)),
    Op("core.sigmoid", sigmoid_forward, sigmoid_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "sigmoid_backward",), wrt=("x",)),
    Op("core.silu", silu_forward, silu_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "silu_backward",), wrt=("x",)),
    Op("core.gelu_tanh", lambda x: gelu_forward(x, "tanh"), gelu_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "gelu_backward",), wrt=("x",)),
    Op("core.gelu_erf", lambda x: gelu_forward(x, "erf"), gelu_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "gelu_backward",), wrt=("x",)),
    Op("core.softplus", softplus_forward, softplus_backward,
       lambda rng: {"x": _wide(rng)}, covers=(_F + "softplus_backward",), wrt=("x",)),
]


_L = "scratch_transformers.core.layers."


def _ce(reduction):
    """cross_entropy_forward returning the loss as a 0-d array (the gradient checker wants arrays)."""
    def forward(logits, targets):
        loss, cache = cross_entropy_forward(logits, targets, reduction=reduction)
        return np.asarray(loss), cache
    return forward


def _two(backward):
    """Drop the trailing None (absent bias) so the tuple matches ``wrt``."""
    return lambda dy, cache: backward(dy, cache)[:2]


LAYER_CHECKS = [
    Op("core.linear", linear_forward, linear_backward,
       lambda rng: {"x": rng.standard_normal((2, 3, 4)), "w": rng.standard_normal((4, 5)),
                    "b": rng.standard_normal(5)},
       covers=(_L + "linear_backward",), wrt=("x", "w", "b")),
    Op("core.linear_nobias", linear_forward, _two(linear_backward),
       lambda rng: {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 2))},
       covers=(_L + "linear_backward",), wrt=("x", "w")),
    Op("core.embedding", embedding_forward, embedding_backward,
       lambda rng: {"ids": np.array([[0, 3, 3], [1, 0, 3]]), "table": rng.standard_normal((5, 4))},
       covers=(_L + "embedding_backward",), wrt=("table",)),
    Op("core.layer_norm", layer_norm_forward, layer_norm_backward,
       lambda rng: {"x": rng.standard_normal((2, 3, 6)) * 2 + 1, "weight": rng.standard_normal(6),
                    "bias": rng.standard_normal(6)},
       covers=(_L + "layer_norm_backward",), wrt=("x", "weight", "bias")),
    Op("core.rms_norm", rms_norm_forward, rms_norm_backward,
       lambda rng: {"x": rng.standard_normal((2, 3, 6)), "weight": rng.standard_normal(6)},
       covers=(_L + "rms_norm_backward",), wrt=("x", "weight")),
    Op("core.dropout", lambda x, seed: dropout_forward(x, 0.3, np.random.default_rng(seed)), dropout_backward,
       lambda rng: {"x": rng.standard_normal((4, 5)), "seed": 7},
       covers=(_L + "dropout_backward",), wrt=("x",)),
    Op("core.cross_entropy_mean", _ce("mean"), cross_entropy_backward,
       lambda rng: {"logits": rng.standard_normal((2, 3, 5)) * 2,
                    "targets": np.array([[1, -100, 4], [0, 2, -100]])},
       covers=(_L + "cross_entropy_backward",), wrt=("logits",)),
    Op("core.cross_entropy_sum", _ce("sum"), cross_entropy_backward,
       lambda rng: {"logits": rng.standard_normal((4, 6)), "targets": np.array([5, 0, 0, 3])},
       covers=(_L + "cross_entropy_backward",), wrt=("logits",)),
    Op("core.causal_conv1d", causal_conv1d_forward, causal_conv1d_backward,
       lambda rng: {"x": rng.standard_normal((2, 5, 3)), "w": rng.standard_normal((3, 4)),
                    "b": rng.standard_normal(3)},
       covers=(_L + "causal_conv1d_backward",), wrt=("x", "w", "b")),
    Op("core.project", lambda x, w, b: project_forward(x, {"w": w, "b": b}, "w", "b"),
       lambda dy, cache: {"x": project_backward(dy, cache)[0], **project_backward(dy, cache)[1]},
       lambda rng: {"x": rng.standard_normal((2, 3, 4)), "w": rng.standard_normal((4, 5)),
                    "b": rng.standard_normal(5)},
       covers=(_L + "project_backward",), wrt=("x", "w", "b")),
    Op("core.causal_conv1d_nobias", causal_conv1d_forward, _two(causal_conv1d_backward),
       lambda rng: {"x": rng.standard_normal((1, 3, 2)), "w": rng.standard_normal((2, 5))},
       covers=(_L + "causal_conv1d_backward",), wrt=("x", "w")),
]


GRADCHECKS = FUNCTIONAL_CHECKS + LAYER_CHECKS
