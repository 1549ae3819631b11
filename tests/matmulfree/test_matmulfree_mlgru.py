"""MLGRU (arXiv 2406.02528 §3.3): an independent per-step reference, the closed (parallel) form of the
recurrence, decoding steps equal to the full forward, causality, the non-finite policy and bad inputs.
Gradient checks through time (T = 7, both variants) are registry entries (checks/matmulfree.py)."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.matmulfree.mlgru import mlgru_backward, mlgru_forward, mlgru_init, mlgru_step


def sig(z):
    return 1 / (1 + np.exp(-z))


def rmsn(z, w, eps=1e-6):
    return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + eps) * w


def make(rng, variant="paper", B=2, T=9, d=6, dtype=np.float64):
    p = {k: (v + 0.4 * rng.standard_normal(v.shape)).astype(dtype) for k, v in mlgru_init(d, rng, variant).items()}
    return rng.standard_normal((B, T, d)).astype(dtype), p


def reference(x, p, variant, h0=None, lb=None):
    """The equations of §3.3 (paper) / HGRNBitAttention (official) one step at a time, float layers."""
    B, T, d = x.shape
    h = np.zeros((B, d)) if h0 is None else h0
    out = []
    for t in range(T):
        lin = {k: rmsn(x[:, t], p[f"n_{k}"]) @ p[f"w_{k}"] for k in "fcg"}
        if variant == "paper":
            f = sig(lin["f"] + p["b_f"])
            c = (lin["c"] + p["b_c"]) * sig(lin["c"] + p["b_c"])
            h = f * h + (1 - f) * c
            op = sig(lin["g"] + p["b_g"]) * h
            out.append(rmsn(op, p["n_o"]) @ p["w_o"] + p["b_o"])
        else:
            f = sig(lin["f"]) if lb is None else lb + (1 - lb) * sig(lin["f"])
            h = f * h + lin["c"] * sig(lin["c"]) * (1 - f)
            op = rmsn(lin["g"], p["gate_norm"]) * h * sig(h)
            out.append(rmsn(op, p["n_o"]) @ p["w_o"])
    return np.stack(out, axis=1), h


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_matches_per_step_reference(rng, variant):
    x, p = make(rng, variant)
    h0 = rng.standard_normal((2, 6))
    lb = rng.uniform(0, 0.9, 6) if variant == "official" else None
    o, cache = mlgru_forward(x, p, h0=h0, variant=variant, lower_bound=lb, quantize=False)
    ref_o, ref_h = reference(x, p, variant, h0, lb)
    np.testing.assert_allclose(o, ref_o, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.h[:, -1], ref_h, rtol=1e-12, atol=1e-12)
    if lb is not None:
        assert np.all(cache.f >= lb) and np.all(cache.f < 1)          # HGRN: f in [l, 1)


def test_recurrence_equals_closed_form(rng):
    # h_t = sum_{s <= t} (prod_{r = s+1}^{t} f_r) (1 - f_s) c_s  (+ prod_{r <= t} f_r h_0): the parallel form
    x, p = make(rng, T=8)
    h0 = rng.standard_normal((2, 6))
    _, cache = mlgru_forward(x, p, h0=h0, quantize=False)
    f, c = cache.f, cache.c_cache.x * cache.c_cache.s
    for t in range(8):
        want = np.prod(f[:, :t + 1], axis=1) * h0
        for s in range(t + 1):
            want = want + np.prod(f[:, s + 1:t + 1], axis=1) * (1 - f[:, s]) * c[:, s]
        np.testing.assert_allclose(cache.h[:, t], want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("quantize", [True, False])
def test_step_equals_full_forward(rng, variant, quantize):
    x, p = make(rng, variant, T=11)
    lb = np.linspace(0.1, 0.7, 6) if variant == "official" else None
    o, cache = mlgru_forward(x, p, variant=variant, lower_bound=lb, quantize=quantize)
    h = np.zeros((2, 6))
    for t in range(11):
        o_t, h = mlgru_step(x[:, t], h, p, variant=variant, lower_bound=lb, quantize=quantize)
        np.testing.assert_allclose(o_t, o[:, t], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(h, cache.h[:, t], rtol=1e-12, atol=1e-13)


def test_causal_and_quantised_output_differs_from_float(rng):
    x, p = make(rng)
    o, _ = mlgru_forward(x, p)
    x2 = x.copy()
    x2[:, 5] += 1.0
    o2, _ = mlgru_forward(x2, p)
    np.testing.assert_array_equal(o2[:, :5], o[:, :5])              # earlier outputs bit-identical
    assert not np.allclose(o2[:, 5:], o[:, 5:])
    assert not np.allclose(mlgru_forward(x, p, quantize=False)[0], o)


def test_float32_and_backward_is_pure(rng):
    x, p = make(rng, dtype=np.float32)
    o, cache = mlgru_forward(x, p)
    assert o.dtype == np.float32
    do = rng.standard_normal(o.shape).astype(np.float32)
    dx1, g1, _ = mlgru_backward(do, cache)
    dx2, g2, _ = mlgru_backward(do, cache)
    assert dx1.dtype == np.float32 and all(v.dtype == np.float32 for v in g1.values())
    np.testing.assert_array_equal(dx1, dx2)
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)


def test_long_sequence_gradcheck_float(rng):
    # T = 16 with forget gates near 1 (long memory): the reverse recurrence carries gradient far back
    x, p = make(rng, T=16, d=3, B=1)
    p["b_f"] = p["b_f"] + 3.0
    res = gradcheck(lambda x, b_f: mlgru_forward(x, {**p, "b_f": b_f}, quantize=False),
                    lambda do, c: (lambda r: (r[0], r[1]["b_f"]))(mlgru_backward(do, c)),
                    {"x": x, "b_f": p["b_f"]}, wrt=("x", "b_f"))
    res.assert_ok()


def test_non_finite_policy(rng):
    x, p = make(rng)
    x[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="^x: expected finite"):
        mlgru_forward(x, p)                                          # int8 codes cannot carry NaN
    o, _ = mlgru_forward(x, p, quantize=False)
    assert np.all(np.isfinite(o[0])) and np.all(np.isfinite(o[1, :3]))
    assert np.all(np.isnan(o[1, 3:]))                                # propagates forward in time only


def test_bad_inputs(rng):
    x, p = make(rng)
    with pytest.raises(ValueError, match="^x: expected 3-d"):
        mlgru_forward(x[0], p)
    with pytest.raises(ValueError, match="^params: expected a key 'b_f'"):
        mlgru_forward(x, {k: v for k, v in p.items() if k != "b_f"})
    with pytest.raises(ValueError, match=r"^params\['w_c'\]: expected shape"):
        mlgru_forward(x, {**p, "w_c": p["w_c"][:, :3]})
    with pytest.raises(ValueError, match="^lower_bound: expected None for the paper"):
        mlgru_forward(x, p, lower_bound=np.zeros(6))
    _, po = make(rng, "official")
    with pytest.raises(ValueError, match=r"^lower_bound: expected values in \[0, 1\)"):
        mlgru_forward(x, po, variant="official", lower_bound=np.ones(6))
    with pytest.raises(ValueError, match="^variant: expected one of"):
        mlgru_forward(x, p, variant="hgrn")
    with pytest.raises(ValueError, match="^h0: expected shape"):
        mlgru_forward(x, p, h0=np.zeros((2, 5)))
    o, cache = mlgru_forward(x, p)
    with pytest.raises(ValueError, match="^do: expected shape"):
        mlgru_backward(o[:, 1:], cache)
    with pytest.raises(ValueError, match="^dh_last: expected shape"):
        mlgru_backward(o, cache, dh_last=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="^cache: expected an MLGRUCache"):
        mlgru_backward(o, tuple(cache))
    with pytest.raises(ValueError, match="^cache: expected consistent shapes"):
        mlgru_backward(o, cache._replace(h0=np.zeros((2, 5))))
    with pytest.raises(ValueError, match="^h_prev: expected shape"):
        mlgru_step(x[:, 0], np.zeros((2, 5)), p)
