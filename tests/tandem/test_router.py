"""Adaptive block length (Tandem arXiv 2402.08644 §3.1): the router MLP, its loss, and decoding with an early
stop, which leaves greedy outputs identical and the sampled law unchanged."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.models import transformer as tf
from scratch_transformers.models.speed import TransformerDecoder, speed_decode
from scratch_transformers.tandem import router
from scratch_transformers.tandem.speculative import speculative_decode

from test_speculative import ALPHA, exact_target_law, pearson, tiny_models
from test_speed import models


def test_features_entropy_topk_embeddings(rng):
    logits = np.log(np.array([[0.1, 0.6, 0.3, 0.0 + 1e-300]]))
    emb = rng.standard_normal((4, 3))
    f = router.router_features(logits, emb, k=2)
    p = np.array([0.1, 0.6, 0.3, 1e-300])
    assert f.shape == (1, 1 + 2 + 6)
    assert abs(f[0, 0] + np.sum(p[:3] * np.log(p[:3]))) < 1e-12
    np.testing.assert_allclose(f[0, 1:3], [0.6, 0.3], atol=1e-12)
    np.testing.assert_array_equal(f[0, 3:], np.concatenate([emb[1], emb[2]]))
    with pytest.raises(ValueError):
        router.router_features(np.array([[np.nan, 0.0, 0.0, 0.0]]), emb)


def test_router_loss_gradient_and_training_fits_a_target(rng):
    params = router.init_router(5, 8, rng)
    x = rng.standard_normal((64, 5))
    tv = 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))                       # a learnable soft target
    loss, grads = router.router_loss_and_grads(params, x, tv)
    names = list(params)
    res = gradcheck(lambda **p: (router.router_loss_and_grads(p, x, tv)[0], None),
                    lambda dy, _: {n: dy * grads[n] for n in names}, dict(params), rng=rng)
    assert res.passed, str(res)
    for _ in range(300):
        _, g = router.router_loss_and_grads(params, x, tv)
        for n in names:
            params[n] -= 0.5 * g[n]
    assert router.router_loss_and_grads(params, x, tv)[0] < loss - 0.02
    with pytest.raises(ValueError):
        router.router_loss_and_grads(params, x, tv + 1.5)


def test_adaptive_speed_is_still_m_l_greedy_and_stops_early():
    cl, pl, ct, pt = models(0)
    rng = np.random.default_rng(2)
    stop = router.make_stop_rule(router.init_router(1 + 4 + 4 * ct.d_model, 8, rng), pt["tok_emb"], tau=0.5)
    calls_adaptive = calls_fixed = 0
    for prompt in rng.integers(0, 11, size=(8, 4)):
        want = tf.generate(pl, cl, prompt[None], 40, greedy=True)[0]
        got, st = speed_decode(pl, cl, pt, ct, prompt, 40, gamma=8, greedy=True, stop_drafting=stop)
        np.testing.assert_array_equal(got, want)
        calls_adaptive += st.draft_calls
        _, st = speed_decode(pl, cl, pt, ct, prompt, 40, gamma=8, greedy=True)
        calls_fixed += st.draft_calls
    assert calls_adaptive != calls_fixed                 # the rule changed the block lengths
    ct, pt, cd, pd = tiny_models(1)
    always = speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pd, cd), np.array([1, 2]), 10, gamma=5,
                                greedy=True, stop_drafting=lambda z: True)[1]
    assert always.target_calls - 1 <= always.drafted <= always.target_calls   # 1 draft per call (last: none)
    with pytest.raises(ValueError):
        speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pd, cd), np.array([1]), 3, gamma=2,
                           greedy=True, stop_drafting=3)


def test_adaptive_sampling_keeps_the_target_law():
    V, n = 4, 3
    ct, pt, cd, pd = tiny_models(3, V=V)
    for params in (pt, pd):
        params["lm_head"] /= 20
    prompt = np.array([0, 2])
    want = exact_target_law(pt, ct, prompt, n, V)
    rng = np.random.default_rng(6)
    stop = lambda z: bool(np.max(z) - np.min(z) < 0.05)            # noqa: E731  depends on the drafter's logits
    counts = np.zeros(V ** n, dtype=np.int64)
    for _ in range(1000):
        out, _ = speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pd, cd), prompt, n, gamma=3,
                                    rng=rng, stop_drafting=stop)
        counts[np.ravel_multi_index(tuple(out[2:]), (V,) * n)] += 1
    assert pearson(counts, want)[1] > ALPHA
