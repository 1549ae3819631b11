"""Registry entries of ``mamba``: the Mamba block (mamba/block.py) in its selective and LTI forms and the
whole tiny language model (mamba/model.py). The selective scan's entries are in the checks module named
after it."""

from __future__ import annotations

from ..core.registry import Op
from ..mamba.block import init_mamba_block, mamba_block_backward, mamba_block_forward
from ..mamba.model import MambaConfig, backward, forward, init_params


def _gc_block(selective):
    def make(rng):
        params = init_mamba_block(rng, 5, d_state=3, expand=2, d_conv=3, dt_rank=2, selective=selective,
                                  prefix="m")
        # move the init off its special values (A_log = log n, D = 1) so every gradient path is exercised
        params = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in params.items()}
        params["m.dt_proj.b"] = params["m.dt_proj.b"] + 2.0        # dt ~ O(1): gradients of A not tiny
        return {"a": rng.standard_normal((2, 6, 5)), **params}

    def fwd(a, **params):
        return mamba_block_forward(a, params, prefix="m")

    def bwd(dy, cache):
        da, grads = mamba_block_backward(dy, cache)
        return {"a": da, **grads}

    return make, fwd, bwd


_sel = _gc_block(True)
_lti = _gc_block(False)
BLOCK_CHECKS = [
    Op(name="mamba.block(selective)", forward=_sel[1], backward=_sel[2], make_inputs=_sel[0],
       covers=("scratch_transformers.mamba.block.mamba_block_backward",), tol=1e-6),
    Op(name="mamba.block(LTI)", forward=_lti[1], backward=_lti[2], make_inputs=_lti[0],
       covers=("scratch_transformers.mamba.block.mamba_block_backward",), tol=1e-6),
]


_GC_CONFIG = MambaConfig(vocab_size=7, d_model=4, n_layers=2, d_state=3, expand=2, d_conv=3, dt_rank=2)


def _gc_make(rng):
    params = init_params(_GC_CONFIG, rng)
    params = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in params.items()}
    for i in range(_GC_CONFIG.n_layers):      # dt ~ O(1) so the A_log gradients are not at round-off level
        params[f"blocks.{i}.mixer.dt_proj.b"] += 2.0
    return {"tokens": rng.integers(0, 7, size=(2, 5)), **params}


def _gc_forward(tokens, **params):
    return forward(params, _GC_CONFIG, tokens)


MODEL_CHECKS = [
    Op(name="mamba.lm(tiny)", forward=_gc_forward, backward=lambda dy, cache: backward(dy, cache),
       make_inputs=_gc_make, covers=(), tol=1e-6, note="whole tiny Mamba LM (2 blocks, tied head)"),
]


GRADCHECKS = BLOCK_CHECKS + MODEL_CHECKS
