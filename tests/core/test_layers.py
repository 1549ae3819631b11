"""Layers: independent formulations, hard cases, properties, validation, dtypes.

Gradient checks of every backward run from the registry (tests/test_registry.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratch_transformers.core import layers as Lr


# ---------------------------------------------------------------- linear / embedding

def test_linear_matches_einsum_and_backward_matches_loops(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    y, cache = Lr.linear_forward(x, w, b)
    np.testing.assert_allclose(y, np.einsum("bti,io->bto", x, w) + b, rtol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = Lr.linear_backward(dy, cache)
    dw_loop = sum(np.outer(x[i, t], dy[i, t]) for i in range(2) for t in range(3))
    np.testing.assert_allclose(dw, dw_loop, rtol=1e-13)
    np.testing.assert_allclose(db, dy.sum((0, 1)), rtol=1e-13)
    np.testing.assert_allclose(dx, np.einsum("bto,io->bti", dy, w), rtol=1e-13)
    _, cache_nb = Lr.linear_forward(x, w)
    assert Lr.linear_backward(dy, cache_nb)[2] is None


def test_embedding_lookup_and_scatter_add(rng):
    table = rng.standard_normal((6, 3))
    ids = np.array([[0, 5, 5], [2, 5, 0]])
    y, cache = Lr.embedding_forward(ids, table)
    np.testing.assert_array_equal(y[0, 1], table[5])
    dy = rng.standard_normal(y.shape)
    dt = Lr.embedding_backward(dy, cache)
    want = np.zeros_like(table)
    for i in range(2):
        for t in range(3):
            want[ids[i, t]] += dy[i, t]
    np.testing.assert_allclose(dt, want, rtol=1e-14)
    assert np.all(dt[[1, 3, 4]] == 0)


def test_embedding_rejects_bad_ids():
    table = np.zeros((4, 2))
    with pytest.raises(ValueError, match="ids: expected values < 4"):
        Lr.embedding_forward(np.array([0, 4]), table)
    with pytest.raises(ValueError, match="ids: expected values >= 0"):
        Lr.embedding_forward(np.array([-1]), table)
    with pytest.raises(ValueError, match="ids: expected an integer array"):
        Lr.embedding_forward(np.array([0.0, 1.0]), table)


# ---------------------------------------------------------------- norms

def test_layer_norm_matches_direct_formula(rng):
    x = rng.standard_normal((3, 5)) * 3 + 2
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    y, _ = Lr.layer_norm_forward(x, w, b, eps=1e-5)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-14)


def test_rms_norm_matches_direct_formula(rng):
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal(4)
    y, _ = Lr.rms_norm_forward(x, w)
    np.testing.assert_allclose(y, x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w, rtol=1e-13)


rows = hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 8)),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(rows)
def test_layer_norm_output_is_standardised(x):
    spread = x.std(axis=-1)
    x = x[spread > 1e-2 * (1 + np.abs(x).max(axis=-1))]     # non-constant rows only
    if x.shape[0] == 0:
        return
    d = x.shape[-1]
    y, _ = Lr.layer_norm_forward(x, np.ones(d), np.zeros(d), eps=1e-12)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-7)


@settings(max_examples=40, deadline=None)
@given(rows, st.integers(0, 2 ** 32 - 1))
def test_layer_norm_backward_is_blind_to_shifts(x, seed):
    """y does not change when a constant is added to a row, so every row of dx sums to zero."""
    rng = np.random.default_rng(seed)
    d = x.shape[-1]
    _, cache = Lr.layer_norm_forward(x, rng.standard_normal(d), rng.standard_normal(d))
    dx, dw, db = Lr.layer_norm_backward(rng.standard_normal(x.shape), cache)
    assert dx.shape == x.shape and dw.shape == (d,) and db.shape == (d,)
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=1e-9 * (1 + np.abs(dx).max()))


@settings(max_examples=40, deadline=None)
@given(rows)
def test_rms_norm_output_has_unit_rms(x):
    x = x[np.sqrt((x ** 2).mean(-1)) > 1e-2]
    if x.shape[0] == 0:
        return
    y, _ = Lr.rms_norm_forward(x, np.ones(x.shape[-1]), eps=1e-12)
    np.testing.assert_allclose(np.sqrt((y ** 2).mean(-1)), 1.0, rtol=1e-7)


def test_norm_length_one_feature_is_finite():
    y, cache = Lr.layer_norm_forward(np.array([[3.0], [-1.0]]), np.ones(1), np.zeros(1))
    np.testing.assert_array_equal(y, 0.0)
    assert np.all(np.isfinite(Lr.layer_norm_backward(np.ones((2, 1)), cache)[0]))


# ---------------------------------------------------------------- dropout

def test_dropout_mask_scaling_and_identity(rng):
    x = np.ones((200, 50))
    y, cache = Lr.dropout_forward(x, 0.25, rng)
    kept = y != 0
    np.testing.assert_array_equal(kept, cache.mask)
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01                      # 10,000 draws: sd 0.004
    dy = np.arange(x.size, dtype=float).reshape(x.shape)
    np.testing.assert_allclose(Lr.dropout_backward(dy, cache), dy * cache.mask / 0.75, rtol=1e-15)
    for p, training in ((0.0, True), (0.5, False)):
        y2, c2 = Lr.dropout_forward(x, p, None, training=training)
        np.testing.assert_array_equal(y2, x)
        np.testing.assert_array_equal(Lr.dropout_backward(dy, c2), dy)


def test_dropout_same_seed_same_mask():
    x = np.ones((5, 5))
    a, _ = Lr.dropout_forward(x, 0.5, np.random.default_rng(3))
    b, _ = Lr.dropout_forward(x, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_dropout_validates_p_and_rng():
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p: expected"):
            Lr.dropout_forward(np.ones(3), p, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
        Lr.dropout_forward(np.ones(3), 0.5, 123)


# ---------------------------------------------------------------- cross-entropy

def test_cross_entropy_matches_minus_log_softmax_gathered(rng):
    logits = rng.standard_normal((2, 4, 7)) * 3
    targets = rng.integers(0, 7, size=(2, 4))
    targets[0, 1] = targets[1, 3] = -100
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = [-np.log(p[i, t, targets[i, t]]) for i in range(2) for t in range(4) if targets[i, t] != -100]
    loss_mean, cache = Lr.cross_entropy_forward(logits, targets)
    loss_sum, cache_sum = Lr.cross_entropy_forward(logits, targets, reduction="sum")
    assert isinstance(loss_mean, float)
    assert loss_mean == pytest.approx(np.mean(nll), rel=1e-13)
    assert loss_sum == pytest.approx(np.sum(nll), rel=1e-13)
    d = Lr.cross_entropy_backward(1.0, cache)
    onehot = np.eye(7)[np.where(targets == -100, 0, targets)]
    want = (p - onehot) * (targets != -100)[..., None] / len(nll)
    np.testing.assert_allclose(d, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(Lr.cross_entropy_backward(2.0, cache_sum), 2 * want * len(nll), rtol=1e-12, atol=1e-15)


def test_cross_entropy_custom_ignore_index():
    logits = np.zeros((3, 4))
    loss, _ = Lr.cross_entropy_forward(logits, np.array([1, 7, 2]), ignore_index=7)
    assert loss == pytest.approx(np.log(4), rel=1e-14)


def test_cross_entropy_hard_cases():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    loss, cache = Lr.cross_entropy_forward(logits, np.array([0, 0]), reduction="sum")
    assert loss == pytest.approx(1e4, rel=1e-12) and np.isfinite(loss)
    assert np.all(np.isfinite(Lr.cross_entropy_backward(1.0, cache)))
    loss0, cache0 = Lr.cross_entropy_forward(logits, np.array([-100, -100]))
    assert loss0 == 0.0
    np.testing.assert_array_equal(Lr.cross_entropy_backward(1.0, cache0), 0.0)
    loss1, _ = Lr.cross_entropy_forward(np.array([[5.0]]), np.array([0]))   # V = 1
    assert loss1 == 0.0


def test_cross_entropy_validation():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="targets: expected values in \\[0, 3\\)"):
        Lr.cross_entropy_forward(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets: expected shape"):
        Lr.cross_entropy_forward(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="targets: expected an integer array"):
        Lr.cross_entropy_forward(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        Lr.cross_entropy_forward(logits, np.array([0, 1]), reduction="none")
    _, cache = Lr.cross_entropy_forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="dloss"):
        Lr.cross_entropy_backward(np.ones(2), cache)


# ---------------------------------------------------------------- causal conv1d

def _conv_loops(x, w, b):
    B, L, C = x.shape
    K = w.shape[1]
    y = np.zeros_like(x)
    for bi in range(B):
        for t in range(L):
            for c in range(C):
                acc = 0.0 if b is None else b[c]
                for k in range(K):
                    s = t - (K - 1) + k
                    if s >= 0:
                        acc += w[c, k] * x[bi, s, c]
                y[bi, t, c] = acc
    return y


@pytest.mark.parametrize("L,K", [(7, 4), (1, 3), (3, 5), (5, 1)])
def test_conv1d_matches_explicit_loops_and_np_convolve(rng, L, K):
    x, w, b = rng.standard_normal((2, L, 3)), rng.standard_normal((3, K)), rng.standard_normal(3)
    y, _ = Lr.causal_conv1d_forward(x, w, b)
    np.testing.assert_allclose(y, _conv_loops(x, w, b), rtol=1e-13, atol=1e-14)
    for c in range(3):  # np.convolve flips its kernel: causal tap k = K-1 is the current step
        full = np.convolve(x[0, :, c], w[c, ::-1])[:L] + b[c]
        np.testing.assert_allclose(y[0, :, c], full, rtol=1e-13, atol=1e-14)


def test_conv1d_is_causal(rng):
    x, w = rng.standard_normal((1, 8, 2)), rng.standard_normal((2, 3))
    y, _ = Lr.causal_conv1d_forward(x, w)
    x2 = x.copy()
    x2[0, 5] += 10.0
    y2, _ = Lr.causal_conv1d_forward(x2, w)
    np.testing.assert_array_equal(y[0, :5], y2[0, :5])
    assert not np.allclose(y[0, 5:], y2[0, 5:])


def test_conv1d_validation():
    with pytest.raises(ValueError, match="x: expected 3-d"):
        Lr.causal_conv1d_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="w: expected shape"):
        Lr.causal_conv1d_forward(np.zeros((1, 2, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="w: expected dtype float64"):
        Lr.causal_conv1d_forward(np.zeros((1, 2, 3)), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="b: expected shape"):
        Lr.causal_conv1d_forward(np.zeros((1, 2, 3)), np.zeros((3, 2)), np.zeros(2))


# ---------------------------------------------------------------- dtypes and validation

def _all_layers(rng, dtype):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    w = rng.standard_normal((4, 4)).astype(dtype)
    v = rng.standard_normal(4).astype(dtype)
    return {
        "linear": (lambda: Lr.linear_forward(x, w, v), Lr.linear_backward),
        "layer_norm": (lambda: Lr.layer_norm_forward(x, v, v), Lr.layer_norm_backward),
        "rms_norm": (lambda: Lr.rms_norm_forward(x, v), Lr.rms_norm_backward),
        "dropout": (lambda: Lr.dropout_forward(x, 0.5, np.random.default_rng(0)), Lr.dropout_backward),
        "conv1d": (lambda: Lr.causal_conv1d_forward(x, w, v), Lr.causal_conv1d_backward),
        "embedding": (lambda: Lr.embedding_forward(np.array([1, 2]), w), Lr.embedding_backward),
    }


@pytest.mark.parametrize("name", ["linear", "layer_norm", "rms_norm", "dropout", "conv1d", "embedding"])
def test_float32_in_float32_out(rng, name):
    fwd, bwd = _all_layers(rng, np.float32)[name]
    y, cache = fwd()
    assert y.dtype == np.float32
    grads = bwd(np.ones_like(y), cache)
    for g in (grads if isinstance(grads, tuple) else (grads,)):
        assert g is None or g.dtype == np.float32
    fwd64, _ = _all_layers(np.random.default_rng(12345), np.float64)[name]
    np.testing.assert_allclose(y, fwd64()[0], rtol=1e-4, atol=1e-5)


def test_cross_entropy_float32(rng):
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    loss, cache = Lr.cross_entropy_forward(logits, np.array([0, 1, 2]))
    loss64, _ = Lr.cross_entropy_forward(logits.astype(np.float64), np.array([0, 1, 2]))
    assert loss == pytest.approx(loss64, rel=1e-5)
    assert Lr.cross_entropy_backward(1.0, cache).dtype == np.float32


def test_mixed_dtypes_and_shapes_rejected():
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match="w: expected dtype float64"):
        Lr.linear_forward(x, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="w: expected shape"):
        Lr.linear_forward(x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="weight: expected shape"):
        Lr.layer_norm_forward(x, np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match="bias: expected shape"):
        Lr.layer_norm_forward(x, np.ones(4), np.zeros(3))
    with pytest.raises(ValueError, match="eps: expected"):
        Lr.rms_norm_forward(x, np.ones(4), eps=0.0)
    with pytest.raises(ValueError, match="x: expected dtype float32 or float64"):
        Lr.rms_norm_forward(np.zeros((2, 4), int), np.ones(4))
    _, cache = Lr.linear_forward(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dy: expected shape"):
        Lr.linear_backward(np.zeros((2, 4)), cache)


def test_backwards_are_pure(rng):
    for name, (fwd, bwd) in _all_layers(rng, np.float64).items():
        y, cache = fwd()
        dy = rng.standard_normal(y.shape)
        a, b = bwd(dy, cache), bwd(dy, cache)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(u, v, err_msg=name)
