"""Registry entries of the selective scan (``mamba.scan``): float64 gradient checks on tiny inputs.

Each entry is also an exercise: write ``selective_scan_backward`` yourself and run ``python -m
scratch_transformers check --only mamba.selective_scan``. The chunk of 2 (with L = 5) makes the backward
recompute three chunks, one of them ragged; the plain entry's chunk of 64 keeps the whole sequence in one.
"""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..mamba.scan import selective_scan_backward, selective_scan_forward

ALL_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")   # selective_scan_backward's order
CORE_INPUTS = ("u", "delta", "A", "B", "C")


def scan_inputs(rng, *, softplus, with_options):
    """Batch 2, L = 5, D = 3 channels, N = 2 states; Delta near 1 without softplus (a stable step)."""
    nb, L, Dd, N = 2, 5, 3, 2
    inputs = dict(
        u=rng.standard_normal((nb, L, Dd)),
        delta=rng.standard_normal((nb, L, Dd)) * 0.5 + (0.0 if softplus else 1.0),
        A=-np.exp(rng.standard_normal((Dd, N)) * 0.5),
        B=rng.standard_normal((nb, L, N)),
        C=rng.standard_normal((nb, L, N)),
    )
    if with_options:
        inputs.update(D=rng.standard_normal(Dd), z=rng.standard_normal((nb, L, Dd)),
                      delta_bias=rng.standard_normal(Dd) * 0.3, h0=rng.standard_normal((nb, Dd, N)))
    return inputs


def scan_with(softplus, chunk):
    def forward(**inputs):
        return selective_scan_forward(**inputs, delta_softplus=softplus, chunk=chunk)
    return forward


def scan_grads(names):
    """selective_scan_backward's tuple as a dict of the inputs that were given."""
    def backward(dy, cache):
        grads = selective_scan_backward(dy, cache)
        return {name: g for name, g in zip(ALL_INPUTS, grads) if name in names}
    return backward


GRADCHECKS = [
    Op(name="mamba.selective_scan(softplus, D, z, bias, h0)",
       forward=scan_with(True, 2), backward=scan_grads(ALL_INPUTS),
       make_inputs=lambda rng: scan_inputs(rng, softplus=True, with_options=True),
       covers=("scratch_transformers.mamba.scan.selective_scan_backward",), wrt=ALL_INPUTS, tol=1e-6),
    Op(name="mamba.selective_scan(plain)",
       forward=scan_with(False, 64), backward=scan_grads(CORE_INPUTS),
       make_inputs=lambda rng: scan_inputs(rng, softplus=False, with_options=False),
       covers=("scratch_transformers.mamba.scan.selective_scan_backward",), wrt=CORE_INPUTS, tol=1e-6),
]
