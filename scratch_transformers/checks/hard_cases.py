"""Hard cases for registry entries whose modules predate ``Op.hard_inputs``: odd sizes, length 1, masked rows.

``exercise check`` runs, after an entry's sample inputs, its ``make_inputs`` with other seeds, the entry's own
``Op.hard_inputs`` and the makers listed here under the entry's name: ``{op name: ((label, maker(rng)), ...)}``.
A maker returns the same keys as the entry's ``make_inputs`` with other shapes or masks.
"""

from __future__ import annotations

import numpy as np


def _linear(n, t, d_in, d_out):
    return lambda rng: {"x": rng.standard_normal((n, t, d_in)), "w": rng.standard_normal((d_in, d_out)),
                        "b": rng.standard_normal(d_out)}


def _norm(shape, bias=True):
    def make(rng):
        out = {"x": rng.standard_normal(shape) * 2 + 1, "weight": rng.standard_normal(shape[-1])}
        if bias:
            out["bias"] = rng.standard_normal(shape[-1])
        return out
    return make


def _conv(n, t, d, k):
    return lambda rng: {"x": rng.standard_normal((n, t, d)), "w": rng.standard_normal((d, k)),
                        "b": rng.standard_normal(d)}


def _softmax_masked_rows(rng):
    x = rng.standard_normal((4, 5)) * 3
    x[0, :] = -np.inf                      # a fully masked row: softmax 0, gradient 0
    x[2, 1:] = -np.inf                     # one entry left: softmax 1, gradient 0
    x[3, ::2] = -np.inf
    return {"x": x}


def _attention(b, h, n_q, n_k, d, pad_rows=()):
    def make(rng):
        pad = np.zeros((b, n_k), dtype=bool)
        for row, count in pad_rows:
            pad[row, :count] = True
        return dict(q=rng.standard_normal((b, h, n_q, d)), k=rng.standard_normal((b, h, n_k, d)),
                    v=rng.standard_normal((b, h, n_k, 3)), bias=rng.standard_normal((h, 1, n_k)),
                    key_padding_mask=pad, dropout_mask=rng.random((b, h, n_q, n_k)) > 0.3)
    return make


def _flash(b, h, n_q, n_k, d, pad_rows=()):
    def make(rng):
        out = _attention(b, h, n_q, n_k, d, pad_rows)(rng)
        del out["dropout_mask"]
        return out
    return make


def _scan(nb, L, Dd, N, softplus, with_options):
    """The scan entries' keys (checks/mamba_scan.py) at other sizes."""
    def make(rng):
        out = dict(u=rng.standard_normal((nb, L, Dd)),
                   delta=rng.standard_normal((nb, L, Dd)) * 0.5 + (0.0 if softplus else 1.0),
                   A=-np.exp(rng.standard_normal((Dd, N)) * 0.5), B=rng.standard_normal((nb, L, N)),
                   C=rng.standard_normal((nb, L, N)))
        if with_options:
            out.update(D=rng.standard_normal(Dd), z=rng.standard_normal((nb, L, Dd)),
                       delta_bias=rng.standard_normal(Dd) * 0.3, h0=rng.standard_normal((nb, Dd, N)))
        return out
    return make


HARD_INPUTS = {
    "mamba.selective_scan(softplus, D, z, bias, h0)": (("odd sizes", _scan(1, 7, 5, 3, True, True)),
                                                       ("length 1", _scan(1, 1, 2, 3, True, True))),
    "mamba.selective_scan(plain)": (("odd sizes", _scan(1, 7, 5, 3, False, False)),
                                    ("length 1", _scan(1, 1, 2, 3, False, False))),
    "core.linear": (("odd sizes", _linear(1, 7, 3, 1)), ("length 1", _linear(1, 1, 5, 2))),
    "core.layer_norm": (("odd sizes", _norm((3, 7, 5))), ("length 1", _norm((1, 1, 3)))),
    "core.rms_norm": (("odd sizes", _norm((3, 7, 5), bias=False)), ("length 1", _norm((1, 1, 3), bias=False))),
    "core.causal_conv1d": (("odd sizes", _conv(3, 7, 5, 3)), ("length 1", _conv(1, 1, 3, 4))),
    "core.softmax": (("length 1 rows", lambda rng: {"x": rng.standard_normal((3, 1))}),),
    "core.softmax_masked": (("masked rows", _softmax_masked_rows),),
    "core.log_softmax": (("odd sizes", lambda rng: {"x": rng.standard_normal((5, 7)) * 3}),),
    "core.cross_entropy_mean": (("masked rows", lambda rng: {"logits": rng.standard_normal((2, 4, 5)),
                                                             "targets": np.array([[-100, 2, -100, -100],
                                                                                  [-100, -100, 4, 0]])}),),
    "attention_reference": (("odd sizes", _attention(1, 1, 5, 7, 3)), ("length 1", _attention(1, 2, 1, 1, 2)),
                            ("masked rows", _attention(2, 1, 3, 5, 2, pad_rows=((0, 4), (1, 1))))),
    "flash_attention": (("odd sizes", _flash(1, 1, 5, 7, 3)), ("length 1", _flash(1, 2, 1, 1, 2)),
                        ("masked rows", _flash(2, 1, 3, 5, 2, pad_rows=((0, 4), (1, 1))))),
}
