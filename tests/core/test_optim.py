"""Optimizers against formulas written out independently here, clipping, schedule, state round trip."""

import math

import numpy as np
import pytest

from scratch_transformers.core.optim import SGD, AdamW, clip_grad_norm, warmup_cosine


def _params(rng, dtype=np.float64):
    return {"w": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(4).astype(dtype)}


def test_adamw_two_steps_match_hand_computed_update(rng):
    lr, b1, b2, eps, wd = 0.1, 0.8, 0.9, 1e-3, 0.5
    p0 = _params(rng)
    g1 = {k: rng.standard_normal(v.shape) for k, v in p0.items()}
    g2 = {k: rng.standard_normal(v.shape) for k, v in p0.items()}
    params = {k: v.copy() for k, v in p0.items()}
    opt = AdamW(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    opt.step(params, g1)
    opt.step(params, g2)
    for k in p0:
        decay = k == "w"                      # default: 2-d decayed, 1-d (bias) not
        th = p0[k]
        # step 1: m1 = (1-b1) g1, v1 = (1-b2) g1^2; m_hat = g1, v_hat = g1^2
        m1 = (1 - b1) * g1[k]
        v1 = (1 - b2) * g1[k] ** 2
        th = th - (lr * wd * th if decay else 0) - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
        # step 2
        m2 = b1 * m1 + (1 - b1) * g2[k]
        v2 = b2 * v1 + (1 - b2) * g2[k] ** 2
        th = th - (lr * wd * th if decay else 0) - lr * (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
        np.testing.assert_allclose(params[k], th, rtol=1e-13, atol=1e-14)


def test_adamw_first_step_is_sign_like_and_decay_is_decoupled(rng):
    # With eps -> 0 the first Adam step is lr * sign(g); decay adds exactly -lr*wd*theta.
    p = {"w": rng.standard_normal((5, 5))}
    g = {"w": rng.standard_normal((5, 5))}
    before = p["w"].copy()
    AdamW(lr=0.01, eps=1e-300, weight_decay=0.1).step(p, g)
    expected = before - 0.01 * 0.1 * before - 0.01 * np.sign(g["w"])
    np.testing.assert_allclose(p["w"], expected, rtol=0, atol=1e-15)


def test_adamw_no_decay_predicate_and_lr_override(rng):
    p = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    g = {"a": np.zeros((2, 2)), "b": np.zeros((2, 2))}     # zero grads: only the decay moves params
    AdamW(lr=0.5, weight_decay=0.1, no_decay=lambda name: name == "b").step(p, g, lr=0.2)
    np.testing.assert_allclose(p["a"], 1 - 0.2 * 0.1)
    np.testing.assert_allclose(p["b"], 1.0)


def test_only_keys_in_grads_are_updated(rng):
    p = _params(rng)
    frozen = p["b"].copy()
    for opt in (SGD(0.1, momentum=0.9), AdamW(0.1)):
        opt.step(p, {"w": np.ones((3, 4))})
        np.testing.assert_array_equal(p["b"], frozen)


def test_sgd_momentum_matches_formula(rng):
    lr, mu, wd = 0.05, 0.9, 0.01
    p = _params(rng)
    th = {k: v.copy() for k, v in p.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    opt = SGD(lr, momentum=mu, weight_decay=wd)
    for _ in range(4):
        g = {k: rng.standard_normal(v.shape) for k, v in p.items()}
        opt.step(p, g)
        for k in th:
            buf[k] = mu * buf[k] + (g[k] + wd * th[k])
            th[k] = th[k] - lr * buf[k]
    for k in th:
        np.testing.assert_allclose(p[k], th[k], rtol=1e-14, atol=1e-15)


def test_plain_sgd_step():
    p = {"x": np.array([1.0, -2.0])}
    SGD(0.5).step(p, {"x": np.array([2.0, 4.0])})
    np.testing.assert_array_equal(p["x"], [0.0, -4.0])


@pytest.mark.parametrize("make", [lambda: SGD(0.05, momentum=0.9), lambda: AdamW(0.05, weight_decay=0.0)])
def test_converges_on_ill_conditioned_quadratic(make, rng):
    # f(x) = 1/2 sum_i a_i (x_i - c_i)^2, minimum at c
    a = np.array([1.0, 3.0, 10.0])
    c = rng.standard_normal(3)
    p = {"x": np.zeros((1, 3))}
    opt = make()
    for _ in range(1500):
        opt.step(p, {"x": a * (p["x"] - c)})
    np.testing.assert_allclose(p["x"][0], c, atol=1e-6)


def test_float32_params_stay_float32(rng):
    for opt in (SGD(0.1, momentum=0.5, weight_decay=0.1), AdamW(0.1)):
        p = _params(rng, np.float32)
        g = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}
        opt.step(p, g)
        assert all(v.dtype == np.float32 for v in p.values())
        moments = [v for k, v in opt.state_dict().items() if "/" in k]     # per-parameter state
        assert moments and all(v.dtype == np.float32 for v in moments if v.ndim > 0)


def test_state_dict_round_trip_continues_identically(rng, tmp_path):
    p0 = _params(rng)
    grads = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(6)]
    for make in (lambda: SGD(0.1, momentum=0.9), lambda: AdamW(0.01, weight_decay=0.1)):
        pa = {k: v.copy() for k, v in p0.items()}
        a = make()
        for g in grads:
            a.step(pa, g)
        pb = {k: v.copy() for k, v in p0.items()}
        b = make()
        for g in grads[:3]:
            b.step(pb, g)
        state = b.state_dict()
        assert all(isinstance(v, np.ndarray) for v in state.values())
        np.savez(tmp_path / "s.npz", **state)
        loaded = dict(np.load(tmp_path / "s.npz", allow_pickle=False))
        c = make()
        c.load_state_dict(loaded)
        for g in grads[3:]:
            c.step(pb, g)
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k])


def test_load_state_dict_rejects_other_optimizer():
    with pytest.raises(ValueError, match="state: expected a AdamW state dict"):
        AdamW().load_state_dict(SGD(0.1).state_dict())


def test_clip_grad_norm_exact(rng):
    g = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal(7)}
    orig = {k: v.copy() for k, v in g.items()}
    want = math.sqrt(sum(float((v ** 2).sum()) for v in orig.values()))
    total = clip_grad_norm(g, max_norm=0.5)
    assert total == pytest.approx(want, rel=1e-14)
    new = math.sqrt(sum(float((v ** 2).sum()) for v in g.values()))
    assert new == pytest.approx(0.5, rel=1e-14)
    for k in g:                                  # direction unchanged
        np.testing.assert_allclose(g[k], orig[k] * 0.5 / want, rtol=1e-14)


def test_clip_grad_norm_leaves_small_grads_alone(rng):
    g = {"a": rng.standard_normal(3) * 1e-3}
    orig = g["a"].copy()
    clip_grad_norm(g, max_norm=1.0)
    np.testing.assert_array_equal(g["a"], orig)


def test_warmup_cosine_shape():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)      # halfway: cos(pi/2) = 0
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)
    lrs = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))                      # monotone decay


def test_warmup_cosine_no_warmup():
    assert warmup_cosine(0, base_lr=2.0, warmup_steps=0, total_steps=4) == pytest.approx(2.0)
    assert warmup_cosine(2, base_lr=2.0, warmup_steps=0, total_steps=4) == pytest.approx(1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: SGD(-1.0), "lr: expected"),
    (lambda: SGD(0.1, momentum=1.0), "momentum: expected"),
    (lambda: AdamW(betas=(0.9,)), "betas: expected"),
    (lambda: AdamW(betas=(0.9, 1.0)), r"betas\[1\]: expected"),
    (lambda: AdamW(eps=0.0), "eps: expected"),
    (lambda: AdamW(no_decay="bias"), "no_decay: expected"),
    (lambda: clip_grad_norm({"a": np.ones(2)}, 0.0), "max_norm: expected"),
    (lambda: clip_grad_norm([np.ones(2)], 1.0), "grads: expected"),
    (lambda: warmup_cosine(-1, base_lr=1.0, warmup_steps=0, total_steps=3), "step: expected"),
    (lambda: warmup_cosine(0, base_lr=1.0, warmup_steps=5, total_steps=3), "warmup_steps: expected"),
    (lambda: warmup_cosine(0, base_lr=1.0, warmup_steps=0, total_steps=3, min_lr=2.0), "min_lr: expected"),
])
def test_bad_options_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("grads, match", [
    ({"w": np.ones((2, 2))}, r"grads\['w'\]: expected shape"),
    ({"nope": np.ones(3)}, "grads: expected only keys present in params"),
    ({"w": np.ones((3, 4), dtype=np.int64)}, r"grads\['w'\]: expected dtype float32 or float64"),
])
def test_bad_grads_raise(grads, match, rng):
    for opt in (SGD(0.1), AdamW()):
        with pytest.raises(ValueError, match=match):
            opt.step(_params(rng), grads)
