"""The Tandem M_S (arXiv 2402.08644, eq. 2): masks of both block conventions against the paper's
formula, an independent per-row reference, gradients, the plain-M_S limit, the perturbation test that
no M_S token sees M_L rows of its own block, cached decoding == full forward, losses."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.core.functional import softmax
from scratch_transformers.core.layers import cross_entropy_forward
from scratch_transformers.models import transformer as tf
from scratch_transformers.tandem import losses, model
from scratch_transformers.tandem.attention import block_contexts, tandem_attention_forward


def config(convention="figure", gamma=3, **kw):
    base = dict(vocab_size=9, d_model=16, n_layers=2, n_heads=2, d_large=12, large_layers=4, layer_map=(2, 4),
                gamma=gamma, convention=convention, max_len=20)
    base.update(kw)
    return model.TandemConfig(**base)


def setup(cfg, rng, B=2, S=13):
    params = model.init_params(cfg, rng)
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in params.items()}
    ml = {l: rng.standard_normal((B, S, cfg.d_large)) for l in cfg.ml_layers}
    return params, rng.integers(0, cfg.vocab_size, size=(B, S)), ml


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
def test_block_contexts_follow_the_paper(gamma):
    n = 17
    for r in range(n):
        i = r + 1                                                       # the paper's 1-indexed position
        printed = (i // gamma) * gamma                                  # eq. 2: y_hat_{<=k}, k = floor(i/gamma) gamma
        figure = ((i - 1) // gamma) * gamma                             # Fig. 1: M_L rows of earlier blocks only
        assert block_contexts(n, gamma, "printed")[r] == printed
        assert block_contexts(n, gamma, "figure")[r] == figure
    assert np.all(block_contexts(n, 1, "figure") == np.arange(n))      # gamma 1, figure: M_L rows < r + own row r
    assert np.all(block_contexts(n, 1, "printed") == np.arange(n) + 1)  # gamma 1, printed: only M_L rows <= r


@pytest.mark.parametrize("convention", ["figure", "printed"])
def test_attention_matches_a_per_row_reference(convention, rng):
    d, t, H = 8, 7, 2
    params = {f"a.{k}{n}": 0.4 * rng.standard_normal((d, d) if k == "w" else (d,)) for n in "qkvo" for k in "wb"}
    a_own, a_ml = rng.standard_normal((1, t, d)), rng.standard_normal((1, t, d))
    ctx = block_contexts(t, 3, convention)
    got, _ = tandem_attention_forward(a_own, a_ml, params, prefix="a", n_heads=H, contexts=ctx)
    P = lambda x, n: x @ params[f"a.w{n}"] + params[f"a.b{n}"]            # noqa: E731
    for r in range(t):
        rows = [a_ml[0, m] for m in range(ctx[r])] + [a_own[0, m] for m in range(ctx[r], r + 1)]
        K, V, q = P(np.array(rows), "k"), P(np.array(rows), "v"), P(a_own[0, r], "q")
        heads = []
        for h in range(H):
            sl = slice(h * d // H, (h + 1) * d // H)
            w = softmax(K[:, sl] @ q[sl] / np.sqrt(d // H))
            heads.append(w @ V[:, sl])
        np.testing.assert_allclose(got[0, r], P(np.concatenate(heads), "o"), rtol=1e-12, atol=1e-12)


def test_without_ml_rows_tandem_is_the_plain_small_model(rng):
    cfg = config()
    params, tokens, ml = setup(cfg, rng)
    tcfg = tf.TransformerConfig(vocab_size=9, d_model=16, n_layers=2, n_heads=2, max_len=20)
    small = {k: v for k, v in params.items() if not k.startswith("tandem.")}
    want, _ = tf.forward(small, tcfg, tokens)
    got, _ = model.forward(params, cfg, tokens, ml, contexts=np.zeros(tokens.shape[1], dtype=np.int64))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and init_params copies a trained standalone M_S
    p2 = model.init_params(cfg, rng, small_params=small)
    assert all(np.array_equal(p2[k], small[k]) for k in small)


@pytest.mark.parametrize("convention", ["figure", "printed"])
def test_ms_token_never_sees_ml_rows_of_its_own_block(convention, rng):
    cfg = config(convention, gamma=3)
    params, tokens, ml = setup(cfg, rng)
    S = tokens.shape[1]
    base, _ = model.forward(params, cfg, tokens, ml)
    ctx = block_contexts(S, 3, convention)
    for m in range(S):
        bumped = {l: x.copy() for l, x in ml.items()}
        for x in bumped.values():
            x[:, m] += 10.0
        out, _ = model.forward(params, cfg, tokens, bumped)
        blind = ctx <= m                                   # rows that must not see M_L row m
        np.testing.assert_array_equal(out[:, blind], base[:, blind])
        assert np.all(np.abs(out[:, ~blind] - base[:, ~blind]).max(axis=-1) > 1e-6)
    # causality in the own tokens: changing token m changes no row < m
    for m in range(S):
        t2 = tokens.copy()
        t2[:, m] = (t2[:, m] + 1) % cfg.vocab_size
        out, _ = model.forward(params, cfg, t2, ml)
        np.testing.assert_array_equal(out[:, :m], base[:, :m])


@pytest.mark.parametrize("convention", ["figure", "printed"])
def test_cached_decoding_equals_full_forward(convention, rng):
    cfg = config(convention, gamma=3)
    params, tokens, ml = setup(cfg, rng)
    S = tokens.shape[1]
    want, _ = model.forward(params, cfg, tokens, ml)
    ctx = block_contexts(S, 3, convention)
    for chunk in (1, 2):
        state = model.new_state(cfg, batch=2)
        r = 0
        while r < S:
            n = min(chunk, S - r)
            need = int(ctx[r:r + n].max())
            if need > state.ml_length:
                model.add_ml_rows(params, cfg, state, {l: x[:, state.ml_length:need] for l, x in ml.items()})
            got = model.decode(params, cfg, state, tokens[:, r:r + n], contexts=ctx[r:r + n])
            np.testing.assert_allclose(got, want[:, r:r + n], rtol=1e-10, atol=1e-10)
            r += n


def test_rollback_and_block_restart_like_speed(rng):
    # drafting from position s with M_L rows < s, rolled back and redone, equals the full forward with
    # contexts c = s for the block (the inference mask of SPEED)
    cfg = config()
    params, tokens, ml = setup(cfg, rng, B=1)
    s = 5
    ctx = np.array([0] * s + [s] * 4)
    want, _ = model.forward(params, cfg, tokens[:, :s + 4], {l: x[:, :s + 4] for l, x in ml.items()}, contexts=ctx)
    state = model.new_state(cfg)
    model.add_ml_rows(params, cfg, state, {l: x[:, :s + 2] for l, x in ml.items()})
    model.decode(params, cfg, state, tokens[:, s:s + 3], contexts=s, position=s)      # a draft to be rejected
    state.rollback(ml_length=s, own_length=s)
    got = np.concatenate([model.decode(params, cfg, state, tokens[:, s + i:s + i + 1], contexts=s, position=s + i)
                          for i in range(4)], axis=1)
    np.testing.assert_allclose(got, want[:, s:], rtol=1e-10, atol=1e-10)


def test_decode_validates_before_mutating(rng):
    cfg = config()
    params, tokens, ml = setup(cfg, rng, B=1)
    state = model.new_state(cfg)
    model.add_ml_rows(params, cfg, state, {l: x[:, :3] for l, x in ml.items()})
    snap = [a.copy() for a in state.own_k + state.ml_k]
    bad = [dict(tokens=tokens[:, :2], contexts=4, position=3),        # c > ml_length
           dict(tokens=tokens[:, :2], contexts=3, position=1),        # c > r + 1 for r = 1
           dict(tokens=tokens[:, :2], contexts=0, position=5),        # own rows 0..4 were never computed
           dict(tokens=tokens[:, :2] + 100, contexts=3, position=3),
           dict(tokens=np.zeros((1, 30), dtype=np.int64), contexts=3, position=3)]
    for kw in bad:
        with pytest.raises(ValueError):
            model.decode(params, cfg, state, kw["tokens"], contexts=kw["contexts"], position=kw["position"])
    with pytest.raises(ValueError):
        model.add_ml_rows(params, cfg, state, {2: ml[2][:, :2]})                        # layer 4 missing
    with pytest.raises(ValueError):
        state.rollback(ml_length=4)
    assert state.ml_length == 3 and state.own_length == 0
    assert all(np.array_equal(a, b) for a, b in zip(snap, state.own_k + state.ml_k))


def test_config_and_input_validation(rng):
    with pytest.raises(ValueError):
        config(layer_map=(2, 5))
    with pytest.raises(ValueError):
        config(convention="eq2")
    with pytest.raises(ValueError):
        config(layer_map=(1,))
    cfg = config()
    params, tokens, ml = setup(cfg, rng)
    with pytest.raises(ValueError):
        model.forward(params, cfg, tokens, {2: ml[2]})
    with pytest.raises(ValueError):
        model.forward(params, cfg, tokens, ml, contexts=np.full(tokens.shape[1], 5))
    with pytest.raises(ValueError):
        model.backward(np.zeros((2, 13, 9)), None)


def test_nan_in_ml_rows_propagates(rng):
    cfg = config()
    params, tokens, ml = setup(cfg, rng)
    ml[4][0, 2] = np.nan
    out, _ = model.forward(params, cfg, tokens, ml)
    assert np.all(np.isnan(out[0, block_contexts(13, 3) > 2]))
    assert np.all(np.isfinite(out[1]))


def test_float32_within_tolerance(rng):
    cfg = config()
    params, tokens, ml = setup(cfg, rng)
    want, _ = model.forward(params, cfg, tokens, ml)
    got, _ = model.forward({k: v.astype(np.float32) for k, v in params.items()}, cfg, tokens,
                           {l: x.astype(np.float32) for l, x in ml.items()})
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_tandem_losses_and_their_gradients(lam, rng):
    cfg = config(d_model=8, d_large=6, max_len=8)
    params, tokens, ml = setup(cfg, rng, S=6)
    targets = rng.integers(0, 9, size=tokens.shape)
    targets[0, 1] = -100
    teacher = rng.standard_normal((2, 6, 9))
    loss, grads = losses.loss_and_grads(params, cfg, tokens, targets, ml, teacher, distil_weight=lam)
    logits, _ = model.forward(params, cfg, tokens, ml)
    ce = cross_entropy_forward(logits, targets)[0]
    dist = losses.distillation_forward(logits, teacher, rows=targets != -100)[0]
    assert abs(loss - ((1 - lam) * ce + lam * dist)) < 1e-12
    # soft CE against one-hot teacher logits -> hard CE
    onehot = 50.0 * np.eye(9)[np.where(targets < 0, 0, targets)]
    assert abs(losses.distillation_forward(logits, onehot, rows=targets != -100)[0] - ce) < 1e-6
    names = ["tandem.0.w", "tandem.1.b", "blocks.1.attn.wk", "blocks.0.ln1.weight", "pos_emb"]
    res = gradcheck(lambda **p: (losses.loss_and_grads({**params, **p}, cfg, tokens, targets, ml, teacher,
                                                       distil_weight=lam)[0], None),
                    lambda dy, _: {n: dy * grads[n] for n in names},
                    {n: params[n] for n in names}, rng=rng, max_entries=12)
    assert res.passed, str(res)
