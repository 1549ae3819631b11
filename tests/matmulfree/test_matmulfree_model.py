"""The MatMul-free LM (arXiv 2406.02528 §3.3): decoding steps on packed weights give the training forward's logits
to float rounding, generation on packed weights equals the float path, weight bytes, causality, bad inputs.
(Float gradient checks of the whole model, both variants, are registry entries.)"""

import numpy as np
import pytest

from scratch_transformers.matmulfree import model as M


def setup(rng, variant="paper", lower_bound=False, quantize=True, std=0.3):
    cfg = M.MatMulFreeConfig(vocab_size=13, d_model=10, n_layers=2, variant=variant, lower_bound=lower_bound,
                             quantize=quantize)
    p = M.init_params(cfg, rng, std=std)
    if lower_bound:
        p["lb_gamma"] = rng.standard_normal(p["lb_gamma"].shape)
    return cfg, p


@pytest.mark.parametrize("variant,lb", [("paper", False), ("official", True)])
@pytest.mark.parametrize("fmt", [None, "2bit", "base3", "dense"])
def test_step_logits_equal_training_forward(rng, variant, lb, fmt):
    cfg, p = setup(rng, variant, lb)
    toks = rng.integers(0, 13, size=(3, 9))
    logits, _ = M.forward(p, cfg, toks)
    packed = None if fmt is None else M.pack_model(p, cfg, fmt)
    state = None
    for t in range(9):
        lg, state = M.step_logits(p, cfg, toks[:, t], state, packed)
        np.testing.assert_allclose(lg, logits[:, t], rtol=1e-12, atol=1e-12 * np.max(np.abs(logits)))


def test_generate_packed_picks_the_float_paths_argmax(rng):
    # a ternary head makes exact logit ties common (two columns with equal integer sums), so greedy token
    # sequences may legitimately differ at a tie; what must hold: every packed choice is an argmax of the float path
    cfg, p = setup(rng)
    prompt = rng.integers(0, 13, size=(2, 4))
    out = M.generate(p, cfg, prompt, 12, greedy=True, packed=M.pack_model(p, cfg, "base3"))
    assert out.shape == (2, 16) and np.array_equal(out[:, :4], prompt)
    state = None
    for t in range(15):
        lg, state = M.step_logits(p, cfg, out[:, t], state)          # float path on the packed path's tokens
        if t >= 3:
            chosen = lg[np.arange(2), out[:, t + 1]]
            assert np.all(chosen >= lg.max(axis=-1) - 1e-12)
    s1 = M.generate(p, cfg, prompt, 6, rng=np.random.default_rng(3), packed=M.pack_model(p, cfg))
    s2 = M.generate(p, cfg, prompt, 6, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(s1, s2)                           # same draws from the same logits


def test_causal_and_float_model_differs(rng):
    cfg, p = setup(rng)
    toks = rng.integers(0, 13, size=(2, 8))
    la, _ = M.forward(p, cfg, toks)
    toks2 = toks.copy()
    toks2[:, 5] = (toks2[:, 5] + 1) % 13
    lb_, _ = M.forward(p, cfg, toks2)
    np.testing.assert_array_equal(la[:, :5], lb_[:, :5])
    assert not np.allclose(la[:, 5], lb_[:, 5])
    cfg_f = M.MatMulFreeConfig(vocab_size=13, d_model=10, n_layers=2, quantize=False)
    assert not np.allclose(M.forward(p, cfg_f, toks)[0], la)


def test_weight_bytes(rng):
    cfg, p = setup(rng)
    dense = M.weight_bytes(p, cfg)
    assert dense == 4 * sum(v.size for v in p.values())
    packed = M.pack_model(p, cfg, "2bit")
    ternary = sum(p[k].size for k in packed)
    assert M.weight_bytes(p, cfg, packed) == dense - 4 * ternary + sum(v.data.nbytes + 4 for v in packed.values())


def test_lower_bounds_increase_with_depth(rng):
    cfg = M.MatMulFreeConfig(vocab_size=5, d_model=4, n_layers=4, variant="official", lower_bound=True)
    p = M.init_params(cfg, rng)
    lb, _ = M.lower_bounds(p, cfg)
    np.testing.assert_allclose(lb, np.repeat([[0.0], [0.25], [0.5], [0.75]], 4, axis=1), atol=1e-15)   # k / K at init
    p["lb_gamma"] = rng.standard_normal((4, 4)) * 3
    lb, _ = M.lower_bounds(p, cfg)
    assert np.all(lb[0] == 0) and np.all(np.diff(lb, axis=0) >= 0) and np.all(lb < 1)


def test_training_steps_reduce_loss(rng):
    cfg, p = setup(rng, std=0.1)
    toks = np.tile(np.arange(13), (4, 2))[:, :20]                 # a repeating pattern
    loss0, _ = M.loss_and_grads(p, cfg, toks[:, :-1], toks[:, 1:])
    for _ in range(30):
        loss, g = M.loss_and_grads(p, cfg, toks[:, :-1], toks[:, 1:])
        for k in p:
            p[k] -= 0.05 * g[k] / (np.sqrt(np.mean(g[k] ** 2)) + 1e-8)   # sign-like steps (ternary needs large ones)
    assert loss < 0.5 * loss0, (loss0, loss)


def test_bad_inputs(rng):
    cfg, p = setup(rng)
    with pytest.raises(ValueError, match="^config.lower_bound: expected False unless"):
        M.param_shapes(M.MatMulFreeConfig(vocab_size=5, lower_bound=True))
    with pytest.raises(ValueError, match="^tokens: expected values < 13"):
        M.forward(p, cfg, np.array([[13]]))
    with pytest.raises(ValueError, match="^params: expected a key 'norm_f'"):
        M.forward({k: v for k, v in p.items() if k != "norm_f"}, cfg, np.array([[1]]))
    with pytest.raises(ValueError, match="^config.quantize: expected True"):
        M.pack_model(p, M.MatMulFreeConfig(vocab_size=13, d_model=10, n_layers=2, quantize=False))
    with pytest.raises(ValueError, match="^state: expected a list of 2"):
        M.step_logits(p, cfg, np.array([1]), [np.zeros((1, 10))])
    with pytest.raises(ValueError, match="^packed: expected the dict of pack_model"):
        M.step_logits(p, cfg, np.array([1]), None, packed={})
    with pytest.raises(ValueError, match="^rng: expected"):
        M.generate(p, cfg, np.array([[1]]), 2)
    bad = dict(p, emb=np.full_like(p["emb"], np.nan))
    with pytest.raises(ValueError, match="expected finite"):      # a NaN model is refused, never sampled as token 0
        M.generate(bad, cfg, np.array([[1]]), 2, greedy=True)
    with pytest.raises(ValueError, match="^cache: expected a MatMulFreeCache"):
        M.backward(np.zeros((1, 1, 13)), ())
