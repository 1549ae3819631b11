"""Registry entries of ``positional``: RoPE's forward/backward in both layouts, full and partial rotation."""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..positional.rope import LAYOUTS, rope_backward, rope_forward


def _gradcheck_inputs(rng, layout, rot_dim):
    return {"x": rng.standard_normal((2, 2, 5, 6)), "positions": np.array([0.0, 1.5, 3.0, 7.25, 40.0]),
            "layout": layout, "rot_dim": rot_dim, "offset": 3}


GRADCHECKS = [
    Op(name=f"rope[{layout},rot={rot}]",
       forward=lambda x, positions, layout, rot_dim, offset: rope_forward(
           x, positions, layout=layout, rot_dim=rot_dim, offset=offset, base=100.0),
       backward=lambda dy, cache: (rope_backward(dy, cache),),
       make_inputs=lambda rng, layout=layout, rot=rot: _gradcheck_inputs(rng, layout, rot),
       covers=("scratch_transformers.positional.rope.rope_backward",), wrt=("x",), tol=1e-8)
    for layout in LAYOUTS for rot in (6, 4)
]
